//! Introspection, revocation and the revocation feed over real HTTP:
//! every token state, every way a session ends, long polls, cursors across
//! a `kill -9`, pruning, and server metadata.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use latchkey::secrets::Secret;
use serde_json::{json, Value};

use crate::common::*;

const VERIFIER_KEY: &str = "a-verifier-key-for-the-revocation-tests-0123";
const ADMIN_KEY: &str = "an-admin-key-for-the-revocation-tests-0123456";

async fn server_with(adjust: impl FnOnce(&mut latchkey::config::ServeConfig)) -> TestServer {
    TestServer::start_with(|config| {
        config.verifier_keys = vec![Secret::new(VERIFIER_KEY.as_bytes().to_vec()).unwrap()];
        config.admin_key = Some(Secret::new(ADMIN_KEY.as_bytes().to_vec()).unwrap());
        adjust(config);
    })
    .await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn introspect(client: &HttpClient, token: &str) -> Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    client
        .send(
            Method::POST,
            "/oauth/introspect",
            &[
                ("authorization", &bearer(VERIFIER_KEY)),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
        .await
}

async fn revoke(client: &HttpClient, token: &str) -> Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    client
        .send(
            Method::POST,
            "/oauth/revoke",
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
}

async fn feed(client: &HttpClient, query: &str) -> Response {
    client
        .send(
            Method::GET,
            &format!("/oauth/revocations{query}"),
            &[("authorization", &bearer(VERIFIER_KEY))],
            Bytes::new(),
        )
        .await
}

fn sids(answer: &Response) -> Vec<String> {
    answer.body["revocations"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", answer.text))
        .iter()
        .map(|e| e["sid"].as_str().unwrap().to_string())
        .collect()
}

fn sid(tokens: &Tokens) -> String {
    claims(&tokens.access)["sid"].as_str().unwrap().to_string()
}

fn inactive(answer: &Response) {
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body, json!({ "active": false }), "{}", answer.text);
}

#[tokio::test]
async fn introspection_answers_every_token_state() {
    let server = server_with(|config| {
        config.signing.issuer = Some("https://auth.example.com".into());
        config.signing.audiences = vec!["api".into()];
        config.lifetimes.reuse_grace = Duration::ZERO;
    })
    .await;
    let client = &server.client;
    let tokens = server.login("mo@example.com", None).await;

    let access = introspect(client, &tokens.access).await;
    assert_eq!(access.status, 200);
    let c = claims(&tokens.access);
    assert_eq!(
        access.body,
        json!({
            "active": true, "token_type": "access_token", "sub": c["sub"], "sid": c["sid"],
            "jti": c["jti"], "iat": c["iat"], "exp": c["exp"],
            "iss": "https://auth.example.com", "aud": "api", "username": "mo@example.com",
        })
    );
    let refresh = introspect(client, &tokens.refresh).await;
    let r = claims(&tokens.refresh);
    assert_eq!(refresh.body["active"], true);
    assert_eq!(refresh.body["token_type"], "refresh_token");
    assert_eq!(refresh.body["jti"], r["jti"]);
    assert!(refresh.body.get("username").is_none());
    assert_eq!(access.headers["cache-control"], "no-store");

    // A rotated refresh token is inactive, and introspecting it is not a reuse.
    let rotated = Tokens::from_body(&client.refresh(&tokens.refresh).await.body);
    inactive(&introspect(client, &tokens.refresh).await);
    assert_eq!(
        introspect(client, &rotated.refresh).await.body["active"],
        true
    );
    assert_eq!(client.refresh(&rotated.refresh).await.status, 200);

    // Forged, malformed and expired tokens.
    let mut forged = tokens.access.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (header, payload) = {
        let mut parts = tokens.access.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let _ = header;
    let none = format!(
        "{}.{payload}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0" // {"alg":"none","typ":"at+jwt"}
    );
    let keys = test_keys();
    let profile: latchkey::tokens::Profile = serde_json::from_value(c["profile"].clone()).unwrap();
    let sid = latchkey::session::SessionId::from_hex(c["sid"].as_str().unwrap()).unwrap();
    let expired = keys.access_token(profile, sid, 1_000_000, 60).unwrap();
    for token in [
        forged.as_str(),
        none.as_str(),
        expired.as_str(),
        "garbage",
        "a.b.c",
    ] {
        inactive(&introspect(client, token).await);
    }
    // A JSON body works too; a hint is only a hint.
    let json_answer = client
        .send(
            Method::POST,
            "/oauth/introspect",
            &[
                ("authorization", &bearer(ADMIN_KEY)),
                ("content-type", "application/json"),
            ],
            json!({ "token": rotated.access, "token_type_hint": "refresh_token" }).to_string(),
        )
        .await;
    assert_eq!(json_answer.body["active"], true, "{}", json_answer.text);

    // After a logout, both tokens of the session are inactive.
    assert_eq!(
        client.logout(&rotated.refresh, None).await.status.as_u16() / 100,
        2
    );
    inactive(&introspect(client, &rotated.access).await);
    inactive(&introspect(client, &rotated.refresh).await);
}

#[tokio::test]
async fn introspection_and_the_feed_need_a_verifier_key() {
    let server = server_with(|_| {}).await;
    let client = &server.client;
    for path in ["/oauth/introspect", "/oauth/revocations"] {
        let method = if path.ends_with("introspect") {
            Method::POST
        } else {
            Method::GET
        };
        for auth in [None, Some("Bearer wrong-key"), Some("Basic abc")] {
            let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
            if let Some(auth) = auth {
                headers.push(("authorization", auth));
            }
            let answer = client.send(method.clone(), path, &headers, "token=x").await;
            answer.assert_error(401, "invalid_client");
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
        }
    }
    // Missing token, other content types.
    let answer = client
        .send(
            Method::POST,
            "/oauth/introspect",
            &[
                ("authorization", &bearer(VERIFIER_KEY)),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "token_type_hint=access_token",
        )
        .await;
    answer.assert_error(400, "invalid_request");
    let answer = client
        .send(
            Method::POST,
            "/oauth/introspect",
            &[
                ("authorization", &bearer(VERIFIER_KEY)),
                ("content-type", "text/plain"),
            ],
            "token=x",
        )
        .await;
    answer.assert_error(415, "unsupported_media_type");

    let bare = TestServer::start().await;
    for (method, path) in [
        (Method::POST, "/oauth/introspect"),
        (Method::GET, "/oauth/revocations"),
    ] {
        bare.client
            .send(
                method,
                path,
                &[("authorization", &bearer(VERIFIER_KEY))],
                Bytes::new(),
            )
            .await
            .assert_error(404, "not_found");
    }
    // Without --issuer there is no metadata; with it, there is.
    bare.client
        .send(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            &[],
            Bytes::new(),
        )
        .await
        .assert_error(404, "not_found");
    let issued = server_with(|c| c.signing.issuer = Some("https://auth.example.com".into())).await;
    let metadata = issued
        .client
        .send(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.body["issuer"], "https://auth.example.com");
    assert_eq!(
        metadata.body["jwks_uri"],
        "https://auth.example.com/.well-known/jwks.json"
    );
    assert_eq!(
        metadata.body["introspection_endpoint"],
        "https://auth.example.com/oauth/introspect"
    );
    assert_eq!(
        metadata.body["revocation_endpoint"],
        "https://auth.example.com/oauth/revoke"
    );
    assert_eq!(
        metadata.body["latchkey_revocation_feed_endpoint"],
        "https://auth.example.com/oauth/revocations"
    );
}

#[tokio::test]
async fn revoke_answers_200_to_everything_and_ends_exactly_its_own_session() {
    let server = server_with(|_| {}).await;
    let client = &server.client;
    for token in ["garbage", "a.b.c", ""] {
        let answer = revoke(client, token).await;
        if token.is_empty() {
            answer.assert_error(400, "invalid_request");
        } else {
            assert_eq!(answer.status, 200);
            assert!(answer.text.is_empty());
        }
    }
    client
        .send(
            Method::POST,
            "/oauth/revoke",
            &[("content-type", "text/plain")],
            "token=x",
        )
        .await
        .assert_error(415, "unsupported_media_type");

    for by_access in [false, true] {
        let one = server.login("mo@example.com", None).await;
        let other = server.login("mo@example.com", None).await;
        let token = if by_access { &one.access } else { &one.refresh };
        let answer = revoke(client, token).await;
        assert_eq!(answer.status, 200);
        assert!(answer.text.is_empty());
        client
            .profile(&one.access)
            .await
            .assert_error(401, "session_revoked");
        client
            .refresh(&one.refresh)
            .await
            .assert_error(401, "session_revoked");
        assert_eq!(client.profile(&other.access).await.status, 200);
        assert_eq!(client.refresh(&other.refresh).await.status, 200);
        // Again, and with JSON: still 200, nothing more.
        let again = client
            .send(
                Method::POST,
                "/oauth/revoke",
                &[("content-type", "application/json")],
                json!({ "token": token }).to_string(),
            )
            .await;
        assert_eq!(again.status, 200);
    }
}

#[tokio::test]
async fn the_feed_bootstraps_follows_and_long_polls() {
    let server = server_with(|_| {}).await;
    let client = &server.client;
    let empty = feed(client, "").await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert_eq!(empty.body["revocations"], json!([]));
    let cursor = empty.body["cursor"].as_str().unwrap().to_string();

    let first = server.login("mo@example.com", None).await;
    let before_logout = claims(&first.access)["exp"].as_u64().unwrap();
    client.logout(&first.refresh, None).await;
    let next = feed(client, &format!("?after={cursor}")).await;
    assert_eq!(sids(&next), vec![sid(&first)]);
    let entry = &next.body["revocations"][0];
    assert_eq!(entry["sub"], claims(&first.access)["sub"]);
    let until = entry["until"].as_u64().unwrap();
    assert!(
        until >= before_logout,
        "until {until} before the access token's exp"
    );
    assert!(until <= now_secs() + 3600 + 1);
    let cursor = next.body["cursor"].as_str().unwrap().to_string();
    // Nothing new: an empty answer with the same cursor.
    let same = feed(client, &format!("?after={cursor}")).await;
    assert_eq!(sids(&same), Vec::<String>::new());
    assert_eq!(same.body["cursor"], cursor.as_str());

    // A long poll wakes within a second of a logout.
    let second = server.login("mo@example.com", None).await;
    let waiting = {
        let client = client.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = feed(&client, &format!("?after={cursor}&wait=30")).await;
            (answer, started)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged_out = Instant::now();
    client.logout(&second.refresh, None).await;
    let (answer, started) = waiting.await.unwrap();
    assert_eq!(sids(&answer), vec![sid(&second)]);
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    assert!(
        logged_out.elapsed() < Duration::from_secs(1),
        "woke within 1 s"
    );
    // A long poll with nothing new ends after `wait`.
    let cursor = answer.body["cursor"].as_str().unwrap().to_string();
    let started = Instant::now();
    let idle = feed(client, &format!("?after={cursor}&wait=1")).await;
    assert_eq!(sids(&idle), Vec::<String>::new());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The bootstrap lists both; bad input is refused.
    assert_eq!(sids(&feed(client, "").await).len(), 2);
    feed(client, "?wait=61&after=x")
        .await
        .assert_error(400, "invalid_request");
    feed(client, "?after=garbage")
        .await
        .assert_error(400, "invalid_request");
    // A cursor of another database.
    let other = server_with(|_| {}).await;
    feed(&other.client, &format!("?after={cursor}"))
        .await
        .assert_error(410, "cursor_expired");
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn with_admin(
    client: &HttpClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    let mut headers = vec![("authorization", bearer(ADMIN_KEY))];
    if body.is_some() {
        headers.push(("content-type", "application/json".into()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    client
        .send(
            method,
            path,
            &headers,
            body.map_or_else(String::new, |b| b.to_string()),
        )
        .await
}

#[tokio::test]
async fn every_way_a_session_ends_is_in_the_feed() {
    let server = server_with(|config| {
        config.lifetimes.reuse_grace = Duration::ZERO;
        config.max_sessions_per_user = 3;
    })
    .await;
    let client = &server.client;
    let mut expected = Vec::new();
    let mo_id = claims(&server.login("mo@example.com", None).await.access)["sub"]
        .as_str()
        .unwrap()
        .to_string();
    // The session cap: the first of these three… (one already exists)
    let capped = server.login("mo@example.com", None).await;
    let mut sessions = vec![];
    for _ in 0..2 {
        sessions.push(server.login("mo@example.com", None).await);
    }
    // …the login above (4th live) revoked the oldest: the very first one.
    let first_cursor_answer = feed(client, "").await;
    assert_eq!(
        sids(&first_cursor_answer).len(),
        1,
        "{}",
        first_cursor_answer.text
    );
    expected.extend(sids(&first_cursor_answer));

    // Local logout.
    client.logout(&capped.refresh, None).await;
    expected.push(sid(&capped));
    // Reuse detection.
    let reused = sessions.pop().unwrap();
    client.refresh(&reused.refresh).await;
    client
        .refresh(&reused.refresh)
        .await
        .assert_error(401, "token_reused");
    expected.push(sid(&reused));
    // /oauth/revoke.
    let revoked = sessions.pop().unwrap();
    revoke(client, &revoked.refresh).await;
    expected.push(sid(&revoked));
    // Admin session revoke.
    let by_admin = server.login("mo@example.com", None).await;
    let answer = with_admin(
        client,
        Method::DELETE,
        &format!("/admin/sessions/{}", sid(&by_admin)),
        None,
    )
    .await;
    assert_eq!(answer.status, 204, "{}", answer.text);
    expected.push(sid(&by_admin));
    // Global logout.
    let everywhere = server.login("mo@example.com", None).await;
    let other = server.login("mo@example.com", None).await;
    client.logout(&everywhere.refresh, Some("global")).await;
    expected.push(sid(&everywhere));
    expected.push(sid(&other));
    // Password change (ends the other sessions).
    let keeper = server.login("mo@example.com", None).await;
    let ended = server.login("mo@example.com", None).await;
    let change = json!({ "currentPassword": PASSWORD, "newPassword": "a-brand-new-password" });
    let answer = client
        .send(
            Method::POST,
            "/auth/password",
            &[
                ("authorization", &format!("Bearer {}", keeper.access)),
                ("content-type", "application/json"),
            ],
            change.to_string(),
        )
        .await;
    assert_eq!(answer.status, 204, "{}", answer.text);
    expected.push(sid(&ended));
    // Disable (ends the rest), then delete (ana's session).
    let answer = with_admin(
        client,
        Method::PATCH,
        &format!("/admin/users/{mo_id}"),
        Some(json!({ "disabled": true })),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    expected.push(sid(&keeper));
    let ana = server.login("ana@example.com", None).await;
    let ana_id = claims(&ana.access)["sub"].as_str().unwrap().to_string();
    let answer = with_admin(
        client,
        Method::DELETE,
        &format!("/admin/users/{ana_id}"),
        None,
    )
    .await;
    assert_eq!(answer.status, 204, "{}", answer.text);
    expected.push(sid(&ana));

    let mut listed = sids(&feed(client, "").await);
    listed.sort();
    expected.sort();
    expected.dedup();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn entries_leave_after_until_and_a_pruned_cursor_is_gone() {
    let server = server_with(|config| {
        config.lifetimes.access_ttl = Duration::from_secs(1);
        config.sweep_interval = Duration::from_millis(300);
    })
    .await;
    let client = &server.client;
    let start = feed(client, "").await.body["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens = server.login("mo@example.com", None).await;
    client.logout(&tokens.refresh, None).await;
    assert_eq!(sids(&feed(client, "").await), vec![sid(&tokens)]);
    // Past `until` (end + 1 s), the bootstrap leaves it out; once pruned,
    // the cursor from before it cannot be served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = feed(client, &format!("?after={start}")).await;
        if answer.status == 410 {
            answer.assert_error(410, "cursor_expired");
            break;
        }
        assert!(Instant::now() < deadline, "never pruned: {}", answer.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sids(&feed(client, "").await), Vec::<String>::new());
}

#[tokio::test]
async fn cursors_survive_a_kill_9_restart() {
    let (_dir, data) = data_dir();
    let key_path = data.join("verifier.key");
    std::fs::write(&key_path, VERIFIER_KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key_path.display().to_string();
    let args = [
        "--secret",
        SECRET,
        "--seed-user",
        "mo@example.com:1:Mo:correct horse battery",
        "--verifier-key-file",
        &key,
    ];
    let server = ServerProcess::start(&data, &args);
    let cursor = feed(&server.client, "").await.body["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let one = login(&server.client, "mo@example.com", None).await;
    let two = login(&server.client, "mo@example.com", None).await;
    server.client.logout(&one.refresh, None).await;
    server.kill_hard();

    let server = ServerProcess::start(&data, &args);
    server.client.logout(&two.refresh, None).await;
    let answer = feed(&server.client, &format!("?after={cursor}")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(sids(&answer), vec![sid(&one), sid(&two)]);
}

// ---- the example verifiers ------------------------------------------------

/// A free port on 127.0.0.1 (bound and released: latchkey must come back
/// on the same one after a restart, where the verifiers look for it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An example verifier as a child process; reports its port on stdout.
struct Verifier {
    child: std::process::Child,
    client: HttpClient,
}

impl Verifier {
    fn start(program: &std::path::Path, script: &str, latchkey: &str, key_file: &str) -> Self {
        use std::io::BufRead;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(script);
        let mut child = std::process::Command::new(program)
            .arg(&path)
            .arg("0")
            .env("LATCHKEY_URL", latchkey)
            .env("VERIFIER_KEY_FILE", key_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = std::io::BufReader::new(stdout)
            .lines()
            .next()
            .unwrap()
            .unwrap();
        let port = line.trim_start_matches("listening on ").trim().to_string();
        Verifier {
            child,
            client: HttpClient::new(&format!("http://127.0.0.1:{port}")),
        }
    }

    async fn status(&self, token: &str) -> u16 {
        self.client
            .send(
                Method::GET,
                "/",
                &[("authorization", &format!("Bearer {token}"))],
                Bytes::new(),
            )
            .await
            .status
            .as_u16()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every verifier refuses `token`; returns how long it took.
async fn refused_by_all(verifiers: &[Verifier], token: &str) -> Duration {
    let started = Instant::now();
    for verifier in verifiers {
        while verifier.status(token).await != 401 {
            assert!(started.elapsed() < Duration::from_secs(5), "never refused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_verifiers_refuse_a_token_within_a_second_of_its_logout() {
    let tools = tokio::task::spawn_blocking(crate::signing::verifier_tools)
        .await
        .unwrap();
    let (python, node) = match tools {
        Ok(tools) => tools,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: PyJWT and jose could not be installed ({why})");
            return;
        }
        Err(why) => panic!("the verifier libraries are needed in CI: {why}"),
    };
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-verifier");
    if !example.join("node_modules/jose").exists() {
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&example)
            .status()
            .unwrap();
        assert!(status.success(), "npm install for the node example");
    }
    let (_dir, data) = data_dir();
    let key_path = data.join("verifier.key");
    std::fs::write(&key_path, VERIFIER_KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key_path.display().to_string();
    let port = free_port().to_string();
    let args = [
        "--port",
        port.as_str(),
        "--signing-alg",
        "EdDSA",
        "--secret",
        SECRET,
        "--seed-user",
        "mo@example.com:1:Mo:correct horse battery",
        "--verifier-key-file",
        &key,
    ];
    let mut server = ServerProcess::start(&data, &args);
    let url = format!("http://127.0.0.1:{port}");
    let verifiers = [
        Verifier::start(&python, "python-verifier/verifier.py", &url, &key),
        Verifier::start(&node, "node-verifier/verifier.mjs", &url, &key),
    ];
    // With a key latchkey does not know, they can follow no feed: they
    // refuse to vouch for any token (503), rather than miss revocations.
    let wrong_path = data.join("wrong.key");
    std::fs::write(&wrong_path, "not-the-verifier-key-0123456789abcdef").unwrap();
    let wrong = wrong_path.display().to_string();
    let blind = [
        Verifier::start(&python, "python-verifier/verifier.py", &url, &wrong),
        Verifier::start(&node, "node-verifier/verifier.mjs", &url, &wrong),
    ];
    let probe = login(&server.client, "mo@example.com", None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for verifier in &blind {
        assert_eq!(verifier.status(&probe.access).await, 503);
    }
    drop(blind);
    for round in 0..2 {
        let tokens = login(&server.client, "mo@example.com", None).await;
        for verifier in &verifiers {
            // 503 until the verifier has read the feed once.
            let deadline = Instant::now() + Duration::from_secs(10);
            while verifier.status(&tokens.access).await != 200 {
                assert!(Instant::now() < deadline, "round {round}: never accepted");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Give the verifiers' long polls time to be (re)connected and parked.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        server.client.logout(&tokens.refresh, None).await;
        let took = refused_by_all(&verifiers, &tokens.access).await;
        assert!(
            took < Duration::from_secs(1),
            "round {round}: refused after {took:?}"
        );
        if round == 0 {
            // latchkey dies and comes back on the same port: the verifiers
            // follow on with their cursors.
            server.kill_hard();
            server = ServerProcess::start(&data, &args);
        }
    }
}

#[tokio::test]
async fn introspection_and_revoking_a_dead_token_write_nothing() {
    let server = server_with(|_| {}).await;
    let client = &server.client;
    let tokens = server.login("mo@example.com", None).await;
    assert_eq!(revoke(client, &tokens.refresh).await.status, 200);
    // With every write failing, what needs no write still answers.
    server.app.hooks.set_fail_writes(true);
    for _ in 0..3 {
        assert_eq!(revoke(client, &tokens.refresh).await.status, 200);
        assert_eq!(revoke(client, &tokens.access).await.status, 200);
    }
    let live = {
        server.app.hooks.set_fail_writes(false);
        let live = server.login("mo@example.com", None).await;
        server.app.hooks.set_fail_writes(true);
        live
    };
    assert_eq!(introspect(client, &live.access).await.body["active"], true);
    inactive(&introspect(client, &tokens.access).await);
    // Revoking a live session does need one.
    assert_eq!(revoke(client, &live.refresh).await.status, 503);
    server.app.hooks.set_fail_writes(false);
}

#[tokio::test]
async fn no_access_token_outlives_its_session() {
    let server = server_with(|config| {
        config.lifetimes.session_ttl = Duration::from_secs(20);
    })
    .await;
    let answer = server
        .client
        .post_json(
            "/auth/login",
            &json!({ "email": "mo@example.com", "password": PASSWORD }),
        )
        .await;
    let access = answer.body["accessToken"].as_str().unwrap();
    let c = claims(access);
    let lifetime = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert!(
        lifetime <= 20,
        "an access token for {lifetime} s of a 20 s session"
    );
    assert_eq!(answer.body["expiresIn"].as_u64().unwrap(), lifetime);
}
