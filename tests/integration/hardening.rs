//! Hostile clients: brute force, floods, slow and malformed requests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use latchkey::throttle::ThrottlePolicy;

fn quick_throttle(account: u32, address: u32) -> Option<ThrottlePolicy> {
    Some(ThrottlePolicy {
        account_free_failures: account,
        address_free_failures: address,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        ..ThrottlePolicy::default()
    })
}

fn wrong_password(email: &str) -> serde_json::Value {
    json!({ "email": email, "password": "a wrong guess" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_back_off_per_account_with_retry_after() {
    let server = TestServer::start_with(|c| c.throttle = quick_throttle(3, 100)).await;
    let client = &server.client;
    // Three checks may fail; then the account is blocked before any hashing.
    for _ in 0..3 {
        client
            .post_json("/auth/login", &wrong_password("ana@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    // Even the right password waits now.
    let right = json!({ "email": "ANA@example.com ", "password": PASSWORD });
    let limited = client.post_json("/auth/login", &right).await;
    limited.assert_error(429, "rate_limited");
    assert_eq!(limited.headers["retry-after"], "1");
    assert!(!limited.text.contains(PASSWORD));
    // Other accounts are not affected.
    server.login("mo@example.com", None).await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.login("ana@example.com", None).await;
    // The success reset the account: the whole budget again.
    for _ in 0..2 {
        client
            .post_json("/auth/login", &wrong_password("ana@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    server.login("ana@example.com", None).await;
    for _ in 0..3 {
        client
            .post_json("/auth/login", &wrong_password("ana@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    client
        .post_json("/auth/login", &wrong_password("ana@example.com"))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_come_from_x_forwarded_for_only_behind_trusted_proxies() {
    let forwarded = |client: &HttpClient, from: &'static str, email: String| {
        let client = client.clone();
        async move {
            let body = wrong_password(&email).to_string();
            let headers = [
                ("content-type", "application/json"),
                ("x-forwarded-for", from),
            ];
            client
                .send(Method::POST, "/auth/login", &headers, body)
                .await
        }
    };

    let server = TestServer::start_with(|c| {
        c.throttle = quick_throttle(100, 3);
        c.trusted_proxies =
            vec![latchkey::http::client_address::Cidr::parse("127.0.0.0/8").unwrap()];
    })
    .await;
    for n in 0..3 {
        forwarded(&server.client, "203.0.113.5", format!("u{n}@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    forwarded(&server.client, "203.0.113.5", "u9@example.com".into())
        .await
        .assert_error(429, "rate_limited");
    // A spoofed entry to the left of the proxy's is not believed.
    forwarded(
        &server.client,
        "198.51.100.1, 203.0.113.5",
        "u9@example.com".into(),
    )
    .await
    .assert_error(429, "rate_limited");
    forwarded(&server.client, "203.0.113.6", "u9@example.com".into())
        .await
        .assert_error(401, "invalid_credentials");

    // Without a trusted proxy the header is ignored: the peer address counts.
    let server = TestServer::start_with(|c| c.throttle = quick_throttle(100, 3)).await;
    for n in 0..3 {
        let from = ["203.0.113.1", "203.0.113.2", "203.0.113.3"][n];
        forwarded(&server.client, from, format!("u{n}@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    forwarded(&server.client, "203.0.113.99", "u9@example.com".into())
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_shed_with_503_while_refresh_keeps_working() {
    let server = TestServer::start_with(|c| {
        c.argon2 = latchkey::config::Argon2Costs {
            memory_kib: 4096,
            iterations: 8,
            parallelism: 1,
        };
        c.hash_workers = 1;
        c.hash_queue = 2;
        c.seed_users =
            vec![
                latchkey::config::parse_seed_user(&format!("ana@example.com:2:Ana:{PASSWORD}"))
                    .unwrap(),
            ];
    })
    .await;
    let tokens = server.login("ana@example.com", None).await;
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let client = server.client.clone();
            tokio::spawn(async move {
                client
                    .post_json(
                        "/auth/login",
                        &json!({ "email": "ana@example.com", "password": PASSWORD }),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let refreshed = server.client.refresh(&tokens.refresh).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let refresh_latency = started.elapsed();

    let (mut ok, mut overloaded) = (0, 0);
    for response in flood {
        let response = response.await.unwrap();
        match response.status.as_u16() {
            200 => ok += 1,
            503 => {
                response.assert_error(503, "overloaded");
                assert!(response.headers.contains_key("retry-after"));
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {}", response.text),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 10,
        "ok {ok}, overloaded {overloaded}"
    );
    // Not a timing assertion on speed, only that refresh did not queue behind the hashes.
    assert!(
        refresh_latency < Duration::from_secs(5),
        "{refresh_latency:?}"
    );
}

async fn raw_exchange(address: &str, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_idle_connections_are_closed() {
    let server = TestServer::start_with(|c| {
        c.body_timeout = Duration::from_millis(500);
        c.header_timeout = Duration::from_millis(500);
    })
    .await;
    let address = server
        .client
        .base()
        .trim_start_matches("http://")
        .to_string();

    let slow_body = b"POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"em";
    let answer = raw_exchange(&address, slow_body, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Half a header: the connection is closed without an answer.
    let started = Instant::now();
    let answer = raw_exchange(
        &address,
        b"POST /auth/login HTTP/1.1\r\nhost:",
        Duration::from_secs(5),
    )
    .await;
    assert!(!answer.contains("200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed by the header timeout"
    );

    // An idle keep-alive connection is closed after the same timeout.
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_do_not_lock_out_a_login() {
    let server = TestServer::start_with(|c| c.max_connections = 256).await;
    let address = server
        .client
        .base()
        .trim_start_matches("http://")
        .to_string();
    let mut slowloris = Vec::new();
    for _ in 0..1000 {
        if let Ok(mut stream) = TcpStream::connect(&address).await {
            let _ = stream
                .write_all(b"POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-")
                .await;
            slowloris.push(stream);
        }
    }
    assert!(
        slowloris.len() >= 900,
        "the listener accepted the connections"
    );
    let started = Instant::now();
    let fresh = HttpClient::new(server.client.base());
    let tokens = login(&fresh, "ana@example.com", Some("web")).await;
    assert_eq!(fresh.refresh(&tokens.refresh).await.status, StatusCode::OK);
    eprintln!(
        "slowloris: {} half-open connections; a new client logged in and refreshed in {:?}",
        slowloris.len(),
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served at once, not after the header timeout"
    );
    drop(slowloris);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_4xx_never_5xx() {
    let server = TestServer::start().await;
    let client = &server.client;
    let json_headers = [("content-type", "application/json")];
    // Deep nesting within the size limit (serde_json stops at depth 128).
    let deep = format!("{}{}", "[".repeat(8_000), "]".repeat(8_000));
    let long_token = format!("{{\"refreshToken\":\"{}\"}}", "a".repeat(9000));
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"email\":\"\xff\xfe\",\"password\":\"x\"}".to_vec(),
        deep.into_bytes(),
        br#"{"email":"a@b.c","email":"ana@example.com","password":"x"}"#.to_vec(),
        br#"{"email":["a"],"password":{"x":1}}"#.to_vec(),
        br#"{"email":null,"password":null}"#.to_vec(),
        br#"{"email":1e400,"password":123456789012345678901234567890}"#.to_vec(),
        format!("{{\"email\":\"{}\",\"password\":\"x\"}}", "a".repeat(15_000)).into_bytes(),
        vec![b'{'; 16 * 1024],
        b"{\"email\":\"ana@example.com\",\"password\":\"".to_vec(),
        long_token.into_bytes(),
        br#"{"refreshToken":"eyJhbGciOiJIUzI1NiIsImprdSI6Imh0dHA6Ly8xMjcuMC4wLjE6MS9rZXlzIiwia2lkIjoiLi4vLi4vZXRjL3Bhc3N3ZCIsIng1dSI6Imh0dHA6Ly8xMjcuMC4wLjE6MS94NTA5IiwiY3JpdCI6WyJleHAiXX0.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}"#.to_vec(),
        b"\x00\x01\x02".to_vec(),
        Vec::new(),
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for body in &bodies {
        for path in ["/auth/login", "/auth/refresh", "/auth/logout"] {
            let response = client
                .send(Method::POST, path, &json_headers, Bytes::from(body.clone()))
                .await;
            assert!(
                response.status.is_client_error(),
                "{path} {}: {}",
                response.status,
                response.text
            );
            *statuses.entry(response.status.as_u16()).or_insert(0) += 1;
        }
    }
    for bearer in [
        "Bearer",
        "Bearer ",
        "bearer x.y.z",
        "Token abc",
        "Bearer a b c",
        "Bearer \u{e9}t\u{e9}",
    ] {
        let response = client
            .send(
                Method::GET,
                "/auth/profile",
                &[("authorization", bearer)],
                Bytes::new(),
            )
            .await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{bearer:?}");
    }
    eprintln!(
        "hostile inputs: {} requests, answers by status {statuses:?}",
        bodies.len() * 3
    );
    assert!(
        statuses.keys().all(|s| (400..500).contains(s)),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_readable_by_others_are_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, data) = data_dir();
    let secret = data.join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = data.join("latchkey.redb").display().to_string();
    let refused = run_failing_serve(&db, &["--secret-file", secret.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("accessible to other users") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    let server = ServerProcess::start(
        &data,
        &[
            "--secret-file",
            secret.to_str().unwrap(),
            "--insecure-secret-file",
        ],
    );
    let health = server.client.healthz().await;
    assert_eq!(health.status, StatusCode::OK);
}

/// A full disk (the free-space reserve is not met) pauses writes with 503;
/// reads keep working; writes resume by themselves when space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_writes_and_recovers_by_itself() {
    let server = TestServer::start().await;
    let client = &server.client;
    let tokens = server.login("ana@example.com", None).await;

    server.app.space.set_reserve(u64::MAX); // no file system has this much free
    let refused = client.refresh(&tokens.refresh).await;
    refused.assert_error(503, "unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    let login_body = json!({ "email": "ana@example.com", "password": PASSWORD });
    client
        .post_json("/auth/login", &login_body)
        .await
        .assert_error(503, "unavailable");
    client
        .logout(&tokens.refresh, None)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(
        client.profile(&tokens.access).await.status,
        StatusCode::OK,
        "reads keep working"
    );
    let health = client.healthz().await;
    assert_eq!(health.status, StatusCode::OK, "the database is readable");
    assert_eq!(
        health.body,
        json!({ "status": "degraded", "writes": "disk_full" })
    );

    server.app.space.set_reserve(1); // space is back
    let refreshed = client.refresh(&tokens.refresh).await;
    assert_eq!(
        refreshed.status,
        StatusCode::OK,
        "the refused refresh changed nothing: {}",
        refreshed.text
    );
    assert_eq!(
        client.post_json("/auth/login", &login_body).await.status,
        StatusCode::OK
    );
}

/// Writes that fail at the file (a read-only or failing disk, injected
/// below redb): writes answer 503 while reads go on from the last commit,
/// nothing is lost or written meanwhile, and the store reopens the file for
/// writing by itself once the disk accepts writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_writes_answer_503_while_reads_go_on_then_recover() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("latchkey.redb");
    let server = TestServer::start_with(|c| c.data = path.clone()).await;
    let client = &server.client;
    let before = server.login("ana@example.com", None).await;
    let rotated = Tokens::from_body(&client.refresh(&before.refresh).await.body);
    let other = server.login("mo@example.com", None).await;
    client.logout(&other.refresh, None).await;

    server.app.hooks.set_fail_writes(true);
    client
        .refresh(&rotated.refresh)
        .await
        .assert_error(503, "unavailable");
    let file_while_failing = std::fs::read(&path).unwrap();
    let login_body = json!({ "email": "mo@example.com", "password": PASSWORD });
    for _ in 0..3 {
        client
            .post_json("/auth/login", &login_body)
            .await
            .assert_error(503, "unavailable");
    }
    client
        .logout(&rotated.refresh, None)
        .await
        .assert_error(503, "unavailable");
    // Reads answer from the last commit, with the same answers as before.
    for _ in 0..5 {
        let response = client.profile(&rotated.access).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        assert_eq!(response.body["profile"]["email"], "ana@example.com");
        client
            .profile(&other.access)
            .await
            .assert_error(401, "session_revoked");
    }
    let health = client.healthz().await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text);
    assert_eq!(
        health.body,
        json!({ "status": "degraded", "writes": "failing" })
    );
    // Meanwhile no other process may write the file under the reads.
    let db = path.display().to_string();
    let cli = run_cli(&["user", "list", "--data", &db], "");
    assert!(!cli.status.success());
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("in use by another process"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    // Past the writer's first retry (1 s): it goes on retrying at later writes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .refresh(&rotated.refresh)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(client.profile(&rotated.access).await.status, StatusCode::OK);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        file_while_failing,
        "reading never writes the file"
    );

    server.app.hooks.set_fail_writes(false);
    // With no write to try it, /healthz tries the file itself.
    let started = Instant::now();
    let health = loop {
        let health = client.healthz().await;
        if health.body["writes"] == "ok" || started.elapsed() > Duration::from_secs(10) {
            break health;
        }
        assert_eq!(health.body["writes"], "failing", "{}", health.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.body, json!({ "status": "ok", "writes": "ok" }));
    let recovered = client.refresh(&rotated.refresh).await;
    assert_eq!(
        recovered.status,
        StatusCode::OK,
        "writes resumed: {}",
        recovered.text
    );
    // The failed attempts changed nothing: the old token is still rotated.
    client
        .refresh(&before.refresh)
        .await
        .assert_error(401, "token_reused");
    let latest = Tokens::from_body(&recovered.body);
    let app = std::sync::Arc::clone(&server.app);
    server.shutdown().await;
    drop(app);

    // And the file opens cleanly with everything in it.
    let server = TestServer::start_with(|c| c.data = path.clone()).await;
    server
        .client
        .refresh(&latest.refresh)
        .await
        .assert_error(401, "session_revoked");
    server.login("mo@example.com", None).await;
}

/// Reads under load never notice the file failing and recovering: the
/// handle swaps happen between reads, which wait for them (milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_go_on_across_write_failures_and_recoveries() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let server = TestServer::start().await;
    let tokens = server.login("ana@example.com", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (client, access, stop) = (
                server.client.clone(),
                tokens.access.clone(),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut answers = std::collections::BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let status = client.profile(&access).await.status.as_u16();
                    *answers.entry(status).or_insert(0u32) += 1;
                }
                answers
            })
        })
        .collect();
    let mut refresh = tokens.refresh.clone();
    let (mut refused, mut rotated) = (0, 0);
    for round in 0..6 {
        server.app.hooks.set_fail_writes(round % 2 == 0);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            let response = server.client.refresh(&refresh).await;
            if response.status == StatusCode::OK {
                refresh = Tokens::from_body(&response.body).refresh;
                rotated += 1;
            } else {
                response.assert_error(503, "unavailable");
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        refused > 0 && rotated > 0,
        "{refused} refused, {rotated} rotated"
    );
    for reader in readers {
        let answers = reader.await.unwrap();
        assert_eq!(answers.keys().collect::<Vec<_>>(), [&200], "{answers:?}");
    }
    // The chain survived every swap; the writer tries the file again within a second.
    refresh_once_writable(&server.client, &refresh).await;
}

/// Refreshes `token` until writes are accepted again (each refusal must be
/// 503 `unavailable`, which changes nothing); the 200 answer, or a panic
/// after 10 s.
async fn refresh_once_writable(client: &HttpClient, token: &str) -> Response {
    let started = Instant::now();
    loop {
        let response = client.refresh(token).await;
        if response.status == StatusCode::OK {
            return response;
        }
        response.assert_error(503, "unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "writes did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file system mounted on a fresh temporary folder for a test, unmounted
/// on drop. Mounting needs root.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(args: &[&str]) -> Self {
        let mount = Mount {
            dir: tempfile::tempdir().unwrap(),
        };
        mount.run(args);
        mount
    }

    /// A tmpfs of `size`.
    fn tmpfs(size: &str) -> Self {
        Self::new(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
    }

    /// A read-only view of the folder `source`.
    fn read_only_bind(source: &std::path::Path) -> Self {
        let mount = Self::new(&["--bind", source.to_str().unwrap()]);
        mount.remount("ro,bind");
        mount
    }

    fn remount(&self, options: &str) {
        self.run(&["-o", &format!("remount,{options}")]);
    }

    fn run(&self, args: &[&str]) {
        let status = std::process::Command::new("mount")
            .args(args)
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount {args:?} failed (it needs root)");
    }

    /// Fills the file system to the last byte; delete the filler to free it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut filler = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// The same as the injected faults above, on a real file system that runs
/// out of space with the free-space guard turned off: the kernel's ENOSPC
/// reaches redb. Needs root (it mounts a tmpfs), so `.ci/run` runs it
/// explicitly when it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a size-limited tmpfs"]
async fn a_real_full_file_system_keeps_reads_and_recovers() {
    let disk = Mount::tmpfs("8m");
    let data = disk.dir.path();
    let seed = format!("ana@example.com:1:Ana:{PASSWORD}");
    let args = ["--min-free-mb", "0", "--seed-user", seed.as_str()];
    let server = ServerProcess::start(data, &args);
    let client = &server.client;
    let first = login(client, "ana@example.com", None).await;
    let rotated = Tokens::from_body(&client.refresh(&first.refresh).await.body);

    let filler = disk.fill();
    let login_body = json!({ "email": "ana@example.com", "password": PASSWORD });
    let mut refused = None;
    for _ in 0..200 {
        let response = client.post_json("/auth/login", &login_body).await;
        if response.status != StatusCode::OK {
            refused = Some(response);
            break;
        }
    }
    refused
        .expect("a login fails once the file system is full")
        .assert_error(503, "unavailable");
    for _ in 0..5 {
        let response = client.profile(&rotated.access).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    }
    let health = client.healthz().await;
    assert_eq!(
        health.body,
        json!({ "status": "degraded", "writes": "failing" })
    );
    for _ in 0..50 {
        client
            .post_json("/auth/login", &login_body)
            .await
            .assert_error(503, "unavailable");
    }
    {
        let log = server.log.lock().unwrap();
        let count = |text: &str| log.iter().filter(|line| line.contains(text)).count();
        assert!(
            count("No space left on device") > 0,
            "the kernel's error reached the writer"
        );
        assert_eq!(count("serving reads from its last commit"), 1, "{log:#?}");
        assert!(
            count("request failed") <= 5,
            "refusals while read-only are not logged one by one: {log:#?}"
        );
    }

    std::fs::remove_file(filler).unwrap();
    let recovered = refresh_once_writable(client, &rotated.refresh).await;
    let latest = Tokens::from_body(&recovered.body);
    client
        .refresh(&first.refresh)
        .await
        .assert_error(401, "token_reused");
    assert_eq!(server.terminate().code(), Some(0));

    let server = ServerProcess::start(data, &args);
    server
        .client
        .refresh(&latest.refresh)
        .await
        .assert_error(401, "session_revoked");
    login(&server.client, "ana@example.com", None).await;
}

/// A data file on a read-only mount at start: the server starts, serves
/// reads, refuses writes with 503, and writes once the mount is made
/// writable, without a restart. Needs root (bind mounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: makes a read-only bind mount"]
async fn a_real_read_only_mount_is_served_read_only_until_writable() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:1:Ana:{PASSWORD}");
    let server = ServerProcess::start(&data, &["--seed-user", seed.as_str()]);
    let tokens = login(&server.client, "ana@example.com", None).await;
    assert_eq!(server.terminate().code(), Some(0));

    let mount = Mount::read_only_bind(&data);
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(mount.dir.path().join("latchkey.redb"))
        .is_err());
    let server = ServerProcess::start(mount.dir.path(), &[]);
    let client = &server.client;
    let profile = client.profile(&tokens.access).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.text);
    let login_body = json!({ "email": "ana@example.com", "password": PASSWORD });
    client
        .post_json("/auth/login", &login_body)
        .await
        .assert_error(503, "unavailable");
    client
        .refresh(&tokens.refresh)
        .await
        .assert_error(503, "unavailable");
    let health = client.healthz().await;
    assert_eq!(
        health.body,
        json!({ "status": "degraded", "writes": "failing" })
    );

    mount.remount("rw,bind");
    refresh_once_writable(client, &tokens.refresh).await;
    assert_eq!(
        client.post_json("/auth/login", &login_body).await.status,
        StatusCode::OK
    );
    assert_eq!(server.terminate().code(), Some(0));
}
