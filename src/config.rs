//! Flags and environment → validated configuration.
//!
//! Raw clap values ([`crate::cli`]) become typed values here: durations,
//! the login-type → role map, seed users, argon2 parameters, lifetimes, and
//! the signing secret (through [`crate::secrets`]). Everything is checked at
//! start-up so a bad value stops the process with a clear message instead
//! of failing a request. The rules themselves live beside their users:
//! emails and passwords in [`crate::credentials`], trusted proxies in
//! [`crate::http::client_address`], secret files in [`crate::secrets`], the
//! data folder in [`crate::store::folder`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{CommonArgs, ServeArgs};
use crate::credentials::{check_new_password, normalize_email};
use crate::http::client_address::Cidr;
use crate::keys::{KeyFile, SigningAlg, SigningConfig};
use crate::secrets::{
    refuse_if_readable_by_others, resolve_previous_secrets, resolve_secret, Secret,
};
use crate::throttle::ThrottlePolicy;

/// A configuration problem, reported at start-up.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(text: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(text.into()))
}

/// Parses `30s`, `15m`, `1h`, `7d` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = digits.parse().map_err(|_| {
        ConfigError(format!(
            "invalid duration {text:?}: expected e.g. 30s, 15m, 1h, 7d"
        ))
    })?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return err(format!(
                "invalid duration {text:?}: the unit must be s, m, h or d"
            ))
        }
    };
    value
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| ConfigError(format!("duration {text:?} is too large")))
}

/// Argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Costs {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Costs {
    pub fn from_args(args: &CommonArgs) -> Result<Self, ConfigError> {
        let costs = Argon2Costs {
            memory_kib: args.argon2_memory,
            iterations: args.argon2_iterations,
            parallelism: args.argon2_parallelism,
        };
        costs.to_params()?;
        Ok(costs)
    }

    pub fn to_params(self) -> Result<argon2::Params, ConfigError> {
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| ConfigError(format!("invalid argon2 parameters: {e}")))
    }
}

/// A user to create at start if the email is free.
#[derive(Clone)]
pub struct SeedUser {
    pub email: String,
    pub role_id: i64,
    pub name: String,
    pub password: String,
}

impl fmt::Debug for SeedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedUser")
            .field("email", &self.email)
            .field("role_id", &self.role_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Parses `EMAIL:ROLE:NAME:PASSWORD`; the password may itself contain colons.
pub fn parse_seed_user(text: &str) -> Result<SeedUser, ConfigError> {
    let mut parts = text.splitn(4, ':');
    let (Some(email), Some(role), Some(name), Some(password)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return err("a seed user must be EMAIL:ROLE:NAME:PASSWORD");
    };
    let email = normalize_email(email)
        .ok_or_else(|| ConfigError("seed user: the email is not a valid address".into()))?;
    let role_id = role
        .trim()
        .parse()
        .map_err(|_| ConfigError(format!("seed user {email}: ROLE must be an integer")))?;
    check_new_password(password).map_err(|why| ConfigError(format!("seed user {email}: {why}")))?;
    if name.trim().is_empty() {
        return err(format!("seed user {email}: NAME must not be empty"));
    }
    Ok(SeedUser {
        email,
        role_id,
        name: name.trim().to_string(),
        password: password.to_string(),
    })
}

/// Login `type` → role ids it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRoles(BTreeMap<String, Vec<i64>>);

impl Default for TypeRoles {
    fn default() -> Self {
        TypeRoles(BTreeMap::from([
            ("web".to_string(), vec![2]),
            ("mobile".to_string(), vec![1]),
        ]))
    }
}

impl TypeRoles {
    /// Parses `TYPE=ROLE[+ROLE…]` entries; none given means the default map.
    pub fn parse(entries: &[String]) -> Result<Self, ConfigError> {
        if entries.iter().all(|e| e.trim().is_empty()) {
            return Ok(TypeRoles::default());
        }
        let mut map: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
            let Some((kind, roles)) = entry.split_once('=') else {
                return err(format!("--type-role {entry:?}: expected TYPE=ROLE[+ROLE…]"));
            };
            let kind = kind.trim();
            if kind.is_empty() {
                return err(format!("--type-role {entry:?}: TYPE is empty"));
            }
            let slot = map.entry(kind.to_string()).or_default();
            for role in roles.split('+') {
                let role = role.trim().parse().map_err(|_| {
                    ConfigError(format!("--type-role {entry:?}: role ids must be integers"))
                })?;
                slot.push(role);
            }
        }
        Ok(TypeRoles(map))
    }

    /// The roles a login `type` admits; `None` for an unknown type.
    pub fn roles_for(&self, kind: &str) -> Option<&[i64]> {
        self.0.get(kind).map(Vec::as_slice)
    }

    pub fn known_types(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The admin socket: `--admin-socket`, else beside the database
/// (`data/latchkey.sock` for `data/latchkey.redb`).
pub fn admin_socket(common: &CommonArgs) -> PathBuf {
    common
        .admin_socket
        .clone()
        .unwrap_or_else(|| common.data.with_extension("sock"))
}

/// Where the database is, from the flags every command shares.
pub fn store_location(common: &CommonArgs) -> crate::store::redb::Location {
    crate::store::redb::Location {
        path: common.data.clone(),
        cache_bytes: common.cache_mb.saturating_mul(1024 * 1024),
        min_free_bytes: common.min_free_mb.saturating_mul(1024 * 1024),
    }
}

/// Token and session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub reuse_grace: Duration,
    pub session_ttl: Duration,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: String,
    pub port: u16,
    pub data: PathBuf,
    /// redb page cache, in bytes.
    pub cache_bytes: usize,
    /// Free space to keep on the data file system, in bytes.
    pub min_free_bytes: u64,
    /// The PostgreSQL store's URL; `None`: the redb file at `data`.
    pub database: Option<String>,
    /// Connections kept to PostgreSQL.
    pub database_pool: usize,
    /// `signing.secret` is to be replaced by the secret kept in the
    /// database (with `--database` and no `--secret` or `--secret-file`).
    pub secret_from_database: bool,
    /// Certificates trusted for TLS to PostgreSQL, besides the system's.
    pub database_ca_file: Option<PathBuf>,
    /// The secret, the signing algorithm and keys, issuer and audiences.
    pub signing: SigningConfig,
    pub lifetimes: Lifetimes,
    pub type_roles: TypeRoles,
    pub argon2: Argon2Costs,
    pub hash_workers: usize,
    pub hash_queue: usize,
    pub seed_users: Vec<SeedUser>,
    pub sweep_interval: Duration,
    pub shutdown_timeout: Duration,
    /// How long to serve on, answering /readyz 503, after a stop signal.
    pub drain_delay: Duration,
    /// `None` turns login throttling off.
    pub throttle: Option<ThrottlePolicy>,
    pub trusted_proxies: Vec<Cidr>,
    pub max_connections: usize,
    /// Most live sessions per user.
    pub max_sessions_per_user: usize,
    /// `None` when sign-up is closed.
    pub registration: Option<crate::auth::Registration>,
    /// The admin API key; `None` without `--admin-key-file`.
    pub admin_key: Option<Secret>,
    /// Keys of the services that may call introspection and the revocation feed.
    pub verifier_keys: Vec<Secret>,
    /// Roles whose access tokens may call the admin API.
    pub admin_roles: Vec<i64>,
    /// The admin Unix socket; `None` with `--no-admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// Whether `--admin-socket` was given (then failing to open it stops the start).
    pub admin_socket_explicit: bool,
    /// Origins whose browser apps may call the API (CORS).
    pub cors_origins: Vec<String>,
    /// Where to serve /metrics; `None`: no metrics, nothing recorded.
    pub metrics_bind: Option<String>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl ServeConfig {
    pub fn from_args(common: &CommonArgs, args: &ServeArgs) -> Result<Self, ConfigError> {
        let lifetimes = Lifetimes::from_args(args)?;
        let sweep_interval = parse_duration(&args.sweep_interval)?;
        if sweep_interval.is_zero() {
            return err("--sweep-interval must be longer than 0");
        }
        let hash_workers = match args.hash_workers {
            Some(0) => return err("--hash-workers must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        };
        let signing = signing_config(common, args)?;
        let throttle = throttle_policy(args)?;
        let header_timeout = parse_duration(&args.header_timeout)?;
        let body_timeout = parse_duration(&args.body_timeout)?;
        if header_timeout.is_zero() || body_timeout.is_zero() {
            return err("--header-timeout and --body-timeout must be longer than 0");
        }
        if args.max_connections == 0 {
            return err("--max-connections must be at least 1");
        }
        Ok(ServeConfig {
            bind: args.bind.clone(),
            port: args.port,
            data: common.data.clone(),
            cache_bytes: store_location(common).cache_bytes,
            min_free_bytes: store_location(common).min_free_bytes,
            database: database_url(common)?,
            database_pool: args.database_pool as usize,
            secret_from_database: secret_from_database(common, args)?,
            database_ca_file: common.database_ca_file.clone(),
            signing,
            lifetimes,
            type_roles: TypeRoles::parse(&args.type_role)?,
            argon2: Argon2Costs::from_args(common)?,
            hash_workers,
            hash_queue: args.hash_queue,
            seed_users: seed_users(args)?,
            sweep_interval,
            shutdown_timeout: parse_duration(&args.shutdown_timeout)?,
            drain_delay: {
                let delay = parse_duration(&args.drain_delay)?;
                if delay > Duration::from_secs(3600) {
                    return err("--drain-delay must be at most 1h");
                }
                delay
            },
            throttle,
            trusted_proxies: args
                .trusted_proxy
                .iter()
                .filter(|t| !t.trim().is_empty())
                .map(|t| Cidr::parse(t))
                .collect::<Result<_, _>>()?,
            max_connections: args.max_connections,
            max_sessions_per_user: usize::try_from(args.max_sessions_per_user)
                .unwrap_or(usize::MAX),
            registration: match args.registration {
                crate::cli::RegistrationMode::Open if args.registration_limit == 0 => {
                    return err(
                        "--registration-limit must be at least 1 (or keep --registration closed)",
                    )
                }
                crate::cli::RegistrationMode::Closed => None,
                crate::cli::RegistrationMode::Open => Some(crate::auth::Registration {
                    role_id: args.registration_role,
                    per_address_per_hour: args.registration_limit,
                }),
            },
            admin_key: args
                .admin_key_file
                .as_deref()
                .map(|path| {
                    crate::secrets::read_key_file(
                        path,
                        "--admin-key-file",
                        args.secret.insecure_secret_file,
                    )
                })
                .transpose()?,
            verifier_keys: args
                .verifier_key_file
                .iter()
                .map(|path| {
                    crate::secrets::read_key_file(
                        path,
                        "--verifier-key-file",
                        args.secret.insecure_secret_file,
                    )
                })
                .collect::<Result<_, _>>()?,
            admin_roles: args.admin_role.clone(),
            admin_socket: if args.no_admin_socket {
                None
            } else {
                Some(admin_socket(common))
            },
            admin_socket_explicit: common.admin_socket.is_some(),
            cors_origins: cors_origins(&args.cors_origin)?,
            metrics_bind: args.metrics_bind.clone(),
            header_timeout,
            body_timeout,
        })
    }
}

impl Lifetimes {
    fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let lifetimes = Lifetimes {
            access_ttl: parse_duration(&args.access_ttl)?,
            refresh_ttl: parse_duration(&args.refresh_ttl)?,
            reuse_grace: parse_duration(&args.reuse_grace)?,
            session_ttl: parse_duration(&args.session_ttl)?,
        };
        for (flag, value) in [
            ("--access-ttl", lifetimes.access_ttl),
            ("--refresh-ttl", lifetimes.refresh_ttl),
            ("--session-ttl", lifetimes.session_ttl),
        ] {
            if value.is_zero() {
                return err(format!("{flag} must be longer than 0"));
            }
        }
        Ok(lifetimes)
    }
}

/// The login throttle's policy; `None` with `--no-login-throttle`.
fn throttle_policy(args: &ServeArgs) -> Result<Option<ThrottlePolicy>, ConfigError> {
    if args.no_login_throttle {
        return Ok(None);
    }
    Ok(Some(ThrottlePolicy {
        account_free_failures: args.throttle_account_failures,
        address_free_failures: args.throttle_address_failures,
        base_delay: parse_duration(&args.throttle_base_delay)?,
        max_delay: parse_duration(&args.throttle_max_delay)?,
        capacity: args.throttle_capacity.max(2),
        ipv6_prefix: args.throttle_ipv6_prefix,
        ..ThrottlePolicy::default()
    }))
}

/// `--cors-origin` values: `scheme://host[:port]`, no path, no `*`.
fn cors_origins(values: &[String]) -> Result<Vec<String>, ConfigError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|origin| {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            let origin = origin
                .strip_suffix(":443")
                .filter(|_| origin.starts_with("https://"))
                .or_else(|| origin.strip_suffix(":80").filter(|_| origin.starts_with("http://")))
                .unwrap_or(&origin)
                .to_string();
            let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'))
                && !origin.contains('*');
            if valid {
                Ok(origin.to_string())
            } else {
                err(format!(
                    "--cors-origin {origin:?}: expected an origin such as https://app.example.com (no path, no *)"
                ))
            }
        })
        .collect()
}

/// Seed users from `--seed-user` and from `--seed-users-file`.
fn seed_users(args: &ServeArgs) -> Result<Vec<SeedUser>, ConfigError> {
    let mut users = args
        .seed_user
        .iter()
        .map(|s| parse_seed_user(s).map_err(|e| ConfigError(format!("--seed-user: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.seed_users_file {
        refuse_if_readable_by_others(path, "--seed-users-file", args.secret.insecure_secret_file)?;
        let text = fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read --seed-users-file {}: {e}",
                path.display()
            ))
        })?;
        for (number, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let user = parse_seed_user(line).map_err(|e| {
                ConfigError(format!(
                    "--seed-users-file {} line {}: {e}",
                    path.display(),
                    number + 1
                ))
            })?;
            users.push(user);
        }
    }
    Ok(users)
}

/// Whether `location` names a PostgreSQL database (else a redb file).
pub fn is_database_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `--database`, checked: a PostgreSQL URL, or none.
pub fn database_url(common: &CommonArgs) -> Result<Option<String>, ConfigError> {
    match common.database.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(url) if is_database_url(url) => Ok(Some(url.to_string())),
        Some(_) => err("--database must be a postgres:// URL"),
    }
}

/// With `--database` and neither `--secret` nor `--secret-file`, the
/// signing secret is the one kept in the database (made by the first
/// instance), so that every instance signs with the same.
fn secret_from_database(common: &CommonArgs, args: &ServeArgs) -> Result<bool, ConfigError> {
    Ok(database_url(common)?.is_some()
        && args.secret.secret.is_none()
        && args.secret.secret_file.is_none())
}

/// The signing configuration: secret, previous secrets, algorithm, key
/// file, issuer and audiences.
fn signing_config(common: &CommonArgs, args: &ServeArgs) -> Result<SigningConfig, ConfigError> {
    use crate::cli::SigningAlgArg;
    let signing = &args.signing;
    let insecure = args.secret.insecure_secret_file;
    let alg = match signing.signing_alg {
        SigningAlgArg::HS256 => SigningAlg::HS256,
        SigningAlgArg::EdDSA => SigningAlg::EdDSA,
        SigningAlgArg::ES256 => SigningAlg::ES256,
        SigningAlgArg::RS256 => SigningAlg::RS256,
    };
    let key_file = match &signing.signing_key_file {
        None => None,
        Some(_) if alg == SigningAlg::HS256 => {
            return err(
                "--signing-key-file needs --signing-alg EdDSA, ES256 or RS256 (HS256 signs with the secret)",
            )
        }
        Some(path) => {
            refuse_if_readable_by_others(path, "--signing-key-file", insecure)?;
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError(format!("cannot read --signing-key-file {}: {e}", path.display()))
            })?;
            let file = KeyFile::parse(&pem).map_err(|e| {
                ConfigError(format!("--signing-key-file {}: {e}", path.display()))
            })?;
            if file.alg != alg {
                return err(format!(
                    "--signing-key-file holds a {} key, but --signing-alg is {}",
                    file.alg.as_str(),
                    alg.as_str()
                ));
            }
            Some(file)
        }
    };
    let issuer = match signing.issuer.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Some(url.to_string())
        }
        Some(_) => return err("--issuer must be an http:// or https:// URL"),
    };
    let audiences: Vec<String> = signing
        .audience
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let secret = if secret_from_database(common, args)? {
        // Replaced by the database's secret once the store is open (see
        // `ServeConfig::secret_from_database`); random meanwhile, so that
        // it is worth nothing if anything used it.
        let mut bytes = vec![0u8; crate::secrets::MIN_SECRET_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|e| ConfigError(format!("no randomness available: {e}")))?;
        crate::secrets::Secret::new(bytes)?
    } else {
        resolve_secret(&common.data, &args.secret)?
    };
    Ok(SigningConfig {
        alg,
        secret,
        previous_secrets: resolve_previous_secrets(signing, insecure)?,
        key_file,
        issuer,
        audiences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn type_roles() {
        let default = TypeRoles::parse(&[]).unwrap();
        assert_eq!(default.roles_for("web"), Some(&[2][..]));
        assert_eq!(default.roles_for("mobile"), Some(&[1][..]));
        assert_eq!(default.roles_for("desktop"), None);
        let custom = TypeRoles::parse(&["web=2+3".into(), "kiosk=7".into()]).unwrap();
        assert_eq!(custom.roles_for("web"), Some(&[2, 3][..]));
        assert_eq!(custom.roles_for("mobile"), None);
        assert!(TypeRoles::parse(&["web".into()]).is_err());
        assert!(TypeRoles::parse(&["web=x".into()]).is_err());
    }

    #[test]
    fn seed_user_password_keeps_colons() {
        let seed = parse_seed_user("Ana@Example.com:2:Ana Admin:pa:ss:word").unwrap();
        assert_eq!(seed.email, "ana@example.com");
        assert_eq!(seed.role_id, 2);
        assert_eq!(seed.name, "Ana Admin");
        assert_eq!(seed.password, "pa:ss:word");
        assert!(!format!("{seed:?}").contains("pa:ss"));
        assert!(parse_seed_user("ana@example.com:2:Ana").is_err());
        assert!(parse_seed_user("ana@example.com:x:Ana:password1").is_err());
        assert!(parse_seed_user("ana@example.com:2:Ana:short").is_err());
    }
}
