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
