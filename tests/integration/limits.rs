//! Hardening, round 2: bounded header memory, the `exp` boundary, injected
//! panics that poison nothing, refreshes that change nothing and touch no
//! disk, the authority a global logout needs, the per-user session cap,
//! and secrets kept off the command line.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use latchkey::session::{IssuedRefresh, SessionId, TokenId};
use latchkey::test_hooks::PanicPoint;
use latchkey::tokens::Profile;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A head of `bytes` bytes, without its final blank line: the request line
/// and header lines of 1 KiB (few enough to stay under the header count limit).
fn big_head(bytes: usize) -> Vec<u8> {
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: x\r\n".to_vec();
    let mut n = 0;
    while head.len() + 2 < bytes {
        let room = bytes - head.len() - 2;
        let value = "a".repeat(room.min(1024).saturating_sub(16).max(1));
        head.extend_from_slice(format!("x-filler-{n}: {value}\r\n").as_bytes());
        n += 1;
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_16_kib_is_refused() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET]);
    let address = server
        .client
        .base()
        .trim_start_matches("http://")
        .to_string();

    let mut fits = big_head(15 * 1024);
    fits.extend_from_slice(b"\r\n");
    assert!(
        fits.len() > 14 * 1024 && fits.len() <= 15 * 1024 + 64,
        "{}",
        fits.len()
    );
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(&fits).await.unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    // A larger head is answered (431) and closed at once, long before the
    // header timeout (10 s) would end it.
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let _ = stream.write_all(&big_head(64 * 1024)).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "a 64 KiB head: {text:?}");
}

/// 1,000 connections each sending as many header bytes as they are allowed
/// (and never finishing the head), within the header timeout: the server's
/// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_sending_maximal_heads_keep_rss_under_100_mib() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET, "--header-timeout", "60s"]);
    let address = server
        .client
        .base()
        .trim_start_matches("http://")
        .to_string();
    let pid = server.child.id();
    let before = rss_kib(pid);
    let head = big_head(16 * 1024 - 64);
    assert!(head.len() > 15 * 1024);
    let mut open = Vec::new();
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        // Never the final blank line: the head stays incomplete.
        stream.write_all(&head).await.unwrap();
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid);
    eprintln!("header flood: RSS {before} KiB before, {during} KiB with 1,000 connections holding 16 KiB heads");
    assert!(during < 100 * 1024, "RSS {during} KiB");
    // The server still answers.
    assert_eq!(server.client.healthz().await.status, StatusCode::OK);
    drop(open);

    // Clients that try to send more (400 KiB heads, which took 452 MB for
    // 1,000 connections before the limit) are cut off at the limit.
    let oversized = std::sync::Arc::new(big_head(400 * 1024));
    let senders: Vec<_> = (0..1000)
        .map(|_| {
            let (address, head) = (address.clone(), std::sync::Arc::clone(&oversized));
            tokio::spawn(async move {
                let Ok(mut stream) = TcpStream::connect(&address).await else {
                    return;
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), stream.write_all(&head)).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            })
        })
        .collect();
    let mut peak = 0;
    while senders.iter().any(|s| !s.is_finished()) {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("oversized heads: peak RSS {peak} KiB with 1,000 connections sending 400 KiB heads");
    assert!(peak < 100 * 1024, "RSS {peak} KiB");
}

fn now_secs() -> u64 {
    latchkey::clock::system_millis() / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_from_its_exp_second_on() {
    let server = TestServer::start().await;
    let tokens = server.login("ana@example.com", None).await;
    let sid = SessionId::from_hex(claims(&tokens.access)["sid"].as_str().unwrap()).unwrap();
    let keys = test_keys();
    let profile = Profile {
        id: "1".into(),
        email: "ana@example.com".into(),
        name: "Ana Admin".into(),
        role_id: 2,
    };
    // Issued so that `exp` is this very second.
    let now = now_secs();
    let at_exp = keys
        .access_token(profile.clone(), sid, now - 10, 10)
        .unwrap();
    server
        .client
        .profile(&at_exp)
        .await
        .assert_error(401, "token_expired");
    let later = keys.access_token(profile, sid, now, 30).unwrap();
    assert_eq!(server.client.profile(&later).await.status, StatusCode::OK);

    let refresh = keys
        .refresh_token(
            1,
            sid,
            &IssuedRefresh {
                jti: TokenId::generate(),
                issued_at: now - 10,
                expires_at: now_secs(),
            },
        )
        .unwrap();
    server
        .client
        .refresh(&refresh)
        .await
        .assert_error(401, "token_expired");
}

/// A 500 says only that it is one, and the id its cause was logged under.
fn assert_internal_error(response: &Response) {
    assert_eq!(response.status.as_u16(), 500, "{}", response.text);
    assert_eq!(response.error_code(), "internal_error");
    let incident = response.body["incidentId"].as_str().unwrap_or_default();
    assert_eq!(incident.len(), 12, "{}", response.text);
    assert_eq!(
        response.body.as_object().unwrap().len(),
        3,
        "{}",
        response.text
    );
}

async fn login_and_refresh_work(server: &TestServer) {
    let tokens = server.login("ana@example.com", None).await;
    let rotated = server.client.refresh(&tokens.refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_holding_the_throttle_lock_disables_nothing() {
    let server = TestServer::start().await;
    server.app.hooks.arm_panic(PanicPoint::ThrottleLock);
    let body = json!({ "email": "mo@example.com", "password": PASSWORD });
    assert_internal_error(&server.client.post_json("/auth/login", &body).await);
    login_and_refresh_work(&server).await;
    server.login("mo@example.com", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashing_worker_that_panics_is_replaced_and_frees_its_place() {
    // One worker and one queue place: a worker or place lost would stop every login.
    let server = TestServer::start_with(|c| {
        c.hash_workers = 1;
        c.hash_queue = 1;
    })
    .await;
    server.app.hooks.arm_panic(PanicPoint::HashWorker);
    let body = json!({ "email": "ana@example.com", "password": PASSWORD });
    assert_internal_error(&server.client.post_json("/auth/login", &body).await);
    for _ in 0..3 {
        login_and_refresh_work(&server).await;
    }
}

/// Arms a panic at `point` on the write path, then: the refresh that hits
/// it gets 503, nothing of its batch was kept (the same token rotates
/// now), and logins, refreshes and reads go on.
async fn a_write_path_panic_fails_one_batch(point: PanicPoint) {
    let server = TestServer::start().await;
    let tokens = server.login("ana@example.com", None).await;
    server.app.hooks.arm_panic(point);
    server
        .client
        .refresh(&tokens.refresh)
        .await
        .assert_error(503, "unavailable");
    let rotated = server.client.refresh(&tokens.refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    login_and_refresh_work(&server).await;
    let next = Tokens::from_body(&rotated.body);
    assert_eq!(
        server.client.profile(&next.access).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_fails_its_batch_with_503_and_serves_the_next() {
    a_write_path_panic_fails_one_batch(PanicPoint::Writer).await;
}

/// A panic inside redb's own commit (while it writes the file) leaves its
/// handle unusable: the writer reopens the file with a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_the_commit_is_survived_with_a_fresh_handle() {
    a_write_path_panic_fails_one_batch(PanicPoint::FileWrite).await;
}

fn file_state(path: &std::path::Path) -> (SystemTime, Vec<u8>) {
    (
        std::fs::metadata(path).unwrap().modified().unwrap(),
        std::fs::read(path).unwrap(),
    )
}

/// Refreshes and logouts whose answer changes nothing (a revoked session, an
/// unknown session, a replay within the grace window) do not write: after a
/// flood of them the database file is untouched. The first
/// reuse of a rotated token still commits its revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_dead_tokens_does_not_touch_the_disk() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let server = ServerProcess::start(
        &data,
        &[
            "--secret",
            SECRET,
            "--seed-user",
            &seed,
            "--sweep-interval",
            "1h",
            "--reuse-grace",
            "60s",
        ],
    );
    let client = &server.client;
    let db = data.join("latchkey.redb");
    let revoked = login(client, "ana@example.com", None).await;
    assert_eq!(
        client.logout(&revoked.refresh, None).await.status,
        StatusCode::NO_CONTENT
    );
    let live = login(client, "ana@example.com", None).await;
    let rotated = Tokens::from_body(&client.refresh(&live.refresh).await.body);
    let unknown = test_keys()
        .refresh_token(
            1,
            SessionId::generate(latchkey::clock::system_millis()),
            &IssuedRefresh {
                jti: TokenId::generate(),
                issued_at: now_secs(),
                expires_at: now_secs() + 600,
            },
        )
        .unwrap();

    let before = file_state(&db);
    std::thread::sleep(Duration::from_millis(20)); // a write now would show in the mtime
    for _ in 0..200 {
        client
            .refresh(&revoked.refresh)
            .await
            .assert_error(401, "session_revoked");
        client
            .refresh(&unknown)
            .await
            .assert_error(401, "invalid_token");
        let replay = client.refresh(&live.refresh).await; // within the grace window
        assert_eq!(replay.status, StatusCode::OK);
        assert_eq!(replay.body["refreshToken"], rotated.refresh.as_str());
        let logout = client.logout(&revoked.refresh, None).await;
        assert_eq!(logout.status, StatusCode::NO_CONTENT);
        client
            .logout(&revoked.refresh, Some("global"))
            .await
            .assert_error(401, "session_revoked");
    }
    assert!(before == file_state(&db), "the database file changed");

    // A real change still writes, before it answers.
    client.refresh(&rotated.refresh).await;
    assert!(before.0 != file_state(&db).0, "a rotation must write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_cannot_log_out_everywhere() {
    let server = TestServer::start_with(|c| c.lifetimes.reuse_grace = Duration::ZERO).await;
    let client = &server.client;
    let phone = server.login("ana@example.com", None).await;
    let laptop = server.login("ana@example.com", None).await;
    let old = phone.refresh.clone();
    let current = Tokens::from_body(&client.refresh(&phone.refresh).await.body);

    // The old token, leaked from a backup: refresh's answer, and only its own session ends.
    client
        .logout(&old, Some("global"))
        .await
        .assert_error(401, "token_reused");
    client
        .refresh(&current.refresh)
        .await
        .assert_error(401, "session_revoked");
    let laptop = Tokens::from_body(&client.refresh(&laptop.refresh).await.body);
    assert_eq!(client.profile(&laptop.access).await.status, StatusCode::OK);
    // A revoked session's token: the same.
    client
        .logout(&current.refresh, Some("global"))
        .await
        .assert_error(401, "session_revoked");
    assert_eq!(client.profile(&laptop.access).await.status, StatusCode::OK);

    // A current token may.
    let tablet = server.login("ana@example.com", None).await;
    assert_eq!(
        client.logout(&tablet.refresh, Some("global")).await.status,
        StatusCode::NO_CONTENT
    );
    client
        .refresh(&laptop.refresh)
        .await
        .assert_error(401, "session_revoked");
    client
        .profile(&laptop.access)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_logout_within_the_grace_window_is_allowed() {
    let server = TestServer::start().await;
    let client = &server.client;
    let phone = server.login("ana@example.com", None).await;
    let laptop = server.login("ana@example.com", None).await;
    client.refresh(&phone.refresh).await;
    assert_eq!(
        client.logout(&phone.refresh, Some("global")).await.status,
        StatusCode::NO_CONTENT
    );
    client
        .refresh(&laptop.refresh)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_past_the_session_cap_revokes_the_oldest_session() {
    let server = TestServer::start_with(|c| c.max_sessions_per_user = 3).await;
    let client = &server.client;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(server.login("ana@example.com", None).await);
    }
    let other_user = server.login("mo@example.com", None).await;
    let newest = server.login("ana@example.com", None).await;
    client
        .refresh(&sessions[0].refresh)
        .await
        .assert_error(401, "session_revoked");
    client
        .profile(&sessions[0].access)
        .await
        .assert_error(401, "session_revoked");
    for tokens in sessions[1..].iter().chain([&newest, &other_user]) {
        assert_eq!(client.profile(&tokens.access).await.status, StatusCode::OK);
    }
    // Logging in and out many times keeps what is stored per user bounded.
    for _ in 0..20 {
        let tokens = server.login("ana@example.com", None).await;
        client.logout(&tokens.refresh, None).await;
    }
    let live = server.login("ana@example.com", None).await;
    assert_eq!(client.profile(&live.access).await.status, StatusCode::OK);
}

#[test]
fn seed_users_come_from_a_private_file_and_the_secret_from_the_environment() {
    let (_dir, data) = data_dir();
    let file = data.join("seed-users");
    std::fs::write(
        &file,
        format!(
            "# staff\nbo@example.com:1:Bo:{PASSWORD}\n\ncy@example.com:2:Cy:pass:with:colons\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = data.join("latchkey.redb");
    let refused = run_failing_serve(
        db.to_str().unwrap(),
        &[
            "--secret",
            SECRET,
            "--seed-users-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("accessible to other users"));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file_arg = file.to_str().unwrap().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = ServerProcess::start_with_env(
        &data,
        &["--seed-users-file", &file_arg],
        &[("LATCHKEY_SECRET", SECRET)],
    );
    runtime.block_on(async {
        let bo = login(&server.client, "bo@example.com", None).await;
        // Signed with the secret from the environment.
        let keys = test_keys();
        assert!(keys
            .verify(&bo.access, latchkey::tokens::TokenType::Access, now_secs())
            .is_ok());
        let cy = json!({ "email": "cy@example.com", "password": "pass:with:colons" });
        assert_eq!(
            server.client.post_json("/auth/login", &cy).await.status,
            StatusCode::OK
        );
    });
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains(PASSWORD) && !log.contains(SECRET));
}
