//! Simultaneous refreshes of one token: exactly one rotation, whatever the timing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hyper::StatusCode;

use crate::common::*;

const RACERS: usize = 20;

async fn race(server: &TestServer, refresh_token: &str) -> Vec<Response> {
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let client = server.client.clone();
            let token = refresh_token.to_string();
            tokio::spawn(async move { client.refresh(&token).await })
        })
        .collect();
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.unwrap());
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_with_grace_all_get_the_same_new_token() {
    let server = TestServer::start().await;
    let tokens = server.login("ana@example.com", None).await;
    let responses = race(&server, &tokens.refresh).await;
    let new_tokens: HashSet<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            Tokens::from_body(&r.body).refresh
        })
        .collect();
    assert_eq!(new_tokens.len(), 1, "exactly one rotation: {new_tokens:?}");
    let new_token = new_tokens.into_iter().next().unwrap();
    assert_ne!(new_token, tokens.refresh);
    // And the one new token carries the chain on.
    assert_eq!(
        server.client.refresh(&new_token).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_without_grace_let_exactly_one_through() {
    let server = TestServer::start_with(|c| c.lifetimes.reuse_grace = Duration::ZERO).await;
    let tokens = server.login("ana@example.com", None).await;
    let responses = race(&server, &tokens.refresh).await;
    let mut by_outcome: HashMap<String, usize> = HashMap::new();
    for r in &responses {
        let key = if r.status == StatusCode::OK {
            "ok".to_string()
        } else {
            r.error_code().to_string()
        };
        *by_outcome.entry(key).or_default() += 1;
    }
    assert_eq!(by_outcome.get("ok"), Some(&1), "{by_outcome:?}");
    assert!(
        by_outcome.get("token_reused").is_some_and(|&n| n >= 1),
        "{by_outcome:?}"
    );
    let allowed: HashSet<&str> = ["ok", "token_reused", "session_revoked"].into();
    assert!(
        by_outcome.keys().all(|k| allowed.contains(k.as_str())),
        "{by_outcome:?}"
    );
    // The reuse revoked the family, including the winner's new token.
    let winner = responses
        .iter()
        .find(|r| r.status == StatusCode::OK)
        .unwrap();
    let winner = Tokens::from_body(&winner.body);
    server
        .client
        .refresh(&winner.refresh)
        .await
        .assert_error(401, "session_revoked");
}

/// Many sessions refreshed in parallel chains: no token is accepted twice,
/// and every token answered 200 carries its chain on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_chains_never_accept_a_token_twice() {
    let server = TestServer::start_with(|c| c.lifetimes.reuse_grace = Duration::ZERO).await;
    let mut chains = Vec::new();
    for i in 0..16 {
        let email = if i % 2 == 0 {
            "ana@example.com"
        } else {
            "mo@example.com"
        };
        chains.push(server.login(email, None).await);
    }
    let tasks: Vec<_> = chains
        .into_iter()
        .map(|tokens| {
            let client = server.client.clone();
            tokio::spawn(async move {
                let mut seen = vec![tokens.refresh.clone()];
                let mut current = tokens.refresh;
                for _ in 0..25 {
                    let response = client.refresh(&current).await;
                    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
                    current = Tokens::from_body(&response.body).refresh;
                    seen.push(current.clone());
                }
                seen
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut rotated = Vec::new();
    for task in tasks {
        let seen = task.await.unwrap();
        for token in &seen {
            assert!(all.insert(token.clone()), "a token was issued twice");
        }
        rotated.extend(seen[..seen.len() - 1].iter().cloned());
    }
    assert_eq!(all.len(), 16 * 26);
    // Replaying any rotated token is detected as reuse.
    server
        .client
        .refresh(&rotated[7])
        .await
        .assert_error(401, "token_reused");
}
