//! Several `latchkey serve` processes on one PostgreSQL database (run when
//! `LATCHKEY_TEST_DATABASE_URL` is set; each test gets a schema of its own).

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::common::*;

const SEED: &str = "mo@example.com:1:Mo:correct horse battery";
const VERIFIER_KEY: &str = "a-verifier-key-for-the-instance-tests-0123456";

/// A database URL whose `search_path` is a new, empty schema; `None` (and
/// a line on stderr that the harness does not swallow) without
/// `LATCHKEY_TEST_DATABASE_URL`.
async fn fresh_database() -> Option<String> {
    let Ok(url) = std::env::var("LATCHKEY_TEST_DATABASE_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the several-instances tests need LATCHKEY_TEST_DATABASE_URL (a PostgreSQL database)"
        );
        return None;
    };
    let mut name = [0u8; 8];
    getrandom_fill(&mut name);
    let schema = format!(
        "i{}",
        name.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let status = std::process::Command::new("psql")
        .arg(&url)
        .args(["-qc", &format!("CREATE SCHEMA {schema}")])
        .status()
        .expect("psql");
    assert!(status.success(), "could not create a schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{separator}options=-csearch_path%3D{schema}"))
}

fn getrandom_fill(bytes: &mut [u8]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mixed = nanos ^ u128::from(std::process::id()) << 64;
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (mixed >> (i * 8)) as u8 ^ (i as u8).wrapping_mul(31);
    }
}

/// Two instances on `database`, each with its own data folder.
fn two_instances(database: &str, extra: &[&str]) -> (Vec<ServerProcess>, Vec<tempfile::TempDir>) {
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let (dir, data) = data_dir();
        let key = data.join("verifier.key");
        std::fs::write(&key, VERIFIER_KEY).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = key.display().to_string();
        let mut args = vec![
            "--database",
            database,
            "--secret",
            SECRET,
            "--seed-user",
            SEED,
            "--verifier-key-file",
            &key,
            "--no-admin-socket",
        ];
        args.extend(extra);
        servers.push(ServerProcess::start(&data, &args));
        dirs.push(dir);
    }
    (servers, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_token_presented_to_two_instances_at_once_rotates_once() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(&database, &["--reuse-grace", "10s"]);
    let (a, b) = (&servers[0].client, &servers[1].client);
    for _ in 0..20 {
        let tokens = login(a, "mo@example.com", None).await;
        let (one, two) = tokio::join!(a.refresh(&tokens.refresh), b.refresh(&tokens.refresh));
        // One rotation; the other is the grace replay: the same new token.
        assert_eq!(
            (one.status.as_u16(), two.status.as_u16()),
            (200, 200),
            "{} / {}",
            one.text,
            two.text
        );
        assert_eq!(one.body["refreshToken"], two.body["refreshToken"]);
        let next = one.body["refreshToken"].as_str().unwrap();
        assert_eq!(b.refresh(next).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_on_one_instance_revokes_the_session_on_both() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(&database, &["--reuse-grace", "0"]);
    let (a, b) = (&servers[0].client, &servers[1].client);
    for _ in 0..10 {
        let tokens = login(a, "mo@example.com", None).await;
        let (one, two) = tokio::join!(a.refresh(&tokens.refresh), b.refresh(&tokens.refresh));
        let mut statuses = [one.status.as_u16(), two.status.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 401], "{} / {}", one.text, two.text);
        let winner = if one.status == 200 { &one } else { &two };
        let access = winner.body["accessToken"].as_str().unwrap();
        for client in [a, b] {
            client
                .profile(access)
                .await
                .assert_error(401, "session_revoked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_is_seen_by_the_other_at_once_and_in_its_feed() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(&database, &[]);
    let (a, b) = (&servers[0].client, &servers[1].client);
    let cursor = b
        .send(
            Method::GET,
            "/oauth/revocations",
            &[("authorization", &format!("Bearer {VERIFIER_KEY}"))],
            Bytes::new(),
        )
        .await
        .body["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens = login(a, "mo@example.com", None).await;
    let everywhere = login(b, "mo@example.com", None).await;
    assert_eq!(b.profile(&tokens.access).await.status, 200);
    // A long poll on B, woken by a logout on A.
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            b.send(
                Method::GET,
                &format!("/oauth/revocations?after={cursor}&wait=20"),
                &[("authorization", &format!("Bearer {VERIFIER_KEY}"))],
                Bytes::new(),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged_out = Instant::now();
    a.logout(&tokens.refresh, None).await;
    b.profile(&tokens.access)
        .await
        .assert_error(401, "session_revoked");
    let answer = waiting.await.unwrap();
    assert!(
        logged_out.elapsed() < Duration::from_secs(1),
        "woke after {:?}",
        logged_out.elapsed()
    );
    let sids: Vec<&Value> = answer.body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["sid"])
        .collect();
    assert_eq!(sids, vec![&claims(&tokens.access)["sid"]]);
    // A global logout on B reaches A.
    b.logout(&everywhere.refresh, Some("global")).await;
    a.profile(&everywhere.access)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_instance_under_load_loses_no_acknowledged_token() {
    let Some(database) = fresh_database().await else {
        return;
    };
    // The default grace window: a rotation A committed but never answered
    // leaves the chain's last acknowledged token valid once more at B.
    let (mut servers, _dirs) = two_instances(&database, &[]);
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let mut chains = Vec::new();
    for _ in 0..8 {
        chains.push(login(&a.client, "mo@example.com", None).await.refresh);
    }
    // Refresh chains on A; A dies mid-way; every chain goes on at B from
    // the last token A acknowledged.
    let client = a.client.clone();
    let load = tokio::spawn(async move {
        let mut acknowledged = chains;
        let deadline = Instant::now() + Duration::from_secs(5);
        'outer: while Instant::now() < deadline {
            for token in acknowledged.iter_mut() {
                match client.try_refresh(token).await {
                    Ok(answer) if answer.status == 200 => {
                        *token = answer.body["refreshToken"].as_str().unwrap().to_string();
                    }
                    _ => break 'outer,
                }
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill_hard();
    let acknowledged = load.await.unwrap();
    for token in &acknowledged {
        let answer = b.client.refresh(token).await;
        assert_eq!(
            answer.status, 200,
            "an acknowledged token was lost: {}",
            answer.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_from_redb_to_postgresql_and_back_logs_nobody_out() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (_dir, data) = data_dir();
    let file = data.join("latchkey.redb").display().to_string();
    let server = ServerProcess::start(
        &data,
        &[
            "--secret",
            SECRET,
            "--seed-user",
            SEED,
            "--signing-alg",
            "EdDSA",
        ],
    );
    let before = login(&server.client, "mo@example.com", None).await;
    let spare = login(&server.client, "mo@example.com", None).await;
    server.client.logout(&spare.refresh, None).await;
    assert_eq!(server.terminate().code(), Some(0));

    let copied = run_cli(&["store", "copy", "--from", &file, "--to", &database], "");
    assert!(copied.status.success(), "{copied:?}");
    let again = run_cli(&["store", "copy", "--from", &file, "--to", &database], "");
    assert!(!again.status.success(), "a non-empty target is refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--replace"),
        "{again:?}"
    );
    // Told to, it replaces what the target holds: a user made there since
    // is gone, and the copy is whole again.
    let made = run_cli(
        &[
            "--database",
            &database,
            "user",
            "add",
            "--email",
            "gone@example.com",
            "--name",
            "Gone",
            "--role",
            "1",
        ],
        "another long password\n",
    );
    assert!(made.status.success(), "{made:?}");
    let replaced = run_cli(
        &[
            "store",
            "copy",
            "--from",
            &file,
            "--to",
            &database,
            "--replace",
        ],
        "",
    );
    assert!(replaced.status.success(), "{replaced:?}");
    let listed = run_cli(&["--database", &database, "user", "list"], "");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("mo@example.com") && !listed.contains("gone@example.com"),
        "{listed}"
    );
    // A mistyped source is refused, and created nowhere; the target keeps
    // what it holds.
    let typo = data.join("typo.redb").display().to_string();
    let mistyped = run_cli(
        &[
            "store",
            "copy",
            "--from",
            &typo,
            "--to",
            &database,
            "--replace",
        ],
        "",
    );
    assert!(!mistyped.status.success(), "{mistyped:?}");
    assert!(!std::path::Path::new(&typo).exists());
    let listed = run_cli(&["--database", &database, "user", "list"], "");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("mo@example.com"));
    let onto_itself = run_cli(
        &[
            "store",
            "copy",
            "--from",
            &database,
            "--to",
            &database,
            "--replace",
        ],
        "",
    );
    assert!(!onto_itself.status.success(), "{onto_itself:?}");
    assert!(
        String::from_utf8_lossy(&onto_itself.stderr).contains("same store"),
        "{onto_itself:?}"
    );

    let (_pg_dir, pg_data) = data_dir();
    let server = ServerProcess::start(
        &pg_data,
        &[
            "--database",
            &database,
            "--secret",
            SECRET,
            "--signing-alg",
            "EdDSA",
            "--no-admin-socket",
        ],
    );
    // The access token (signed with the copied key) and the refresh token work.
    assert_eq!(server.client.profile(&before.access).await.status, 200);
    let moved = server.client.refresh(&before.refresh).await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    server
        .client
        .profile(&spare.access)
        .await
        .assert_error(401, "session_revoked");
    let next = Tokens::from_body(&moved.body);
    assert_eq!(server.terminate().code(), Some(0));

    // And back, into a new file.
    let (_back_dir, back) = data_dir();
    let back_file = back.join("latchkey.redb").display().to_string();
    let copied = run_cli(
        &["store", "copy", "--from", &database, "--to", &back_file],
        "",
    );
    assert!(copied.status.success(), "{copied:?}");
    let server = ServerProcess::start(&back, &["--secret", SECRET, "--signing-alg", "EdDSA"]);
    assert_eq!(server.client.refresh(&next.refresh).await.status, 200);
    let new_user = server
        .client
        .post_json(
            "/auth/login",
            &serde_json::json!({ "email": "mo@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(new_user.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_spread_over_two_instances_share_one_account_budget() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(&database, &["--throttle-base-delay", "30s"]);
    let mut statuses = Vec::new();
    for n in 0..12 {
        let client = &servers[n % 2].client;
        let answer = client
            .post_json(
                "/auth/login",
                &serde_json::json!({ "email": "mo@example.com", "password": format!("wrong guess {n}") }),
            )
            .await;
        statuses.push(answer.status.as_u16());
    }
    // Five failed checks in all (the account budget), not five per instance.
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // On both instances, even with the right password, until the block ends.
    for server in &servers {
        let answer = server
            .client
            .post_json(
                "/auth/login",
                &serde_json::json!({ "email": "mo@example.com", "password": PASSWORD }),
            )
            .await;
        answer.assert_error(429, "rate_limited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_one_address_spread_over_two_instances_share_one_address_budget() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(
        &database,
        &[
            "--throttle-address-failures",
            "6",
            "--throttle-base-delay",
            "30s",
        ],
    );
    let mut statuses = Vec::new();
    // A new email every time: only the address budget can stop them.
    for n in 0..10 {
        let answer = servers[n % 2]
            .client
            .post_json(
                "/auth/login",
                &serde_json::json!({ "email": format!("guess{n}@example.com"), "password": "wrong guess" }),
            )
            .await;
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses[..6], [401; 6], "{statuses:?}");
    assert!(statuses[6..].iter().all(|s| *s == 429), "{statuses:?}");
    // The address is blocked on both instances, whatever the account.
    for server in &servers {
        let answer = server
            .client
            .post_json(
                "/auth/login",
                &serde_json::json!({ "email": "mo@example.com", "password": PASSWORD }),
            )
            .await;
        answer.assert_error(429, "rate_limited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_parallel_guesses_on_two_instances_gets_one_budget_of_checks() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(&database, &["--throttle-base-delay", "30s"]);
    // An account whose hash has the default (slow) costs, so that the
    // checks overlap: the imported password is hashed with them.
    let imported = run_cli(
        &["--database", &database, "user", "import", "-"],
        r#"{"email":"slow@example.com","name":"Slow","role_id":1,"password":"correct horse battery"}"#,
    );
    assert!(imported.status.success(), "{imported:?}");
    // 40 guesses at once, 20 on each instance: running attempts count, so
    // no more than the account's five are checked in all.
    let guesses = (0..40).map(|n| {
        let client = servers[n % 2].client.clone();
        tokio::spawn(async move {
            client
                .post_json(
                    "/auth/login",
                    &serde_json::json!({ "email": "slow@example.com", "password": format!("wrong guess {n}") }),
                )
                .await
                .status
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for guess in guesses.collect::<Vec<_>>() {
        statuses.push(guess.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(checked, 5, "{statuses:?}");
}

/// The server's certificate and one DNS name it is valid for, when the
/// test database speaks TLS (Debian's clusters do, with a snakeoil
/// certificate).
fn database_certificate(url: &str) -> Option<(String, String)> {
    let show = |setting: &str| {
        let out = std::process::Command::new("psql")
            .arg(url)
            .args(["-tAc", &format!("SHOW {setting}")])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if show("ssl")? != "on" {
        return None;
    }
    let file = show("ssl_cert_file")?;
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", &file])
        .output()
        .ok()?;
    let names = String::from_utf8_lossy(&out.stdout).to_string();
    let name = names
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|part| part.strip_prefix("DNS:"))?
        .to_string();
    Some((file, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_verifies_the_server_certificate() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let Some((certificate, name)) = database_certificate(&database) else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the test database does not speak TLS with a certificate openssl can read"
        );
        return;
    };
    // The URL's host is 127.0.0.1, not a name the certificate is valid for:
    // refused, even though the server offers TLS.
    let wrong_name = format!("{database}&sslmode=require");
    let refused = run_cli(
        &[
            "migrate",
            "--database",
            &wrong_name,
            "--database-ca-file",
            &certificate,
        ],
        "",
    );
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("certificate"),
        "{refused:?}"
    );
    // By its name (connecting to 127.0.0.1), trusting its certificate: a
    // server that logs in over TLS.
    let by_name = database.replacen("@127.0.0.1:", &format!("@{name}:"), 1)
        + "&hostaddr=127.0.0.1&application_name=latchkey_tls_test";
    let (dir, data) = data_dir();
    let server = ServerProcess::start(
        &data,
        &[
            "--database",
            &by_name,
            "--database-ca-file",
            &certificate,
            "--secret",
            SECRET,
            "--seed-user",
            SEED,
            "--no-admin-socket",
        ],
    );
    login(&server.client, "mo@example.com", None).await;
    let encrypted = std::process::Command::new("psql")
        .arg(&database)
        .args([
            "-tAc",
            "SELECT count(*) FILTER (WHERE ssl), count(*) FROM pg_stat_ssl \
             JOIN pg_stat_activity USING (pid) WHERE application_name = 'latchkey_tls_test'",
        ])
        .output()
        .unwrap();
    let counts = String::from_utf8_lossy(&encrypted.stdout)
        .trim()
        .to_string();
    let (tls, all) = counts.split_once('|').expect("two counts");
    assert!(
        all != "0" && tls == all,
        "connections with TLS | all: {counts}"
    );
    drop(server);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_at_once_on_one_instance_verifies_on_the_other_at_once() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (dir, data) = data_dir();
    let admin_key = data.join("admin.key");
    std::fs::write(&admin_key, VERIFIER_KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&admin_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin_key = admin_key.display().to_string();
    let (servers, _dirs) = two_instances(
        &database,
        &["--signing-alg", "EdDSA", "--admin-key-file", &admin_key],
    );
    let kid = |token: &str| -> String {
        use base64::Engine;
        let header = token.split('.').next().unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<Value>(&header).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = login(&servers[0].client, "mo@example.com", None).await;
    let bearer = format!("Bearer {VERIFIER_KEY}");
    let rotated = servers[0]
        .client
        .send(
            Method::POST,
            "/admin/keys/rotate",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            Bytes::from(r#"{"now":true}"#),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let after = login(&servers[0].client, "mo@example.com", None).await;
    assert_ne!(
        kid(&before.access),
        kid(&after.access),
        "signs with the new key"
    );
    // The other instance has not reloaded yet (every 5 s): the unknown kid
    // makes it reload at once.
    assert_eq!(servers[1].client.profile(&after.access).await.status, 200);
    assert_eq!(servers[1].client.profile(&before.access).await.status, 200);
    // Made-up kids are refused, and cost at most a reload a second.
    let forged = format!(
        "{}.{}",
        base64_url(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"made-up"}"#),
        after.access.split_once('.').unwrap().1
    );
    for _ in 0..20 {
        servers[1]
            .client
            .profile(&forged)
            .await
            .assert_error(401, "invalid_token");
    }
    drop(dir);
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_from_one_address_spread_over_two_instances_share_one_limit() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(
        &database,
        &["--registration", "open", "--registration-limit", "3"],
    );
    let mut statuses = Vec::new();
    for n in 0..6 {
        let answer = servers[n % 2]
            .client
            .post_json(
                "/auth/register",
                &serde_json::json!({ "email": format!("new{n}@example.com"), "password": "a-good-password", "name": "New" }),
            )
            .await;
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(
        statuses,
        [201, 201, 201, 429, 429, 429],
        "three in all, not three each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_flag_the_instances_share_the_secret_kept_in_the_database() {
    let Some(database) = fresh_database().await else {
        return;
    };
    // A server on a redb file with its generated secret, then moved.
    let (_dir, data) = data_dir();
    let file = data.join("latchkey.redb").display().to_string();
    let server = ServerProcess::start(&data, &["--seed-user", SEED]);
    let before = login(&server.client, "mo@example.com", None).await;
    assert_eq!(server.terminate().code(), Some(0));
    let copied = run_cli(&["store", "copy", "--from", &file, "--to", &database], "");
    assert!(copied.status.success(), "{copied:?}");
    assert!(
        String::from_utf8_lossy(&copied.stdout).contains("signing secret"),
        "{copied:?}"
    );
    // Two instances started without --secret: the copied secret, shared.
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let (dir, data) = data_dir();
        servers.push(ServerProcess::start(
            &data,
            &["--database", &database, "--no-admin-socket"],
        ));
        dirs.push(dir);
    }
    let moved = servers[1].client.refresh(&before.refresh).await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    let fresh = login(&servers[0].client, "mo@example.com", None).await;
    let across = servers[1].client.refresh(&fresh.refresh).await;
    assert_eq!(across.status, 200, "{}", across.text);
    assert_eq!(servers[1].client.profile(&fresh.access).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_the_secret_file_of_the_others_is_refused() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (servers, _dirs) = two_instances(&database, &[]);
    login(&servers[0].client, "mo@example.com", None).await;
    // Their sessions were signed with --secret: a new secret in the
    // database would split the instances and log everybody out.
    let (_dir, data) = data_dir();
    let db = data.join("latchkey.redb").display().to_string();
    let refused = run_failing_serve(&db, &["--database", &database, "--no-admin-socket"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("holds sessions but no signing secret"),
        "{refused:?}"
    );
}
