//! The account commands with the real binary: through the admin socket
//! while `serve` runs, and on the file when it does not.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

fn cli(data: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let db = data.join("latchkey.redb").display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data", db.as_str()]);
    all.extend(CHEAP_ARGON2_FLAGS);
    run_cli(&all, stdin)
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn assert_ok(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn login_status(client: &HttpClient, email: &str, password: &str) -> Response {
    client
        .post_json(
            "/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_work_through_the_socket_while_the_server_runs() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    let socket = data.join("latchkey.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    assert_ok(&cli(
        &data,
        &[
            "user",
            "add",
            "--email",
            "Live@Example.com",
            "--name",
            "Live",
            "--role",
            "2",
        ],
        "live-password-1\n",
    ));
    let duplicate = cli(
        &data,
        &[
            "user",
            "add",
            "--email",
            "live@example.com",
            "--name",
            "L",
            "--role",
            "2",
        ],
        "live-password-1\n",
    );
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    let login = login_status(&server.client, "live@example.com", "live-password-1").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let tokens = Tokens::from_body(&login.body);

    let listed = cli(&data, &["user", "list", "--json"], "");
    assert_ok(&listed);
    let line: Value = serde_json::from_str(stdout(&listed).lines().next().unwrap()).unwrap();
    assert_eq!(line["email"], "live@example.com");
    assert_eq!(line["disabled"], false);

    let sessions = cli(
        &data,
        &["session", "list", "--email", "live@example.com", "--json"],
        "",
    );
    assert_ok(&sessions);
    let session: Value = serde_json::from_str(stdout(&sessions).lines().next().unwrap()).unwrap();
    let sid = session["id"].as_str().unwrap().to_string();
    assert_eq!(sid, claims(&tokens.access)["sid"].as_str().unwrap());
    assert_ok(&cli(&data, &["session", "revoke", "--id", &sid], ""));
    server
        .client
        .refresh(&tokens.refresh)
        .await
        .assert_error(401, "session_revoked");
    let unknown = cli(&data, &["session", "revoke", "--id", &sid], "");
    assert_eq!(unknown.status.code(), Some(1));

    assert_ok(&cli(
        &data,
        &["user", "disable", "--email", "live@example.com"],
        "",
    ));
    login_status(&server.client, "live@example.com", "live-password-1")
        .await
        .assert_error(403, "user_disabled");
    assert_ok(&cli(
        &data,
        &["user", "enable", "--email", "live@example.com"],
        "",
    ));
    assert_ok(&cli(
        &data,
        &["user", "passwd", "--email", "live@example.com"],
        "live-password-2\n",
    ));
    login_status(&server.client, "live@example.com", "live-password-1")
        .await
        .assert_error(401, "invalid_credentials");
    let login = login_status(&server.client, "live@example.com", "live-password-2").await;
    assert_eq!(login.status, StatusCode::OK);
    assert_ok(&cli(
        &data,
        &["session", "revoke", "--email", "live@example.com"],
        "",
    ));
    let tokens = Tokens::from_body(&login.body);
    server
        .client
        .profile(&tokens.access)
        .await
        .assert_error(401, "session_revoked");

    let missing = cli(
        &data,
        &["user", "remove", "--email", "nobody@example.com"],
        "",
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user with email"));
    assert_ok(&cli(
        &data,
        &["user", "remove", "--email", "live@example.com"],
        "",
    ));
    login_status(&server.client, "live@example.com", "live-password-2")
        .await
        .assert_error(401, "invalid_credentials");

    // A second server on the same data is refused by the live socket.
    let db = data.join("latchkey.redb").display().to_string();
    let second = run_failing_serve(&db, &["--secret", SECRET]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another latchkey server is running"));
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!socket.exists(), "a clean stop removes the socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_from_a_crashed_server_is_replaced() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    server.kill_hard();
    assert!(
        data.join("latchkey.sock").exists(),
        "kill -9 leaves the socket behind"
    );
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    assert_ok(&cli(
        &data,
        &[
            "user",
            "add",
            "--email",
            "a@example.com",
            "--name",
            "A",
            "--role",
            "1",
        ],
        "a-password-1\n",
    ));
    let login = login_status(&server.client, "a@example.com", "a-password-1").await;
    assert_eq!(login.status, StatusCode::OK);
}

/// What the same commands print with and without a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_answer_the_same_with_and_without_a_server() {
    let (_dir, data) = data_dir();
    assert_ok(&cli(
        &data,
        &[
            "user",
            "add",
            "--email",
            "s@example.com",
            "--name",
            "S",
            "--role",
            "1",
        ],
        "s-password-1\n",
    ));
    let offline = cli(&data, &["user", "list"], "");
    let offline_missing = cli(&data, &["user", "disable", "--email", "x@example.com"], "");
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    let online = cli(&data, &["user", "list"], "");
    let online_missing = cli(&data, &["user", "disable", "--email", "x@example.com"], "");
    assert_eq!(stdout(&offline), stdout(&online));
    assert_eq!(offline_missing.status.code(), online_missing.status.code());
    assert_eq!(offline_missing.stderr, online_missing.stderr);
    drop(server);
}

fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_users_import_log_in_and_are_rehashed_and_export_round_trips() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    let file = data.join("users.jsonl");
    let lines = [
        json!({ "email": "b1@example.com", "name": "B One", "role_id": 1, "password_hash": bcrypt_hash("bcrypt-pass-1") }),
        json!({ "email": "b2@example.com", "name": "B Two", "role_id": 2, "password_hash": bcrypt_hash("bcrypt-pass-2").replacen("$2b$", "$2y$", 1) }),
        json!({ "email": "p@example.com", "name": "Plain", "role_id": 1, "password": "plain-pass-1" }),
        json!({ "email": "off@example.com", "name": "Off", "role_id": 1, "password": "off-pass-1", "disabled": true }),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, &text).unwrap();

    // A bad line stops everything, with its number.
    let bad = data.join("bad.jsonl");
    std::fs::write(&bad, format!("{}{{\"email\":\"x\"}}\nnot json\n", text)).unwrap();
    let refused = cli(&data, &["user", "import", bad.to_str().unwrap()], "");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("line 6"), "{stderr}");
    assert!(
        stdout(&cli(&data, &["user", "list", "--json"], "")).is_empty(),
        "all or nothing"
    );

    assert_ok(&cli(&data, &["user", "import", file.to_str().unwrap()], ""));
    let taken = cli(&data, &["user", "import", file.to_str().unwrap()], "");
    assert_eq!(
        taken.status.code(),
        Some(1),
        "an existing email is a bad line"
    );
    let skipped = cli(
        &data,
        &["user", "import", "--skip-invalid", "-"],
        &format!(
            "{}\n{}\n",
            lines[0],
            json!({ "email": "new@example.com", "name": "N", "role_id": 1, "password": "new-pass-12" })
        ),
    );
    assert_ok(&skipped);
    assert!(stdout(&skipped).contains("imported 1"));

    for (email, password) in [
        ("b1@example.com", "bcrypt-pass-1"),
        ("b2@example.com", "bcrypt-pass-2"),
        ("p@example.com", "plain-pass-1"),
    ] {
        let login = login_status(&server.client, email, password).await;
        assert_eq!(login.status, StatusCode::OK, "{email}: {}", login.text);
    }
    login_status(&server.client, "b1@example.com", "wrong-pass")
        .await
        .assert_error(401, "invalid_credentials");
    login_status(&server.client, "off@example.com", "off-pass-1")
        .await
        .assert_error(403, "user_disabled");

    // The bcrypt hash was replaced by argon2id at the login.
    let mut rehashed = false;
    for _ in 0..50 {
        let exported = stdout(&cli(&data, &["user", "export"], ""));
        let b1 = exported
            .lines()
            .find(|l| l.contains("b1@example.com"))
            .unwrap()
            .to_string();
        if b1.contains("$argon2id$") {
            rehashed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rehashed, "re-hashed at login");
    let export = cli(&data, &["user", "export"], "");
    assert_ok(&export);
    let exported = stdout(&export);
    assert_eq!(exported.lines().count(), 5);
    assert!(exported.contains("\"disabled\":true"));
    drop(server);

    // Into an empty database, with no server: everyone can log in again.
    let (_dir2, empty) = data_dir();
    let file = empty.join("export.jsonl");
    std::fs::write(&file, &exported).unwrap();
    assert_ok(&cli(
        &empty,
        &["user", "import", file.to_str().unwrap()],
        "",
    ));
    let server = ServerProcess::start(&empty, &["--secret", SECRET]);
    for (email, password) in [
        ("b1@example.com", "bcrypt-pass-1"),
        ("b2@example.com", "bcrypt-pass-2"),
        ("p@example.com", "plain-pass-1"),
        ("new@example.com", "new-pass-12"),
    ] {
        let login = login_status(&server.client, email, password).await;
        assert_eq!(login.status, StatusCode::OK, "{email}: {}", login.text);
    }
    login_status(&server.client, "off@example.com", "off-pass-1")
        .await
        .assert_error(403, "user_disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_serves_existing_sessions() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let server = ServerProcess::start(&data, &["--secret", SECRET, "--seed-user", &seed]);
    let client = server.client.clone();
    let kept = login(&client, "ana@example.com", None).await;
    // A refresh load on other sessions while the backup runs.
    let load = tokio::spawn({
        let client = client.clone();
        async move {
            let mut tokens = login(&client, "ana@example.com", None).await;
            let mut rotations = 0;
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            while std::time::Instant::now() < deadline {
                let answer = client.refresh(&tokens.refresh).await;
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
                tokens = Tokens::from_body(&answer.body);
                rotations += 1;
            }
            rotations
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copy = data.join("copy.redb");
    assert_ok(&cli(
        &data,
        &["backup", "--out", copy.to_str().unwrap()],
        "",
    ));
    let rotations = load.await.unwrap();
    assert!(rotations > 10, "{rotations}");
    let again = cli(&data, &["backup", "--out", copy.to_str().unwrap()], "");
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing file is not overwritten"
    );
    drop(server);

    let (_dir2, restored) = data_dir();
    std::fs::copy(&copy, restored.join("latchkey.redb")).unwrap();
    let server = ServerProcess::start(&restored, &["--secret", SECRET]);
    let rotated = server.client.refresh(&kept.refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    assert!(!login(&server.client, "ana@example.com", None)
        .await
        .access
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_admin_socket_is_found_with_the_same_flag() {
    let (_dir, data) = data_dir();
    let socket = data.join("elsewhere.sock");
    let socket = socket.to_str().unwrap();
    let server = ServerProcess::start(&data, &["--secret", SECRET, "--admin-socket", socket]);
    assert!(Path::new(socket).exists());
    assert!(!data.join("latchkey.sock").exists());
    let added = cli(
        &data,
        &[
            "user",
            "add",
            "--email",
            "m@example.com",
            "--name",
            "M",
            "--role",
            "1",
            "--admin-socket",
            socket,
        ],
        "m-password-1\n",
    );
    assert_ok(&added);
    let login = login_status(&server.client, "m@example.com", "m-password-1").await;
    assert_eq!(login.status, StatusCode::OK);
    // Without the flag the command looks beside the database, finds no
    // server there, and the file is held by the running one.
    let missed = cli(&data, &["user", "list"], "");
    assert_eq!(missed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missed.stderr).contains("in use"));
}
