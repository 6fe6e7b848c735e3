//! The account commands (`user …`, `session …`, `keys …`, `backup`): the same
//! admin API requests, sent through the admin socket while a server runs,
//! or answered in this process from the database file when none does. Both
//! ways run the same routes ([`crate::http::admin`]), so output, exit codes
//! and errors are the same.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::accounts::Accounts;
use crate::cli::{CommonArgs, KeysCommand, SessionCommand, UserCommand};
use crate::clock::Clock;
use crate::config::{self, Argon2Costs};
use crate::http::{admin, error_response};
use crate::keys::KeyAdmin;
use crate::passwords::{Password, Passwords};
use crate::store::postgres::PgStore;
use crate::store::redb::RedbStore;
use crate::store::Store;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where admin requests go.
enum Target {
    /// A running server's admin socket.
    Socket(std::path::PathBuf),
    /// No server: the database file, opened here.
    Local { accounts: Accounts, keys: KeyAdmin },
}

/// An admin API answer.
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }

    fn message(&self) -> String {
        let body = self.json();
        body["message"].as_str().map_or_else(
            || format!("the server answered {}", self.status),
            str::to_string,
        )
    }
}

impl Target {
    async fn open(common: &CommonArgs) -> Result<Target, BoxError> {
        let socket = config::admin_socket(common);
        if let Ok(stream) = UnixStream::connect(&socket).await {
            check_server_user(&stream)?;
            return Ok(Target::Socket(socket));
        }
        let store: Arc<dyn Store> = match config::database_url(common)? {
            Some(url) => {
                Arc::new(PgStore::open(&url, 2, common.database_ca_file.as_deref()).await?)
            }
            None => Arc::new(RedbStore::open_at(&config::store_location(common)).await?.0),
        };
        let passwords = Passwords::new(Argon2Costs::from_args(common)?, 1, 1)?;
        Ok(Target::Local {
            accounts: Accounts::new(Arc::clone(&store), Arc::new(passwords), Clock::default()),
            keys: KeyAdmin::Offline {
                store,
                clock: Clock::default(),
            },
        })
    }

    /// Sends `method path_and_query` (under `/admin/`) with an optional JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, BoxError> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        match self {
            Target::Socket(socket) => {
                let stream = UnixStream::connect(socket).await?;
                check_server_user(&stream)?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let request = Request::builder()
                    .method(method)
                    .uri(format!("/admin/{path}"))
                    .header("host", "latchkey")
                    .header("content-type", "application/json")
                    .body(Full::new(bytes))?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok(Answer { status, body })
            }
            Target::Local { accounts, keys } => {
                // The same limit as on the socket, so both answer alike.
                if bytes.len() > crate::http::MAX_ADMIN_BODY_BYTES {
                    let response = error_response(&crate::http::HttpError::PayloadTooLarge);
                    let body = response.into_body().collect().await?.to_bytes();
                    return Ok(Answer { status: 413, body });
                }
                let (path, query) = match path.split_once('?') {
                    Some((path, query)) => (path, Some(query)),
                    None => (path, None),
                };
                let target = admin::Target { accounts, keys };
                let response =
                    admin::route(&target, admin::Channel::Local, &method, path, query, bytes)
                        .await
                        .unwrap_or_else(|error| error_response(&error));
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok(Answer { status, body })
            }
        }
    }

    /// `PATCH /admin/users/{id}` of `user` (as the admin API showed it).
    async fn patch_user(&self, user: &Value, change: Value) -> Result<Answer, BoxError> {
        let path = format!("users/{}", id_of(user));
        ok(self.call(Method::PATCH, &path, Some(change)).await?)
    }

    /// The user with `email`, as the admin API shows it.
    async fn user_by_email(&self, email: &str) -> Result<Value, BoxError> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("email", email)
            .finish();
        let answer = ok(self
            .call(Method::GET, &format!("users?{query}"), None)
            .await?)?;
        match answer.json()["users"].as_array().and_then(|u| u.first()) {
            Some(user) => Ok(user.clone()),
            None => Err(format!("no user with email {}", email.trim().to_lowercase()).into()),
        }
    }
}

/// Refuses a socket served by another user (passwords and imports go
/// through it): the server must run as this user, or as root.
fn check_server_user(stream: &UnixStream) -> Result<(), BoxError> {
    let own = rustix::process::geteuid().as_raw();
    match stream.peer_cred().map(|c| c.uid()) {
        // root may use the server of any user (a service account's, say).
        Ok(uid) if uid == own || uid == 0 || own == 0 => Ok(()),
        Ok(uid) => Err(format!(
            "the admin socket is served by user {uid}, not by this user; refusing to use it"
        )
        .into()),
        Err(e) => Err(format!("cannot check who serves the admin socket: {e}").into()),
    }
}

/// The answer if it is a success, else its message as the error.
fn ok(answer: Answer) -> Result<Answer, BoxError> {
    if (200..300).contains(&answer.status) {
        Ok(answer)
    } else {
        Err(answer.message().into())
    }
}

fn id_of(user: &Value) -> String {
    user["id"].as_str().unwrap_or_default().to_string()
}

pub async fn user_command(common: &CommonArgs, command: UserCommand) -> Result<(), BoxError> {
    let target = Target::open(common).await?;
    match command {
        UserCommand::Add { email, name, role } => {
            let password = read_new_password()?;
            let body = json!({ "email": email, "name": name, "role_id": role, "password": password.as_str() });
            let answer = target.call(Method::POST, "users", Some(body)).await?;
            if answer.error_code() == "email_taken" {
                let email = email.trim().to_lowercase();
                return Err(format!("a user with email {email} already exists").into());
            }
            let user = ok(answer)?.json()["user"].clone();
            println!(
                "added user {} <{}> with role {}",
                id_of(&user),
                user["email"].as_str().unwrap_or_default(),
                user["role_id"]
            );
        }
        UserCommand::List { json } => list_users(&target, json).await?,
        UserCommand::Remove { email } => {
            let user = target.user_by_email(&email).await?;
            ok(target
                .call(Method::DELETE, &format!("users/{}", id_of(&user)), None)
                .await?)?;
            println!(
                "removed user {} <{}> and revoked their sessions",
                id_of(&user),
                user["email"].as_str().unwrap_or_default()
            );
        }
        UserCommand::Passwd { email } => {
            let user = target.user_by_email(&email).await?;
            let password = read_new_password()?;
            target
                .patch_user(&user, json!({ "password": password.as_str() }))
                .await?;
            println!(
                "changed the password of <{}>; their sessions are revoked",
                user["email"].as_str().unwrap_or_default()
            );
        }
        UserCommand::Disable { email } => set_disabled(&target, &email, true).await?,
        UserCommand::Enable { email } => set_disabled(&target, &email, false).await?,
        UserCommand::Import { file, skip_invalid } => import(&target, &file, skip_invalid).await?,
        UserCommand::Export => {
            let answer = ok(target.call(Method::GET, "users/export", None).await?)?;
            std::io::stdout().write_all(&answer.body)?;
            if std::io::stderr().is_terminal() {
                let users = answer.body.iter().filter(|&&b| b == b'\n').count();
                eprintln!("exported {users} users");
            }
        }
    }
    Ok(())
}

async fn set_disabled(target: &Target, email: &str, disabled: bool) -> Result<(), BoxError> {
    let user = target.user_by_email(email).await?;
    target
        .patch_user(&user, json!({ "disabled": disabled }))
        .await?;
    let email = user["email"].as_str().unwrap_or_default();
    if disabled {
        println!(
            "disabled user {} <{email}> and revoked their sessions",
            id_of(&user)
        );
    } else {
        println!("enabled user {} <{email}>", id_of(&user));
    }
    Ok(())
}

async fn list_users(target: &Target, as_json: bool) -> Result<(), BoxError> {
    if !as_json {
        println!(
            "{:<8} {:<32} {:<24} {:<5} DISABLED",
            "ID", "EMAIL", "NAME", "ROLE"
        );
    }
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("users?limit=1000&after={after}"),
            None => "users?limit=1000".to_string(),
        };
        let page = ok(target.call(Method::GET, &path, None).await?)?.json();
        for user in page["users"].as_array().into_iter().flatten() {
            if as_json {
                println!("{user}");
            } else {
                println!(
                    "{:<8} {:<32} {:<24} {:<5} {}",
                    id_of(user),
                    user["email"].as_str().unwrap_or_default(),
                    user["name"].as_str().unwrap_or_default(),
                    user["role_id"].to_string(),
                    if user["disabled"] == json!(true) {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(()),
        }
    }
}

/// Reads JSON Lines (`-`: stdin) and imports them in one request.
async fn import(target: &Target, file: &Path, skip_invalid: bool) -> Result<(), BoxError> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    }
    let progress = std::io::stderr().is_terminal();
    let mut users = Vec::new();
    let mut unreadable = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut fields)) => {
                fields.insert("line".into(), json!(index + 1));
                users.push(Value::Object(fields));
            }
            _ => unreadable.push(format!("line {}: not a JSON object", index + 1)),
        }
        if progress && index % 10_000 == 0 {
            eprint!("\rread {} lines", index + 1);
        }
    }
    if progress {
        eprintln!("\rread {} lines; importing…", text.lines().count());
    }
    if !unreadable.is_empty() && !skip_invalid {
        return Err(format!("nothing imported; {}", unreadable.join("; ")).into());
    }
    let body = json!({ "users": users, "skipInvalid": skip_invalid });
    let answer = ok(target
        .call(Method::POST, "users/import", Some(body))
        .await?)?
    .json();
    for skipped in unreadable.iter() {
        eprintln!("skipped {skipped}");
    }
    for skipped in answer["skipped"].as_array().into_iter().flatten() {
        eprintln!(
            "skipped line {}: {}",
            skipped["line"],
            skipped["reason"].as_str().unwrap_or_default()
        );
    }
    println!("imported {} users", answer["imported"]);
    Ok(())
}

pub async fn session_command(common: &CommonArgs, command: SessionCommand) -> Result<(), BoxError> {
    let target = Target::open(common).await?;
    match command {
        SessionCommand::List { email, json } => {
            let user = target.user_by_email(&email).await?;
            let path = format!("users/{}/sessions", id_of(&user));
            let sessions = ok(target.call(Method::GET, &path, None).await?)?.json();
            if !json {
                println!("{:<34} {:<12} {:<12} EXPIRES", "ID", "CREATED", "LAST USED");
            }
            for session in sessions["sessions"].as_array().into_iter().flatten() {
                if json {
                    println!("{session}");
                } else {
                    println!(
                        "{:<34} {:<12} {:<12} {}",
                        session["id"].as_str().unwrap_or_default(),
                        session["createdAt"].to_string(),
                        session["lastUsedAt"].to_string(),
                        session["expiresAt"]
                    );
                }
            }
        }
        SessionCommand::Revoke { id: Some(id), .. } => {
            ok(target
                .call(Method::DELETE, &format!("sessions/{id}"), None)
                .await?)?;
            println!("revoked session {id}");
        }
        SessionCommand::Revoke {
            email: Some(email), ..
        } => {
            let user = target.user_by_email(&email).await?;
            let path = format!("users/{}/sessions", id_of(&user));
            ok(target.call(Method::DELETE, &path, None).await?)?;
            println!(
                "revoked every session of <{}>",
                user["email"].as_str().unwrap_or_default()
            );
        }
        SessionCommand::Revoke { .. } => return Err("give --id or --email".into()),
    }
    Ok(())
}

pub async fn keys_command(common: &CommonArgs, command: KeysCommand) -> Result<(), BoxError> {
    let target = Target::open(common).await?;
    let (answer, as_json) = match command {
        KeysCommand::List { json } => (target.call(Method::GET, "keys", None).await?, json),
        KeysCommand::Rotate { now } => {
            let body = json!({ "now": now });
            (
                target.call(Method::POST, "keys/rotate", Some(body)).await?,
                false,
            )
        }
    };
    let keys = ok(answer)?.json();
    if !as_json {
        println!(
            "{:<44} {:<6} {:<9} {:<21} {:<21} PUBLISHED UNTIL",
            "KID", "ALG", "STATE", "CREATED", "SIGNS FROM"
        );
    }
    let time = |value: &Value| {
        value.as_u64().map_or_else(
            || "-".to_string(),
            |millis| {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
                humantime::format_rfc3339_seconds(at).to_string()
            },
        )
    };
    for key in keys["keys"].as_array().into_iter().flatten() {
        if as_json {
            println!("{key}");
        } else {
            let published_until = if key["published"] == Value::Bool(false) {
                "(not published)".to_string()
            } else {
                time(&key["publishedUntil"])
            };
            println!(
                "{:<44} {:<6} {:<9} {:<21} {:<21} {}",
                key["kid"].as_str().unwrap_or_default(),
                key["alg"].as_str().unwrap_or_default(),
                key["state"].as_str().unwrap_or_default(),
                time(&key["createdAt"]),
                time(&key["signsFrom"]),
                published_until
            );
        }
    }
    Ok(())
}

/// A store named on the command line: a postgres:// URL or a redb file.
async fn open_store(common: &CommonArgs, location: &str) -> Result<Arc<dyn Store>, BoxError> {
    if config::is_database_url(location) {
        return Ok(Arc::new(
            PgStore::open(location, 4, common.database_ca_file.as_deref()).await?,
        ));
    }
    let mut at = config::store_location(common);
    at.path = std::path::PathBuf::from(location);
    at.min_free_bytes = 0;
    Ok(Arc::new(RedbStore::open_at(&at).await?.0))
}

/// The signing secret that signed the source's refresh tokens, where the
/// target's servers will find it: a PostgreSQL store keeps it (servers
/// started on it without `--secret` use it); beside a redb file it is the
/// generated `<name>.secret` (written if missing). A secret given with
/// `--secret-file` is not known here: give the same to the new servers.
/// Answers what to add to the report.
async fn source_signing_secret(
    source: &dyn Store,
    from: &str,
) -> Result<Option<Vec<u8>>, BoxError> {
    let secret = if config::is_database_url(from) {
        source.signing_secret().await?
    } else {
        let path = crate::secrets::generated_secret_path(std::path::Path::new(from));
        match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read the source's secret file: {e}").into()),
        }
    };
    if let Some(secret) = &secret {
        crate::secrets::Secret::new(secret.clone())
            .map_err(|e| format!("the source's signing secret is unusable: {e}"))?;
    } else {
        eprintln!(
            "warning: the source keeps no generated signing secret (its servers were given \
             --secret-file or --secret): give the target's servers the same"
        );
    }
    Ok(secret)
}

/// Writes `secret` (read by [`source_signing_secret`]) where the target's
/// servers find it.
async fn copy_signing_secret(
    secret: Option<Vec<u8>>,
    target: &dyn Store,
    to: &str,
) -> Result<&'static str, BoxError> {
    let Some(secret) = secret else {
        return Ok("");
    };
    if config::is_database_url(to) {
        target.set_signing_secret(secret).await?;
        return Ok(" and the signing secret");
    }
    let path = crate::secrets::generated_secret_path(std::path::Path::new(to));
    match std::fs::read(&path) {
        Ok(existing) if existing == secret => Ok(" and the signing secret"),
        Ok(_) => {
            eprintln!(
                "warning: {} holds another secret: servers on the copy need the source's (--secret-file)",
                path.display()
            );
            Ok("")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&secret)?;
            file.sync_all()?;
            Ok(" and the signing secret")
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

/// `store copy --from A --to B [--replace]`: every record, ids and all, in
/// pages.
pub async fn store_copy(
    common: &CommonArgs,
    from: &str,
    to: &str,
    replace: bool,
) -> Result<(), BoxError> {
    use crate::store::Restore;
    const PAGE: usize = 5_000;
    // Opening a file creates it: a mistyped source must not pass for an
    // empty store (with --replace, it would empty the target).
    if !config::is_database_url(from) && !std::path::Path::new(from).exists() {
        return Err(format!("the source {from} does not exist").into());
    }
    let source = open_store(common, from).await?;
    let target = open_store(common, to).await?;
    // Each store's log has a random identity: the same one twice (two
    // spellings of one URL) must not be cleared and copied onto itself.
    if source.revocations(None, 0).await?.epoch == target.revocations(None, 0).await?.epoch {
        return Err("the source and the target are the same store".into());
    }
    // Read before the target is touched: an unreadable one changes nothing.
    let secret = source_signing_secret(&*source, from).await?;
    // An empty source is a mistake (a wrong file or database): copying it
    // would only replace the target's keys, or with --replace, everything.
    if source.is_empty().await? {
        return Err("the source holds no user, session or revocation: nothing to copy".into());
    }
    if replace {
        eprintln!("deleting everything the target holds (--replace) …");
        target.clear().await?;
    } else if !target.is_empty().await? {
        return Err(
            "the target already holds users, sessions or revocations; copy into an empty one, or give --replace to delete what it holds first"
                .into(),
        );
    }
    // Keys first: a target left half-copied by a failure still verifies
    // the tokens it holds (copy again with --replace to finish).
    let keys = source.signing_keys().await?;
    let target_keys = target.signing_keys().await?;
    let copied_keys = keys.keys.len();
    if !target
        .replace_signing_keys(crate::keys::KeySet {
            generation: target_keys.generation,
            ..keys
        })
        .await?
    {
        return Err("the target's signing keys changed during the copy".into());
    }
    let secret = copy_signing_secret(secret, &*target, to).await?;
    let mut users = 0;
    let mut after = None;
    loop {
        let page = source.users_page(after, PAGE).await?;
        users += page.users.len();
        if !page.users.is_empty() {
            target.restore(Restore::Users(page.users)).await?;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    // Ids of users deleted in the source stay unused in the target.
    target
        .restore(Restore::NextUserId(source.next_user_id().await?))
        .await?;
    let mut sessions = 0;
    let mut after = None;
    loop {
        let page = source.sessions_page(after, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        sessions += page.len();
        target.restore(Restore::Sessions(page)).await?;
    }
    let mut revocations = 0;
    let mut after = None;
    loop {
        let page = source.revocations(after, PAGE).await?;
        let Some(last) = page.entries.last() else {
            break;
        };
        after = Some(last.seq);
        revocations += page.entries.len();
        target.restore(Restore::Revocations(page.entries)).await?;
    }
    println!(
        "copied {users} users, {sessions} sessions, {revocations} revocations and {copied_keys} signing keys{secret}"
    );
    Ok(())
}

/// `migrate`: the PostgreSQL schema brought up to date.
pub async fn migrate(common: &CommonArgs) -> Result<(), BoxError> {
    let url = config::database_url(common)?.ok_or("migrate needs --database postgres://…")?;
    let version = PgStore::migrate(&url, common.database_ca_file.as_deref()).await?;
    println!("the schema is at version {version}");
    Ok(())
}

/// `backup --out FILE`: the server (or this process) writes the copy.
pub async fn backup(common: &CommonArgs, out: &Path) -> Result<(), BoxError> {
    let out = std::path::absolute(out)?;
    let target = Target::open(common).await?;
    let progress = std::io::stderr().is_terminal();
    if progress {
        eprintln!("copying {} …", common.data.display());
    }
    let body = json!({ "path": out.display().to_string() });
    ok(target.call(Method::POST, "backup", Some(body)).await?)?;
    println!("wrote a backup to {}", out.display());
    Ok(())
}

/// Reads a new password: prompted twice (without echo) on a terminal,
/// otherwise one line from stdin without its line ending.
fn read_new_password() -> Result<Password, BoxError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        if first != second {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_string()
    };
    crate::credentials::check_new_password(&password)?;
    Ok(Password::new(password))
}
