//! The command line, by running the built binary.

use hyper::StatusCode;
use serde_json::json;

use crate::common::*;

fn db_arg(data: &std::path::Path) -> String {
    data.join("latchkey.redb").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_list_remove_round_trip() {
    let (_dir, data) = data_dir();
    let db = db_arg(&data);
    let common = [
        "--data",
        db.as_str(),
        "--argon2-memory",
        "64",
        "--argon2-iterations",
        "1",
    ];
    let add = |email: &str, password: &str| {
        let mut args = vec![
            "user", "add", "--email", email, "--name", "Cli User", "--role", "1",
        ];
        args.extend(common);
        run_cli(&args, password)
    };

    let added = add("Cli@Example.com", "pass: with spaces and colons\n");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let duplicate = add("cli@example.com", "another password\n");
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    let weak = add("weak@example.com", "short\n");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8"));

    let mut args = vec!["user", "list", "--json"];
    args.extend(common);
    let listed = run_cli(&args, "");
    assert!(listed.status.success());
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        stdout.contains("cli@example.com") && !stdout.contains("weak@example.com"),
        "{stdout}"
    );
    assert!(!stdout.contains("argon2"), "no hashes printed");
    let mut args = vec!["user", "list"];
    args.extend(common);
    let table = String::from_utf8_lossy(&run_cli(&args, "").stdout).to_string();
    assert!(
        table.contains("cli@example.com") && !table.contains("argon2"),
        "{table}"
    );

    // The password is the line without its newline; the server accepts it.
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    let login = json!({ "email": "cli@example.com", "password": "pass: with spaces and colons" });
    let response = server.client.post_json("/auth/login", &login).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let tokens = Tokens::from_body(&response.body);
    assert_eq!(server.terminate().code(), Some(0));

    let mut args = vec!["user", "remove", "--email", "CLI@example.com"];
    args.extend(common);
    let removed = run_cli(&args, "");
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let again = run_cli(&args, "");
    assert!(!again.status.success());

    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    server
        .client
        .refresh(&tokens.refresh)
        .await
        .assert_error(404, "user_not_found");
    server
        .client
        .profile(&tokens.access)
        .await
        .assert_error(401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_fail_clearly_while_a_server_without_its_socket_holds_the_database() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET, "--no-admin-socket"]);
    let db = db_arg(&data);
    let started = std::time::Instant::now();
    let listed = run_cli(&["user", "list", "--data", &db], "");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "must not hang"
    );
    assert_eq!(listed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(
        stderr.contains("in use by another process") && stderr.contains("Stop that process"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_or_unreadable_secrets_are_refused_at_start() {
    let (_dir, data) = data_dir();
    let db = db_arg(&data);
    let short = run_failing_serve(&db, &["--secret", "too-short"]);
    assert_eq!(short.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    assert!(
        !stderr.contains("too-short"),
        "the secret is never printed: {stderr}"
    );

    let file = data.join("short.secret");
    std::fs::write(&file, "0123456789\n").unwrap();
    let from_file = run_failing_serve(&db, &["--secret-file", file.to_str().unwrap()]);
    assert_eq!(from_file.status.code(), Some(1));

    let missing = run_failing_serve(&db, &["--secret-file", "/nonexistent/secret"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));

    let bad_duration = run_failing_serve(&db, &["--access-ttl", "1w"]);
    assert_eq!(bad_duration.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_duration.stderr).contains("1w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_and_seed_users_and_environment_variables() {
    let (_dir, data) = data_dir();
    let secret_file = data.join("jwt.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let seed = format!("env@example.com:2:Env User:{PASSWORD}");
    let server = ServerProcess::start_with_env(
        &data,
        &[
            "--seed-user",
            &format!("flag@example.com:1:Flag User:{PASSWORD}"),
        ],
        &[
            ("LATCHKEY_SECRET_FILE", secret_file.to_str().unwrap()),
            ("LATCHKEY_ACCESS_TTL", "2m"),
            ("LATCHKEY_REFRESH_TTL", "1d"),
            ("LATCHKEY_TYPE_ROLE", "web=2+1,kiosk=9"),
            ("LATCHKEY_SEED_USER", &seed),
        ],
    );
    // The flag wins over the environment for --seed-user; both are documented.
    let flagged = login(&server.client, "flag@example.com", Some("web")).await;
    let response = server.client.refresh(&flagged.refresh).await;
    assert_eq!(response.body["expiresIn"], 120);
    let refresh_claims = claims(&Tokens::from_body(&response.body).refresh);
    assert_eq!(
        refresh_claims["exp"].as_u64().unwrap() - refresh_claims["iat"].as_u64().unwrap(),
        86_400
    );
    let kiosk = json!({ "email": "flag@example.com", "password": PASSWORD, "type": "kiosk" });
    server
        .client
        .post_json("/auth/login", &kiosk)
        .await
        .assert_error(403, "role_not_allowed");
    let mobile = json!({ "email": "flag@example.com", "password": PASSWORD, "type": "mobile" });
    server
        .client
        .post_json("/auth/login", &mobile)
        .await
        .assert_error(400, "invalid_request");

    // Tokens are signed with the file's secret (without its newline).
    use latchkey::tokens::TokenType;
    let keys = test_keys();
    assert!(keys
        .verify(
            &flagged.access,
            TokenType::Access,
            latchkey::clock::system_millis() / 1000
        )
        .is_ok());
    drop(server);

    let (_dir2, data2) = data_dir();
    let server = ServerProcess::start_with_env(
        &data2,
        &[],
        &[("LATCHKEY_SECRET", SECRET), ("LATCHKEY_SEED_USER", &seed)],
    );
    login(&server.client, "env@example.com", Some("web")).await;
}
