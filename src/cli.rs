//! Command-line types (clap). Parsing only: validation and derived values
//! live in [`crate::config`]. Every flag can also be set through an
//! environment variable `LATCHKEY_<FLAG>` (dashes become underscores).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "A self-hosted auth token server")]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every command.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Path of the redb database file. Its folder is created if missing.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_DATA",
        default_value = "data/latchkey.redb"
    )]
    pub data: PathBuf,

    /// argon2id memory cost in KiB for new password hashes (OWASP: 19456).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_ARGON2_MEMORY",
        default_value_t = 19456
    )]
    pub argon2_memory: u32,

    /// argon2id iterations for new password hashes (OWASP: 2).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_ARGON2_ITERATIONS",
        default_value_t = 2
    )]
    pub argon2_iterations: u32,

    /// argon2id parallelism for new password hashes (OWASP: 1).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_ARGON2_PARALLELISM",
        default_value_t = 1
    )]
    pub argon2_parallelism: u32,

    /// redb page cache in MiB. Pages outside it are read from the OS page cache.
    #[arg(long, global = true, env = "LATCHKEY_CACHE_MB", default_value_t = 32)]
    pub cache_mb: usize,

    /// Free space (MiB) to keep on the data file system: below it, writes
    /// answer 503 until space is freed, and the database stays intact. 0 turns it off.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_MIN_FREE_MB",
        default_value_t = 64
    )]
    pub min_free_mb: u64,

    /// The admin Unix socket that `serve` opens and the `user`, `session`
    /// and `backup` commands use (default: beside the database, `<name>.sock`).
    #[arg(long, global = true, env = "LATCHKEY_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,

    /// A PostgreSQL database (`postgres://user:password@host/db`) instead of
    /// the redb file, for several instances on one database.
    #[arg(long, global = true, env = "LATCHKEY_DATABASE", hide_env_values = true)]
    pub database: Option<String>,

    /// PEM certificates to trust for TLS to PostgreSQL (a private CA, or
    /// your provider's bundle), besides the system's. Turns TLS on, as
    /// `sslmode=require` in the URL does; the server's certificate and
    /// host name are always verified.
    #[arg(long, global = true, env = "LATCHKEY_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    /// Log lines as text (the default) or as one JSON object each.
    #[arg(long, global = true, env = "LATCHKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `latchkey=debug`.
    #[arg(long, global = true, env = "LATCHKEY_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Manage users: through the admin socket while the server runs, in the
    /// database file when it does not.
    #[command(subcommand)]
    User(UserCommand),
    /// List and revoke sessions (like `user`, with or without a server).
    #[command(subcommand)]
    Session(SessionCommand),
    /// List and rotate the signing keys of access tokens (like `user`, with
    /// or without a server).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write a consistent copy of the database to a new file (through the
    /// admin socket while the server runs).
    Backup {
        /// The copy to write; it must not exist yet.
        #[arg(long, env = "LATCHKEY_BACKUP_OUT")]
        out: PathBuf,
    },
    /// Load a running server and report throughput and latency, or fill a
    /// database with test data (`--populate`).
    Bench(BenchArgs),
    /// Move everything between a redb file and PostgreSQL (servers stopped).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Bring the PostgreSQL schema (`--database`) up to date, and nothing
    /// else (`serve` does it too at start).
    Migrate,
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// POST /auth/login, cycling over the bench users.
    Login,
    /// Chained POST /auth/refresh: each connection uses the token its last answer gave it.
    Refresh,
    /// GET /auth/profile with an access token.
    Profile,
    /// POST /oauth/introspect of an access token (needs --verifier-key-file).
    Introspect,
    /// Per connection: one refresh, then four profile reads with the new
    /// access token; every 100th request is a fresh login.
    Mixed,
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Base URL of the server to load (http only). Repeatable (or
    /// comma-separated): connections are spread over the servers in turn.
    #[arg(
        long,
        env = "LATCHKEY_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub url: Vec<String>,

    #[arg(long, env = "LATCHKEY_SCENARIO", value_enum, default_value_t = Scenario::Refresh)]
    pub scenario: Scenario,

    /// Concurrent connections, each with one request in flight.
    #[arg(long, env = "LATCHKEY_CONNECTIONS", default_value_t = 64)]
    pub connections: usize,

    /// How long to send requests (setup logins are not counted).
    #[arg(long, env = "LATCHKEY_DURATION", default_value = "10s")]
    pub duration: String,

    /// How many bench users to use (or, with --populate, to create).
    #[arg(long, env = "LATCHKEY_USERS", default_value_t = 100)]
    pub users: u64,

    /// Email of bench user N: `{}` is replaced by N (1-based).
    #[arg(
        long,
        env = "LATCHKEY_EMAIL_FORMAT",
        default_value = "user{}@bench.invalid"
    )]
    pub email_format: String,

    /// Password of the bench users.
    #[arg(
        long,
        env = "LATCHKEY_BENCH_PASSWORD",
        default_value = "bench-password",
        hide_env_values = true
    )]
    pub password: String,

    /// Role id of populated users (and the login type is left out, so any role logs in).
    #[arg(long, env = "LATCHKEY_ROLE", default_value_t = 1)]
    pub role: i64,

    /// Print one JSON object instead of text.
    #[arg(long, env = "LATCHKEY_JSON")]
    pub json: bool,

    /// With --scenario introspect: a verifier key of the server under load.
    #[arg(long, env = "LATCHKEY_VERIFIER_KEY_FILE")]
    pub verifier_key_file: Option<PathBuf>,

    /// Refresh tokens (one per line) to start the chains from, instead of logging in.
    /// With --populate: where to write tokens of sampled sessions.
    #[arg(long, env = "LATCHKEY_TOKENS")]
    pub tokens: Option<PathBuf>,

    /// Fill the database at --data (server stopped) with --users users and
    /// --sessions sessions, instead of loading a server.
    #[arg(long, env = "LATCHKEY_POPULATE")]
    pub populate: bool,

    /// With --populate: how many sessions to create, spread over the users.
    #[arg(long, env = "LATCHKEY_SESSIONS", default_value_t = 0)]
    pub sessions: u64,

    /// With --populate: write refresh tokens of this many sessions, spread
    /// evenly over the file, to --tokens.
    #[arg(long, env = "LATCHKEY_SAMPLE_TOKENS", default_value_t = 0)]
    pub sample_tokens: u64,

    /// With --populate --sample-tokens: the server's secret, as for `serve`.
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// Where the HS256 signing secret comes from. Without either flag, a secret
/// generated once beside the database is used.
#[derive(Debug, Args, Clone)]
pub struct SecretArgs {
    /// HS256 signing secret, used as its raw UTF-8 bytes (at least 32 bytes).
    #[arg(
        long,
        env = "LATCHKEY_SECRET",
        hide_env_values = true,
        conflicts_with = "secret_file"
    )]
    pub secret: Option<String>,

    /// File holding the HS256 signing secret (raw bytes, one trailing newline removed).
    #[arg(long, env = "LATCHKEY_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// Accept a secret file (or a --seed-users-file) that other users may read (refused by default).
    #[arg(long, env = "LATCHKEY_INSECURE_SECRET_FILE")]
    pub insecure_secret_file: bool,
}

/// The JWS algorithm of access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(clippy::upper_case_acronyms)]
pub enum SigningAlgArg {
    /// HMAC-SHA256 with the secret: verifiers need the secret.
    #[value(name = "HS256")]
    HS256,
    /// Ed25519: small and fast; recommended for new deployments.
    #[value(name = "EdDSA")]
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    #[value(name = "ES256")]
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256 (2048-bit keys): for verifiers that know nothing else.
    #[value(name = "RS256")]
    RS256,
}

/// How tokens are signed and what they claim.
#[derive(Debug, Args, Clone)]
pub struct SigningArgs {
    /// Algorithm of access tokens. Refresh tokens are always HS256 with the
    /// secret (only latchkey verifies them). EdDSA, ES256 and RS256 keys are
    /// published at /.well-known/jwks.json.
    #[arg(long, env = "LATCHKEY_SIGNING_ALG", value_enum, ignore_case = true, default_value_t = SigningAlgArg::HS256)]
    pub signing_alg: SigningAlgArg,

    /// PKCS#8 PEM private key for EdDSA, ES256 or RS256, instead of a key
    /// latchkey generates and keeps in the database.
    #[arg(long, env = "LATCHKEY_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// An earlier HS256 secret whose tokens still verify (repeatable), for
    /// changing --secret without logging anyone out.
    #[arg(long, env = "LATCHKEY_PREVIOUS_SECRET", hide_env_values = true)]
    pub previous_secret: Vec<String>,

    /// File holding an earlier HS256 secret (repeatable); like --previous-secret.
    #[arg(long, env = "LATCHKEY_PREVIOUS_SECRET_FILE")]
    pub previous_secret_file: Vec<PathBuf>,

    /// Issuer URL: added to access tokens as `iss`, and required of them.
    #[arg(long, env = "LATCHKEY_ISSUER")]
    pub issuer: Option<String>,

    /// Audience added to access tokens as `aud` (repeatable); a token must
    /// name one of them.
    #[arg(long, env = "LATCHKEY_AUDIENCE", value_delimiter = ',')]
    pub audience: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, env = "LATCHKEY_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "LATCHKEY_BIND", default_value = "127.0.0.1")]
    pub bind: String,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub signing: SigningArgs,

    /// Lifetime of an access token (`30s`, `15m`, `1h`, `7d`).
    #[arg(long, env = "LATCHKEY_ACCESS_TTL", default_value = "1h")]
    pub access_ttl: String,

    /// Lifetime of a refresh token, counted from its issue or rotation.
    #[arg(long, env = "LATCHKEY_REFRESH_TTL", default_value = "7d")]
    pub refresh_ttl: String,

    /// How long after a rotation the rotated token may be presented again and
    /// receive the same new refresh token instead of revoking the session; 0 turns it off.
    #[arg(long, env = "LATCHKEY_REUSE_GRACE", default_value = "10s")]
    pub reuse_grace: String,

    /// Absolute lifetime of a login session; rotation never extends past it.
    #[arg(long, env = "LATCHKEY_SESSION_TTL", default_value = "30d")]
    pub session_ttl: String,

    /// Which role ids each login `type` admits, as `TYPE=ROLE[+ROLE…]`;
    /// repeatable or comma-separated. Replaces the default `web=2,mobile=1`.
    #[arg(long, env = "LATCHKEY_TYPE_ROLE", value_delimiter = ',')]
    pub type_role: Vec<String>,

    /// Create a user at start if its email is not taken yet, as
    /// `EMAIL:ROLE:NAME:PASSWORD` (the password is everything after the third colon). Repeatable.
    /// For local development only: the command line is readable by every local user.
    #[arg(long, env = "LATCHKEY_SEED_USER", hide_env_values = true)]
    pub seed_user: Vec<String>,

    /// File of users to create at start, one `EMAIL:ROLE:NAME:PASSWORD` a line
    /// (blank lines and lines starting with `#` are skipped). Refused when
    /// other users may read it, like the secret file.
    #[arg(long, env = "LATCHKEY_SEED_USERS_FILE")]
    pub seed_users_file: Option<PathBuf>,

    /// How many password hashes may run at once (default: the number of cores).
    #[arg(long, env = "LATCHKEY_HASH_WORKERS")]
    pub hash_workers: Option<usize>,

    /// How many logins may wait for a hashing worker; past that, login answers 503 at once.
    #[arg(long, env = "LATCHKEY_HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: usize,

    /// Turn login throttling off (it is on by default).
    #[arg(long, env = "LATCHKEY_NO_LOGIN_THROTTLE")]
    pub no_login_throttle: bool,

    /// Failed logins per account (email) before back-off starts.
    #[arg(long, env = "LATCHKEY_THROTTLE_ACCOUNT_FAILURES", default_value_t = 5)]
    pub throttle_account_failures: u32,

    /// Failed logins per client address before back-off starts.
    #[arg(long, env = "LATCHKEY_THROTTLE_ADDRESS_FAILURES", default_value_t = 20)]
    pub throttle_address_failures: u32,

    /// First back-off delay; it doubles with every further failure.
    #[arg(long, env = "LATCHKEY_THROTTLE_BASE_DELAY", default_value = "1s")]
    pub throttle_base_delay: String,

    /// Longest back-off delay.
    #[arg(long, env = "LATCHKEY_THROTTLE_MAX_DELAY", default_value = "15m")]
    pub throttle_max_delay: String,

    /// Most accounts (and, separately, addresses) the throttle remembers.
    #[arg(long, env = "LATCHKEY_THROTTLE_CAPACITY", default_value_t = 100_000)]
    pub throttle_capacity: usize,

    /// IPv6 clients are throttled by network: the prefix length (IPv4 clients by address).
    #[arg(long, env = "LATCHKEY_THROTTLE_IPV6_PREFIX", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub throttle_ipv6_prefix: u8,

    /// Connections this instance keeps to PostgreSQL (with --database). Keep
    /// the sum over all instances below the server's max_connections.
    #[arg(long, env = "LATCHKEY_DATABASE_POOL", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool: u32,

    /// Most live sessions per user; a login past it revokes that user's oldest session.
    #[arg(long, env = "LATCHKEY_MAX_SESSIONS_PER_USER", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sessions_per_user: u64,

    /// Proxy addresses (CIDR) allowed to set the client address with
    /// X-Forwarded-For; repeatable or comma-separated. Other peers' headers are ignored.
    #[arg(long, env = "LATCHKEY_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<String>,

    /// Most open client connections; past it the oldest idle connection is
    /// closed to admit a new one (a new one is refused while all are busy).
    #[arg(long, env = "LATCHKEY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How long a client may take to send request headers; also how long an
    /// idle keep-alive connection is kept open.
    #[arg(long, env = "LATCHKEY_HEADER_TIMEOUT", default_value = "10s")]
    pub header_timeout: String,

    /// How long a client may take to send a request body.
    #[arg(long, env = "LATCHKEY_BODY_TIMEOUT", default_value = "10s")]
    pub body_timeout: String,

    /// Whether anyone may sign up with POST /auth/register.
    #[arg(long, env = "LATCHKEY_REGISTRATION", value_enum, default_value_t = RegistrationMode::Closed)]
    pub registration: RegistrationMode,

    /// The role of users who sign up.
    #[arg(long, env = "LATCHKEY_REGISTRATION_ROLE", default_value_t = 1)]
    pub registration_role: i64,

    /// Most sign-ups per client address per hour.
    #[arg(long, env = "LATCHKEY_REGISTRATION_LIMIT", default_value_t = 10)]
    pub registration_limit: u32,

    /// File holding the admin API key (at least 32 bytes; refused when others
    /// may read it). Callers of /admin/… send it as `Authorization: Bearer`.
    #[arg(long, env = "LATCHKEY_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,

    /// A key that lets a service call /oauth/introspect and /oauth/revocations
    /// (repeatable: one per service, or an old and a new one while rotating;
    /// at least 32 bytes each; refused when others may read it).
    #[arg(long, env = "LATCHKEY_VERIFIER_KEY_FILE", value_delimiter = ',')]
    pub verifier_key_file: Vec<PathBuf>,

    /// Users with this role id may call /admin/… with their access token;
    /// repeatable or comma-separated.
    #[arg(long, env = "LATCHKEY_ADMIN_ROLE", value_delimiter = ',')]
    pub admin_role: Vec<i64>,

    /// Serve Prometheus metrics at GET /metrics on this second address
    /// (ADDR:PORT; never on the public port). Without it, no metrics listener.
    #[arg(long, env = "LATCHKEY_METRICS_BIND")]
    pub metrics_bind: Option<String>,

    /// Browser apps on this origin (`https://app.example.com`) may call the
    /// API: their requests get CORS headers; repeatable or comma-separated.
    #[arg(long, env = "LATCHKEY_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,

    /// Do not open the admin Unix socket.
    #[arg(long, env = "LATCHKEY_NO_ADMIN_SOCKET")]
    pub no_admin_socket: bool,

    /// After SIGTERM/SIGINT, how long to go on serving while /readyz
    /// answers 503 `draining` (so a load balancer stops sending traffic
    /// first), before the server stops accepting connections.
    #[arg(long, env = "LATCHKEY_DRAIN_DELAY", default_value = "1s")]
    pub drain_delay: String,

    /// How often expired sessions are removed from the database.
    #[arg(long, env = "LATCHKEY_SWEEP_INTERVAL", default_value = "1m")]
    pub sweep_interval: String,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "LATCHKEY_SHUTDOWN_TIMEOUT", default_value = "10s")]
    pub shutdown_timeout: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistrationMode {
    Closed,
    Open,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read from stdin (one line) or prompted for.
    Add {
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: String,
        #[arg(long, env = "LATCHKEY_NAME")]
        name: String,
        /// Integer role id (by default 1 = mobile, 2 = web).
        #[arg(long, env = "LATCHKEY_ROLE")]
        role: i64,
    },
    /// List users (no password hashes are printed).
    List {
        /// Print one JSON object per line instead of a table.
        #[arg(long, env = "LATCHKEY_JSON")]
        json: bool,
    },
    /// Remove a user and all of their sessions.
    Remove {
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: String,
    },
    /// Set a user's password (read from stdin or prompted for); revokes all
    /// of their sessions.
    Passwd {
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: String,
    },
    /// Disable a user: no logins, and all of their sessions are revoked.
    Disable {
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: String,
    },
    /// Enable a disabled user again.
    Enable {
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: String,
    },
    /// Import users from JSON Lines (`-` for stdin): `{"email","name","role_id",
    /// "password"}` or `{…,"password_hash"}` (argon2 PHC or bcrypt), optional
    /// `"disabled": true`. All or nothing, unless --skip-invalid.
    Import {
        /// The JSON Lines file, or `-` for stdin.
        file: PathBuf,
        /// Import the valid lines and report the others, instead of importing nothing.
        #[arg(long, env = "LATCHKEY_SKIP_INVALID")]
        skip_invalid: bool,
    },
    /// Write every user as JSON Lines (with `password_hash`) to stdout.
    Export,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy users, sessions, signing keys, the revocation log and the
    /// generated signing secret from one store to another, ids and all, so
    /// existing tokens keep working. Each
    /// side is a redb file path or a postgres:// URL; the target must be
    /// empty unless --replace is given. Stop the servers of both first.
    Copy {
        /// Where from: a redb file, or postgres://…
        #[arg(long, env = "LATCHKEY_COPY_FROM", hide_env_values = true)]
        from: String,
        /// Where to: a redb file (created if missing), or postgres://…
        #[arg(long, env = "LATCHKEY_COPY_TO", hide_env_values = true)]
        to: String,
        /// Delete everything the target holds first (users, sessions, keys,
        /// the revocation log), instead of refusing a target that is not empty.
        #[arg(long, visible_aliases = ["force", "overwrite"])]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the signing keys: kid, algorithm, state (next, current,
    /// previous), when each was created and when it stops being published.
    List {
        /// Print one JSON object per line instead of a table.
        #[arg(long, env = "LATCHKEY_JSON")]
        json: bool,
    },
    /// Create the next signing key: published in the JWKS at once, signing
    /// after the JWKS cache lifetime (300 s), so verifiers have it first.
    /// The old key keeps verifying until its tokens have expired.
    Rotate {
        /// Sign with the new key at once (or with the key published ahead
        /// by an earlier `keys rotate`).
        #[arg(long)]
        now: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List a user's live sessions.
    List {
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: String,
        /// Print one JSON object per line instead of a table.
        #[arg(long, env = "LATCHKEY_JSON")]
        json: bool,
    },
    /// Revoke one session (`--id`, as `session list` prints it) or all of a
    /// user's sessions (`--email`).
    Revoke {
        #[arg(
            long,
            env = "LATCHKEY_SESSION_ID",
            conflicts_with = "email",
            required_unless_present = "email"
        )]
        id: Option<String>,
        #[arg(long, env = "LATCHKEY_EMAIL")]
        email: Option<String>,
    },
}
