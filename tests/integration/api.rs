//! The HTTP contract: shapes, status codes and error codes of every endpoint.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_answers_tokens_with_the_documented_claims() {
    let server = TestServer::start().await;
    let response = server
        .client
        .post_json(
            "/auth/login",
            &json!({ "email": "ana@example.com", "password": PASSWORD, "type": "web" }),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.body["tokenType"], "Bearer");
    assert_eq!(response.body["expiresIn"], 3600);
    assert_eq!(response.headers["content-type"], "application/json");
    let tokens = Tokens::from_body(&response.body);

    let header = jwt_part(&tokens.access, 0);
    assert_eq!(header["alg"], "HS256");
    let access = claims(&tokens.access);
    assert_eq!(access["type"], "access");
    assert!(access["sub"].is_string() && access["jti"].is_string() && access["sid"].is_string());
    assert_eq!(access["profile"]["id"], access["sub"]);
    assert_eq!(access["profile"]["email"], "ana@example.com");
    assert_eq!(access["profile"]["name"], "Ana Admin");
    assert_eq!(access["profile"]["role_id"], 2);
    assert!(access["iat"].is_u64() && access["exp"].is_u64());
    assert_eq!(
        access["exp"].as_u64().unwrap() - access["iat"].as_u64().unwrap(),
        3600
    );

    let refresh = claims(&tokens.refresh);
    assert_eq!(refresh["type"], "refresh");
    assert_eq!(refresh["sub"], access["sub"]);
    assert_eq!(refresh["sid"], access["sid"]);
    assert!(refresh.get("profile").is_none());
    assert_eq!(
        refresh["exp"].as_u64().unwrap() - refresh["iat"].as_u64().unwrap(),
        7 * 86_400
    );
    assert_ne!(refresh["jti"], access["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_type_maps_to_roles_and_emails_ignore_case_and_spaces() {
    let server = TestServer::start().await;
    server.login("  ANA@Example.com ", Some("web")).await;
    server.login("mo@example.com", Some("mobile")).await;
    server.login("ana@example.com", None).await;
    server.login("mo@example.com", None).await;

    let wrong_type = json!({ "email": "ana@example.com", "password": PASSWORD, "type": "mobile" });
    server
        .client
        .post_json("/auth/login", &wrong_type)
        .await
        .assert_error(403, "role_not_allowed");
    let wrong_type = json!({ "email": "mo@example.com", "password": PASSWORD, "type": "web" });
    server
        .client
        .post_json("/auth/login", &wrong_type)
        .await
        .assert_error(403, "role_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_does_not_reveal_which_emails_exist() {
    let server = TestServer::start().await;
    let wrong_password = json!({ "email": "ana@example.com", "password": "not the password" });
    let unknown_email = json!({ "email": "nobody@example.com", "password": "not the password" });
    let a = server
        .client
        .post_json("/auth/login", &wrong_password)
        .await;
    let b = server.client.post_json("/auth/login", &unknown_email).await;
    a.assert_error(401, "invalid_credentials");
    b.assert_error(401, "invalid_credentials");
    assert_eq!(a.text, b.text, "same body for both");
    assert!(!a.text.contains("not the password"));

    // Password before role: a wrong password with a disallowed type is 401, never 403.
    let wrong_both =
        json!({ "email": "ana@example.com", "password": "not the password", "type": "mobile" });
    server
        .client
        .post_json("/auth/login", &wrong_both)
        .await
        .assert_error(401, "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rejects_malformed_requests_naming_the_field() {
    let server = TestServer::start().await;
    let client = &server.client;
    let cases = [
        (json!({ "password": PASSWORD }), "email"),
        (json!({ "email": "ana@example.com" }), "password"),
        (
            json!({ "email": "not-an-email", "password": PASSWORD }),
            "email",
        ),
        (json!({ "email": 12, "password": PASSWORD }), "email"),
        (
            json!({ "email": "ana@example.com", "password": ["x"] }),
            "password",
        ),
        (
            json!({ "email": "ana@example.com", "password": PASSWORD, "type": "desktop" }),
            "type",
        ),
        (
            json!({ "email": "ana@example.com", "password": PASSWORD, "type": 2 }),
            "type",
        ),
    ];
    for (body, field) in cases {
        let response = client.post_json("/auth/login", &body).await;
        response.assert_error(400, "invalid_request");
        assert!(
            response.body["message"].as_str().unwrap().contains(field),
            "{body} → {}",
            response.text
        );
        assert!(!response.text.contains(PASSWORD), "never echo the password");
    }
    let json_headers = [("content-type", "application/json")];
    for raw in ["{not json", "[1,2]", "\"text\"", ""] {
        client
            .send(Method::POST, "/auth/login", &json_headers, raw.to_string())
            .await
            .assert_error(400, "invalid_request");
    }
    let too_long = json!({ "email": "ana@example.com", "password": "x".repeat(1025) });
    client
        .post_json("/auth/login", &too_long)
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_have_json_bodies() {
    let server = TestServer::start().await;
    let client = &server.client;
    let body = json!({ "email": "ana@example.com", "password": PASSWORD }).to_string();

    let charset = [("content-type", "application/json; charset=utf-8")];
    assert_eq!(
        client
            .send(Method::POST, "/auth/login", &charset, body.clone())
            .await
            .status,
        StatusCode::OK
    );

    let text = [("content-type", "text/plain")];
    client
        .send(Method::POST, "/auth/login", &text, body.clone())
        .await
        .assert_error(415, "unsupported_media_type");
    client
        .send(Method::POST, "/auth/login", &[], body.clone())
        .await
        .assert_error(415, "unsupported_media_type");

    let json_headers = [("content-type", "application/json")];
    let big = format!("{{\"email\":\"{}\"}}", "a".repeat(16 * 1024));
    client
        .send(Method::POST, "/auth/login", &json_headers, big)
        .await
        .assert_error(413, "payload_too_large");

    client
        .send(Method::GET, "/nope", &[], Bytes::new())
        .await
        .assert_error(404, "not_found");
    let wrong_method = client
        .send(Method::GET, "/auth/login", &[], Bytes::new())
        .await;
    wrong_method.assert_error(405, "method_not_allowed");
    assert_eq!(wrong_method.headers["allow"], "POST");
    let wrong_method = client
        .send(Method::POST, "/auth/profile", &json_headers, "{}")
        .await;
    wrong_method.assert_error(405, "method_not_allowed");
    assert_eq!(wrong_method.headers["allow"], "GET, PATCH");

    let health = client.healthz().await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, json!({ "status": "ok", "writes": "ok" }));
    let openapi = client
        .send(Method::GET, "/openapi.json", &[], Bytes::new())
        .await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert_eq!(openapi.body["openapi"], "3.0.3");
    for path in [
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/profile",
        "/healthz",
    ] {
        assert!(
            openapi.body["paths"][path].is_object(),
            "{path} is described"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_both_tokens_once() {
    let server =
        TestServer::start_with(|c| c.lifetimes.reuse_grace = std::time::Duration::ZERO).await;
    let first = server.login("ana@example.com", Some("web")).await;
    let response = server.client.refresh(&first.refresh).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.body["tokenType"], "Bearer");
    assert_eq!(response.body["expiresIn"], 3600);
    let second = Tokens::from_body(&response.body);
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    assert_eq!(
        claims(&second.refresh)["sid"],
        claims(&first.refresh)["sid"],
        "same family"
    );
    assert_eq!(
        server.client.profile(&second.access).await.status,
        StatusCode::OK
    );

    // The second rotation also works; the chain continues.
    let third = Tokens::from_body(&server.client.refresh(&second.refresh).await.body);
    assert_eq!(
        server.client.profile(&third.access).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_revokes_the_whole_family() {
    let server =
        TestServer::start_with(|c| c.lifetimes.reuse_grace = std::time::Duration::ZERO).await;
    let first = server.login("ana@example.com", None).await;
    let other_session = server.login("ana@example.com", None).await;
    let second = Tokens::from_body(&server.client.refresh(&first.refresh).await.body);

    let reuse = server.client.refresh(&first.refresh).await;
    reuse.assert_error(401, "token_reused");
    assert!(!reuse.text.contains(&first.refresh));
    server
        .client
        .refresh(&second.refresh)
        .await
        .assert_error(401, "session_revoked");
    server
        .client
        .profile(&second.access)
        .await
        .assert_error(401, "session_revoked");
    server
        .client
        .refresh(&first.refresh)
        .await
        .assert_error(401, "session_revoked");

    // Other sessions of the same user are untouched.
    assert_eq!(
        server.client.refresh(&other_session.refresh).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_window_returns_the_identical_token_then_ancestors_are_reuse() {
    let server = TestServer::start().await; // default grace: 10 s
    let first = server.login("mo@example.com", Some("mobile")).await;
    let rotated = server.client.refresh(&first.refresh).await;
    let second = Tokens::from_body(&rotated.body);

    for _ in 0..3 {
        let again = server.client.refresh(&first.refresh).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        let replay = Tokens::from_body(&again.body);
        assert_eq!(
            replay.refresh, second.refresh,
            "byte for byte the token of the first rotation"
        );
        assert_ne!(replay.access, second.access, "a fresh access token");
        assert_eq!(
            server.client.profile(&replay.access).await.status,
            StatusCode::OK
        );
    }

    let third = Tokens::from_body(&server.client.refresh(&second.refresh).await.body);
    // `first` is now two rotations back: always reuse, even within the window.
    server
        .client
        .refresh(&first.refresh)
        .await
        .assert_error(401, "token_reused");
    server
        .client
        .refresh(&third.refresh)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_window_closes_after_its_duration_from_the_first_rotation() {
    // Long enough that a loaded test machine still replays inside it; the
    // assertions go by the time that really passed.
    let grace = std::time::Duration::from_millis(3000);
    let server = TestServer::start_with(|c| c.lifetimes.reuse_grace = grace).await;
    let first = server.login("ana@example.com", None).await;
    let second = Tokens::from_body(&server.client.refresh(&first.refresh).await.body);
    let rotated = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let replay = server.client.refresh(&first.refresh).await;
    assert!(rotated.elapsed() < grace, "the machine stalled for seconds");
    assert_eq!(Tokens::from_body(&replay.body).refresh, second.refresh);
    // The replay did not restart the window: once it has passed since the
    // rotation (not since the replay), the old token is reuse.
    tokio::time::sleep(
        (grace + std::time::Duration::from_millis(100)).saturating_sub(rotated.elapsed()),
    )
    .await;
    server
        .client
        .refresh(&first.refresh)
        .await
        .assert_error(401, "token_reused");
    server
        .client
        .refresh(&second.refresh)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rejects_bad_tokens_with_their_own_codes() {
    use latchkey::secrets::Secret;
    use latchkey::session::{IssuedRefresh, SessionId, TokenId};
    use latchkey::tokens::TokenKeys;

    let server = TestServer::start().await;
    let client = &server.client;
    let tokens = server.login("ana@example.com", None).await;
    let now = jsonwebtoken::get_current_timestamp();
    let sid = SessionId::from_hex(claims(&tokens.refresh)["sid"].as_str().unwrap()).unwrap();
    let jti = TokenId::from_hex(claims(&tokens.refresh)["jti"].as_str().unwrap()).unwrap();

    client
        .refresh("garbage")
        .await
        .assert_error(401, "invalid_token");
    client
        .refresh(&tokens.access)
        .await
        .assert_error(401, "invalid_token");
    let mut tampered = tokens.refresh.clone();
    tampered.pop();
    tampered.push(if tokens.refresh.ends_with('A') {
        'B'
    } else {
        'A'
    });
    client
        .refresh(&tampered)
        .await
        .assert_error(401, "invalid_token");

    let foreign = TokenKeys::new(&Secret::new(vec![9; 32]).unwrap());
    let current = IssuedRefresh {
        jti,
        issued_at: now,
        expires_at: now + 60,
    };
    client
        .refresh(&foreign.refresh_token(1, sid, &current).unwrap())
        .await
        .assert_error(401, "invalid_token");

    // `alg: none` with the genuine payload.
    let payload = tokens.refresh.split('.').nth(1).unwrap();
    client
        .refresh(&format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."))
        .await
        .assert_error(401, "invalid_token");

    let ours = test_keys();
    let expired = IssuedRefresh {
        jti,
        issued_at: now - 100,
        expires_at: now - 1,
    };
    client
        .refresh(&ours.refresh_token(1, sid, &expired).unwrap())
        .await
        .assert_error(401, "token_expired");
    let unknown_session = ours
        .refresh_token(1, SessionId::generate(now * 1000), &current)
        .unwrap();
    client
        .refresh(&unknown_session)
        .await
        .assert_error(401, "invalid_token");
    let no_such_user = ours.refresh_token(999, sid, &current).unwrap();
    client
        .refresh(&no_such_user)
        .await
        .assert_error(404, "user_not_found");

    for body in [
        json!({}),
        json!({ "refreshToken": 5 }),
        json!({ "token": tokens.refresh }),
    ] {
        client
            .post_json("/auth/refresh", &body)
            .await
            .assert_error(400, "invalid_request");
    }
    // None of this disturbed the real session.
    assert_eq!(client.refresh(&tokens.refresh).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_never_extends_past_the_session_lifetime() {
    let server =
        TestServer::start_with(|c| c.lifetimes.session_ttl = std::time::Duration::from_secs(120))
            .await;
    let first = server.login("ana@example.com", None).await;
    let first_claims = claims(&first.refresh);
    let session_end = first_claims["exp"].as_u64().unwrap();
    assert!(session_end - first_claims["iat"].as_u64().unwrap() <= 120);
    let second = Tokens::from_body(&server.client.refresh(&first.refresh).await.body);
    assert!(claims(&second.refresh)["exp"].as_u64().unwrap() <= session_end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_of_a_deleted_user_is_404() {
    let server = TestServer::start().await;
    let tokens = server.login("mo@example.com", None).await;
    let removed = server
        .app
        .auth
        .store()
        .remove_user("mo@example.com")
        .await
        .unwrap();
    assert!(removed.is_some());
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
async fn profile_needs_a_live_access_token() {
    use latchkey::session::SessionId;
    use latchkey::tokens::Profile;

    let server = TestServer::start().await;
    let client = &server.client;
    let tokens = server.login("ana@example.com", Some("web")).await;
    let response = client.profile(&tokens.access).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.body,
        json!({ "profile": { "id": claims(&tokens.access)["sub"], "email": "ana@example.com", "name": "Ana Admin", "role_id": 2 } })
    );

    client
        .send(Method::GET, "/auth/profile", &[], Bytes::new())
        .await
        .assert_error(401, "invalid_token");
    client
        .send(
            Method::GET,
            "/auth/profile",
            &[("authorization", "Basic abc")],
            Bytes::new(),
        )
        .await
        .assert_error(401, "invalid_token");
    client
        .profile("not-a-token")
        .await
        .assert_error(401, "invalid_token");
    client
        .profile(&tokens.refresh)
        .await
        .assert_error(401, "invalid_token");

    let ours = test_keys();
    let sid = SessionId::from_hex(claims(&tokens.access)["sid"].as_str().unwrap()).unwrap();
    let profile = Profile {
        id: "1".into(),
        email: "ana@example.com".into(),
        name: "Ana".into(),
        role_id: 2,
    };
    let now = jsonwebtoken::get_current_timestamp();
    let expired = ours.access_token(profile, sid, now - 100, 50).unwrap();
    client
        .profile(&expired)
        .await
        .assert_error(401, "token_expired");

    assert_eq!(
        client.logout(&tokens.refresh, None).await.status,
        StatusCode::NO_CONTENT
    );
    client
        .profile(&tokens.access)
        .await
        .assert_error(401, "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_local_revokes_one_session_idempotently() {
    let server = TestServer::start().await;
    let client = &server.client;
    let phone = server.login("ana@example.com", None).await;
    let laptop = server.login("ana@example.com", None).await;

    assert_eq!(
        client.logout(&phone.refresh, Some("local")).await.status,
        StatusCode::NO_CONTENT
    );
    client
        .refresh(&phone.refresh)
        .await
        .assert_error(401, "session_revoked");
    assert_eq!(client.profile(&laptop.access).await.status, StatusCode::OK);
    // Again, locally: quietly accepted.
    assert_eq!(
        client.logout(&phone.refresh, Some("local")).await.status,
        StatusCode::NO_CONTENT
    );
    // Globally, a revoked session's token gets what refresh would say, and
    // no cascade to the other session.
    client
        .logout(&phone.refresh, Some("global"))
        .await
        .assert_error(401, "session_revoked");
    assert_eq!(client.refresh(&laptop.refresh).await.status, StatusCode::OK);

    client
        .logout("garbage", None)
        .await
        .assert_error(401, "invalid_token");
    client
        .logout(&laptop.access, None)
        .await
        .assert_error(401, "invalid_token");
    client
        .logout(&laptop.refresh, Some("everywhere"))
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_global_revokes_every_session_of_the_user_only() {
    let server = TestServer::start().await;
    let client = &server.client;
    let sessions: Vec<Tokens> = futures_join(&server, "ana@example.com", 3).await;
    let someone_else = server.login("mo@example.com", None).await;

    assert_eq!(
        client
            .logout(&sessions[0].refresh, Some("global"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for tokens in &sessions {
        client
            .refresh(&tokens.refresh)
            .await
            .assert_error(401, "session_revoked");
        client
            .profile(&tokens.access)
            .await
            .assert_error(401, "session_revoked");
    }
    assert_eq!(
        client.refresh(&someone_else.refresh).await.status,
        StatusCode::OK
    );
}

async fn futures_join(server: &TestServer, email: &str, n: usize) -> Vec<Tokens> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(server.login(email, None).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_swept_from_the_file() {
    let server =
        TestServer::start_with(|c| c.lifetimes.session_ttl = std::time::Duration::from_secs(1))
            .await;
    let short = server.login("ana@example.com", None).await;
    let sid =
        latchkey::session::SessionId::from_hex(claims(&short.refresh)["sid"].as_str().unwrap())
            .unwrap();
    assert!(server
        .app
        .auth
        .store()
        .session(sid)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        server.app.sweep_expired_sessions().await.unwrap(),
        0,
        "not expired yet"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(server.app.sweep_expired_sessions().await.unwrap(), 1);
    assert!(server
        .app
        .auth
        .store()
        .session(sid)
        .await
        .unwrap()
        .is_none());
    // The access token ended with its session (its `exp` is capped at the
    // session's end).
    server
        .client
        .profile(&short.access)
        .await
        .assert_error(401, "token_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_with_old_parameters_are_upgraded_at_login() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("latchkey.redb");
    {
        // A user hashed with other (older) parameters.
        let mut config = test_config(data.path());
        config.argon2.memory_kib = 32;
        config.data = path.clone();
        let app = latchkey::app::App::start(config).await.unwrap();
        drop(app);
    }
    let server = TestServer::start_with(|c| c.data = path.clone()).await;
    let store = server.app.auth.store();
    let before = store
        .user_by_email("ana@example.com")
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(before.contains("m=32,"), "{before}");
    server.login("ana@example.com", None).await;
    let mut after = before.clone();
    for _ in 0..200 {
        after = store
            .user_by_email("ana@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        if after != before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(after.contains("m=64,"), "upgraded: {after}");
    server.login("ana@example.com", None).await;
}

/// Raw bytes on the socket: bodies that lie about their length or stream past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_and_oversized_bodies_get_4xx_not_5xx() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let address = server.url.trim_start_matches("http://").to_string();
    let send_raw = |raw: Vec<u8>| {
        let address = address.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(&raw).await.unwrap();
            stream.shutdown().await.unwrap(); // the client sends nothing more
            let mut answer = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(15),
                stream.read_to_end(&mut answer),
            );
            read.await.expect("the server answers or closes").ok();
            String::from_utf8_lossy(&answer).to_string()
        }
    };
    // Content-Length says 100, 10 bytes arrive, then the client half-closes.
    let truncated = b"POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\":1".to_vec();
    let answer = send_raw(truncated).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // Chunked, no length up front, 20 KiB in total.
    let mut chunked = b"POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = send_raw(chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A declared length over the limit is refused without reading the body.
    let declared = b"POST /auth/refresh HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 999999\r\n\r\n".to_vec();
    let answer = send_raw(declared).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Invalid UTF-8 inside JSON.
    let mut bad_utf8 = b"POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 14\r\nconnection: close\r\n\r\n".to_vec();
    bad_utf8.extend_from_slice(b"{\"email\":\"\xff\"}");
    let answer = send_raw(bad_utf8).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_database_for_the_next_start() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("latchkey.redb");
    let server = TestServer::start_with(|c| c.data = path.clone()).await;
    let tokens = server.login("ana@example.com", None).await;
    let app = std::sync::Arc::clone(&server.app);
    server.shutdown().await;
    drop(app); // the last handle: the store's writer finishes and the file is closed

    let server = TestServer::start_with(|c| c.data = path.clone()).await;
    assert_eq!(
        server.client.refresh(&tokens.refresh).await.status,
        StatusCode::OK
    );
}
