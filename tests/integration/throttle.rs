//! Brute force under parallel and distributed guessing: the failure budget
//! counts running attempts, blocks survive churn, IPv6 by network.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::*;
use latchkey::throttle::ThrottlePolicy;

fn wrong_password(email: &str) -> serde_json::Value {
    json!({ "email": email, "password": "a wrong guess" })
}

/// Sends `count` logins with `body` at once and tallies the statuses.
async fn burst(client: &HttpClient, body: serde_json::Value, count: usize) -> Vec<Response> {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (client, body) = (client.clone(), body.clone());
            tokio::spawn(async move { client.post_json("/auth/login", &body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn count(answers: &[Response], status: u16) -> usize {
    answers
        .iter()
        .filter(|a| a.status.as_u16() == status)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_parallel_guesses_on_a_fresh_account_get_five_checks() {
    let server = TestServer::start().await;
    let answers = burst(&server.client, wrong_password("ana@example.com"), 60).await;
    assert_eq!(count(&answers, 401), 5, "checked");
    assert_eq!(count(&answers, 429), 55, "refused");
    for refused in answers.iter().filter(|a| a.status.as_u16() == 429) {
        refused.assert_error(429, "rate_limited");
        let retry: u64 = refused.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
    }
    // The budget is spent: even the right password waits.
    server
        .client
        .post_json(
            "/auth/login",
            &json!({ "email": "ana@example.com", "password": PASSWORD }),
        )
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_parallel_logins_of_one_account_all_succeed() {
    let server = TestServer::start().await;
    let right = json!({ "email": "ana@example.com", "password": PASSWORD });
    let answers = burst(&server.client, right, 40).await;
    assert_eq!(
        count(&answers, 200),
        40,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
}

/// A raw HTTP/1.1 login sent from a chosen 127.x.y.z source address.
async fn login_from(source: IpAddr, server: std::net::SocketAddr, email: &str) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let body = wrong_password(email).to_string();
    let request = format!(
        "POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The attack that erased a block: fill the throttle with cheap requests
/// for random unknown emails from rotating source addresses (many answered
/// 503 because the hashing queue is tiny), then try the victim again from a
/// fresh address. The victim must still be blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_survives_a_churn_of_unknown_emails_from_rotating_addresses() {
    let server = TestServer::start_with(|c| {
        c.throttle = Some(ThrottlePolicy {
            capacity: 1000,
            base_delay: Duration::from_secs(600),
            max_delay: Duration::from_secs(600),
            ..ThrottlePolicy::default()
        });
        c.hash_workers = 1;
        c.hash_queue = 4;
    })
    .await;
    let address: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    for _ in 0..5 {
        server
            .client
            .post_json("/auth/login", &wrong_password("ana@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    server
        .client
        .post_json("/auth/login", &wrong_password("ana@example.com"))
        .await
        .assert_error(429, "rate_limited");

    // First few enough at once that most are hashed (a failure each, for an
    // unknown email and a new address: they fill both tables over and over),
    // then so many at once that most are refused with 503.
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut first = 0u32;
    for (requests, parallel) in [(3000u32, 2u32), (1024, 64)] {
        let per_worker = requests / parallel;
        let workers: Vec<_> = (0..parallel)
            .map(|worker| {
                let statuses = Arc::clone(&statuses);
                tokio::spawn(async move {
                    for n in 0..per_worker {
                        let i = first + worker * per_worker + n;
                        let source =
                            IpAddr::from([127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                        let email = format!("random{i}@churn.invalid");
                        let status = login_from(source, address, &email).await;
                        *statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        first += requests;
    }
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("churn answers by status: {statuses:?}");
    assert_eq!(statuses.values().sum::<u32>(), 4024);
    assert!(
        statuses.get(&401).copied().unwrap_or(0) >= 1500,
        "the churn was meant to fill the tables with failures: {statuses:?}"
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the churn was meant to overload hashing: {statuses:?}"
    );

    let fresh = IpAddr::from([127, 200, 0, 1]);
    assert_eq!(
        login_from(fresh, address, "ana@example.com").await,
        429,
        "the block was erased"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_are_checked_and_blocked_like_known_ones() {
    let server = TestServer::start().await;
    for _ in 0..5 {
        server
            .client
            .post_json("/auth/login", &wrong_password("nobody@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    server
        .client
        .post_json("/auth/login", &wrong_password("nobody@example.com"))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_limited_by_their_network() {
    let server = TestServer::start_with(|c| {
        c.throttle = Some(ThrottlePolicy {
            address_free_failures: 3,
            base_delay: Duration::from_secs(60),
            ..ThrottlePolicy::default()
        });
        c.trusted_proxies =
            vec![latchkey::http::client_address::Cidr::parse("127.0.0.0/8").unwrap()];
    })
    .await;
    let from = |client: &HttpClient, address: &'static str, email: String| {
        let client = client.clone();
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("x-forwarded-for", address),
            ];
            client
                .send(
                    Method::POST,
                    "/auth/login",
                    &headers,
                    wrong_password(&email).to_string(),
                )
                .await
        }
    };
    for (n, address) in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:aaaa::3"]
        .into_iter()
        .enumerate()
    {
        from(&server.client, address, format!("v6-{n}@example.com"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    from(
        &server.client,
        "2001:db8:1:2:ffff::9",
        "another@example.com".into(),
    )
    .await
    .assert_error(429, "rate_limited");
    from(
        &server.client,
        "2001:db8:1:3::1",
        "another@example.com".into(),
    )
    .await
    .assert_error(401, "invalid_credentials");
}
