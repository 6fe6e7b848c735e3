//! Running it like infrastructure: request ids, request logs, readiness,
//! and logs that never hold a secret.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_when_sane_and_made_otherwise() {
    let server = TestServer::start().await;
    let client = &server.client;
    let echoed = client
        .send(
            Method::GET,
            "/healthz",
            &[("x-request-id", "abc-123_XYZ")],
            "",
        )
        .await;
    assert_eq!(echoed.headers["x-request-id"], "abc-123_XYZ");
    let long = "a".repeat(129);
    for bad in [long.as_str(), "has space", "tab\there"] {
        let made = client
            .send(Method::GET, "/healthz", &[("x-request-id", bad)], "")
            .await;
        let id = made.headers["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 16);
    }
    let first = client.send(Method::GET, "/nope", &[], "").await;
    let second = client.send(Method::GET, "/nope", &[], "").await;
    assert_ne!(
        first.headers["x-request-id"],
        second.headers["x-request-id"]
    );
    first.assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_and_turns_503_while_draining() {
    let (_dir, data) = data_dir();
    let server = ServerProcess::start(&data, &["--secret", SECRET, "--drain-delay", "3s"]);
    let client = server.client.clone();
    let ready = client.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body, json!({ "status": "ready" }));

    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let mut saw_draining = false;
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(answer) = client.try_send(Method::GET, "/readyz", &[], "").await {
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(answer.body, json!({ "status": "draining" }));
                // Everything else is still served while draining.
                assert_eq!(client.healthz().await.status, StatusCode::OK);
                saw_draining = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_draining, "no 503 draining after SIGTERM");
    assert_eq!(server.terminate_waiting().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_writes_fail() {
    let server = TestServer::start().await;
    server.app.space.set_reserve(u64::MAX);
    let answer = server.client.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body, json!({ "status": "disk_full" }));
    server.app.space.set_reserve(0);
    let answer = server.client.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    // A write that fails at the file: not ready until the file takes writes.
    server.app.hooks.set_fail_writes(true);
    let login = json!({ "email": "ana@example.com", "password": PASSWORD });
    server
        .client
        .post_json("/auth/login", &login)
        .await
        .assert_error(503, "unavailable");
    let answer = server.client.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body, json!({ "status": "failing" }));
    server.app.hooks.set_fail_writes(false);
    let mut ready = false;
    for _ in 0..50 {
        let answer = server.client.send(Method::GET, "/readyz", &[], "").await;
        if answer.status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the file takes writes");
}

/// A whole session with debug logging, as JSON lines: one line per request
/// with its route template, and no token, password, hash or secret anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_a_line_per_request_and_never_a_secret() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let server = ServerProcess::start_with_env(
        &data,
        &[
            "--secret",
            SECRET,
            "--seed-user",
            &seed,
            "--log-format",
            "json",
            "--reuse-grace",
            "0",
        ],
        &[("LATCHKEY_LOG", "debug")],
    );
    let client = &server.client;
    let tokens = login(client, "ana@example.com", None).await;
    let rotated = Tokens::from_body(&client.refresh(&tokens.refresh).await.body);
    client
        .refresh(&tokens.refresh)
        .await
        .assert_error(401, "token_reused");
    let other = login(client, "ana@example.com", None).await;
    assert_eq!(client.profile(&other.access).await.status, StatusCode::OK);
    assert_eq!(
        client.logout(&other.refresh, None).await.status,
        StatusCode::NO_CONTENT
    );
    let wrong = json!({ "email": "ana@example.com", "password": "a-wrong-password-guess" });
    for _ in 0..6 {
        client.post_json("/auth/login", &wrong).await;
    }
    let hash_prefix = "$argon2id$";
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log.lock().unwrap().clone();
    let text = log.join("\n");
    for secret in [
        tokens.access.as_str(),
        tokens.refresh.as_str(),
        rotated.access.as_str(),
        rotated.refresh.as_str(),
        other.access.as_str(),
        other.refresh.as_str(),
        PASSWORD,
        "a-wrong-password-guess",
        SECRET,
        hash_prefix,
    ] {
        assert!(
            !text.contains(secret),
            "the log holds a secret: {secret:.20}…"
        );
    }
    // No part of a token either (a JWT's signature is its last part).
    for token in [&tokens.refresh, &rotated.access] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature));
    }
    let lines: Vec<Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        !lines.is_empty() && lines.len() == log.len(),
        "every line is JSON"
    );
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert!(requests.len() >= 11, "{} request lines", requests.len());
    for line in &requests {
        for field in [
            "method",
            "route",
            "status",
            "latency_ms",
            "request_id",
            "client",
        ] {
            assert!(!line[field].is_null(), "{field} missing: {line}");
        }
    }
    assert!(requests
        .iter()
        .any(|l| l["route"] == "/auth/refresh" && l["status"] == 401));
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert!(events.contains(&"token_reuse"), "{events:?}");
    assert!(events.contains(&"login_throttled"), "{events:?}");
    assert!(lines
        .iter()
        .filter(|l| l["event"].is_string())
        .all(|l| l["level"] == "WARN"));
}

/// The value of counter `metric` with exactly these labels (0 when absent).
fn counter(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(client: &HttpClient) -> prometheus_parse::Scrape {
    let answer = client.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "text/plain; version=0.0.4");
    // Every metric has its HELP and TYPE.
    let mut helped = std::collections::BTreeSet::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in answer.text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(
                helped.contains(family) && typed.contains(family),
                "{family} lacks HELP or TYPE"
            );
            assert!(!line.contains('@'), "no email in a label: {line}");
        }
    }
    let lines = answer.text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_exactly_on_their_own_port() {
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let server = ServerProcess::start(
        &data,
        &[
            "--secret",
            SECRET,
            "--seed-user",
            &seed,
            "--reuse-grace",
            "0",
            "--metrics-bind",
            "127.0.0.1:0",
        ],
    );
    let address = {
        let log = server.log.lock().unwrap().join("\n");
        let at = log
            .find("metrics on http://")
            .expect("the metrics address is logged");
        let rest = &log[at + "metrics on http://".len()..];
        rest.split('/').next().unwrap().to_string()
    };
    let metrics = HttpClient::new(&format!("http://{address}"));
    // Not on the public port.
    server
        .client
        .send(Method::GET, "/metrics", &[], "")
        .await
        .assert_error(404, "not_found");

    let before = scrape(&metrics).await;
    let client = &server.client;
    let tokens = login(client, "ana@example.com", None).await;
    let wrong = json!({ "email": "ana@example.com", "password": "not it" });
    client
        .post_json("/auth/login", &wrong)
        .await
        .assert_error(401, "invalid_credentials");
    let rotated = Tokens::from_body(&client.refresh(&tokens.refresh).await.body);
    client
        .refresh(&tokens.refresh)
        .await
        .assert_error(401, "token_reused");
    client
        .refresh(&rotated.refresh)
        .await
        .assert_error(401, "session_revoked");
    client
        .refresh("garbage")
        .await
        .assert_error(401, "invalid_token");
    let admin_path = format!("/admin/users/{}", 1);
    client.send(Method::GET, &admin_path, &[], "").await;
    let after = scrape(&metrics).await;

    let delta = |metric: &str, labels: &[(&str, &str)]| {
        counter(&after, metric, labels) - counter(&before, metric, labels)
    };
    assert_eq!(
        delta("latchkey_logins_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        delta(
            "latchkey_logins_total",
            &[("result", "invalid_credentials")]
        ),
        1.0
    );
    assert_eq!(
        delta("latchkey_refreshes_total", &[("result", "rotated")]),
        1.0
    );
    assert_eq!(
        delta("latchkey_refreshes_total", &[("result", "reused")]),
        1.0
    );
    assert_eq!(
        delta("latchkey_refreshes_total", &[("result", "revoked")]),
        1.0
    );
    assert_eq!(
        delta("latchkey_refreshes_total", &[("result", "invalid")]),
        1.0
    );
    let requests = "latchkey_http_requests_total";
    assert_eq!(
        delta(requests, &[("route", "/auth/login"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        delta(requests, &[("route", "/auth/login"), ("status", "401")]),
        1.0
    );
    assert_eq!(
        delta(requests, &[("route", "/auth/refresh"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        delta(requests, &[("route", "/auth/refresh"), ("status", "401")]),
        3.0
    );
    // A raw path never becomes a label: the template does. (Checked on the
    // text: this parser cannot read a `}` inside a label value.)
    let text = metrics.send(Method::GET, "/metrics", &[], "").await.text;
    assert!(
        text.contains("latchkey_http_requests_total{route=\"/admin/users/{id}\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(!text.contains("/admin/users/1"));
    assert_eq!(
        counter(
            &after,
            "latchkey_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(counter(&after, "latchkey_sessions_active", &[]) >= 1.0);
    for histogram in [
        "latchkey_http_request_duration_seconds",
        "latchkey_password_hash_duration_seconds",
        "latchkey_store_commit_duration_seconds",
        "latchkey_store_batch_size",
    ] {
        assert!(
            after.samples.iter().any(|s| s.metric == histogram
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
            "{histogram}"
        );
    }
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "latchkey_password_hash_queue_depth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_only_for_listed_origins() {
    let plain = TestServer::start().await;
    let answer = plain
        .client
        .send(
            Method::GET,
            "/healthz",
            &[("origin", "https://app.example.com")],
            "",
        )
        .await;
    assert!(answer.headers.get("access-control-allow-origin").is_none());

    let server =
        TestServer::start_with(|c| c.cors_origins = vec!["https://app.example.com".into()]).await;
    let client = &server.client;
    let listed = [("origin", "https://app.example.com")];
    let answer = client.send(Method::GET, "/healthz", &listed, "").await;
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(answer.headers["vary"], "Origin");
    let exposed = answer.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("X-Request-Id") && exposed.contains("Retry-After"));
    // Scheme and host compare case-insensitively.
    let upper = [("origin", "HTTPS://APP.example.com")];
    let answer = client.send(Method::GET, "/healthz", &upper, "").await;
    assert!(answer.headers.contains_key("access-control-allow-origin"));
    assert!(answer
        .headers
        .get("access-control-allow-credentials")
        .is_none());
    let preflight = client
        .send(
            Method::OPTIONS,
            "/auth/login",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            "",
        )
        .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    let methods = preflight.headers["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST") && methods.contains("PATCH"));
    let headers = preflight.headers["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(headers.contains("Authorization") && headers.contains("Content-Type"));
    assert!(preflight.headers.contains_key("access-control-max-age"));

    let other = [("origin", "https://evil.example.com")];
    let answer = client.send(Method::GET, "/healthz", &other, "").await;
    assert!(answer.headers.get("access-control-allow-origin").is_none());
    assert_eq!(
        answer.headers["vary"], "Origin",
        "caches keep origins apart"
    );
    let preflight = client
        .send(Method::OPTIONS, "/auth/login", &other, "")
        .await;
    assert!(preflight
        .headers
        .get("access-control-allow-origin")
        .is_none());
    assert_ne!(preflight.status, StatusCode::NO_CONTENT);
}

/// Serves one HTML page on a free port (a second origin), until dropped.
async fn page_server(html: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let html = html.clone();
                    async move {
                        let mut response = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(html),
                        ));
                        response
                            .headers_mut()
                            .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (origin, task)
}

/// The page's script logs in, refreshes and reads the profile with fetch,
/// and writes what happened into the document.
fn browser_page(api: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">running</pre><script>
const api = "{api}";
const out = document.getElementById("out");
(async () => {{
  try {{
    const json = {{ "content-type": "application/json" }};
    let r = await fetch(api + "/auth/login", {{ method: "POST", headers: json,
      body: JSON.stringify({{ email: "ana@example.com", password: "{PASSWORD}" }}) }});
    let tokens = await r.json();
    r = await fetch(api + "/auth/refresh", {{ method: "POST", headers: json,
      body: JSON.stringify({{ refreshToken: tokens.refreshToken }}) }});
    tokens = await r.json();
    r = await fetch(api + "/auth/profile", {{ headers: {{ authorization: "Bearer " + tokens.accessToken }} }});
    const body = await r.json();
    out.textContent = "RESULT OK " + r.status + " " + body.profile.email + " id=" + r.headers.get("x-request-id") + " end";
  }} catch (e) {{
    out.textContent = "RESULT FAILED " + e.name;
  }}
}})();
</script></body></html>"#
    )
}

fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium (Debian's package) must be installed for this test");
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A real browser: a page from a listed origin logs in, refreshes and reads
/// the profile with fetch; the same page from another origin cannot. Needs
/// Debian's chromium: `.ci/run` installs it and runs this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium; run by .ci/run"]
async fn a_browser_app_on_a_listed_origin_logs_in_and_another_origin_cannot() {
    // The page servers first: their origins go into --cors-origin.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    // Held while the page servers bind, so neither can get the API's port;
    // released just before latchkey binds it.
    let (allowed, _a) = page_server(browser_page(&api)).await;
    let (other, _b) = page_server(browser_page(&api)).await;
    drop(listener);
    let (_dir, data) = data_dir();
    let seed = format!("ana@example.com:2:Ana:{PASSWORD}");
    let port = api.rsplit(':').next().unwrap().to_string();
    let db = data.join("latchkey.redb");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = KillOnDrop(
        std::process::Command::new(binary())
            .args(["serve", "--port", &port, "--data"])
            .arg(&db)
            .args(CHEAP_ARGON2_FLAGS)
            .args([
                "--secret",
                SECRET,
                "--seed-user",
                &seed,
                "--cors-origin",
                &allowed,
            ])
            .env("LATCHKEY_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let client = HttpClient::new(&api);
    let mut up = false;
    for _ in 0..100 {
        if client
            .try_send(Method::GET, "/healthz", &[], "")
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the server did not start on {api}");

    let dom = tokio::task::spawn_blocking(move || chromium_dom(&allowed))
        .await
        .unwrap();
    // The request id is readable by the script (an exposed header): 16 hex digits.
    let id = dom
        .split("RESULT OK 200 ana@example.com id=")
        .nth(1)
        .and_then(|rest| rest.split(" end").next())
        .unwrap_or_else(|| panic!("allowed origin: {dom}"));
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "request id {id:?}"
    );
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&other))
        .await
        .unwrap();
    assert!(
        dom.contains("RESULT FAILED TypeError"),
        "other origin: {dom}"
    );
}
