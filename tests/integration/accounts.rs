//! Accounts while running: sign-up, self-service, the admin API over TCP.

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use latchkey::auth::Registration;
use latchkey::secrets::Secret;

const ADMIN_KEY: &str = "an-admin-key-of-at-least-32-bytes-0123456789";

fn open_registration(limit: u32) -> Option<Registration> {
    Some(Registration {
        role_id: 1,
        per_address_per_hour: limit,
    })
}

async fn register(client: &HttpClient, body: Value) -> Response {
    client.post_json("/auth/register", &body).await
}

async fn with_bearer(
    client: &HttpClient,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Response {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    client.send(method, path, &headers, body).await
}

async fn patch_profile(client: &HttpClient, token: &str, change: Value) -> Response {
    with_bearer(client, Method::PATCH, "/auth/profile", token, Some(change)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_is_closed_by_default() {
    let server = TestServer::start().await;
    register(
        &server.client,
        json!({ "email": "new@example.com", "password": "a-good-password", "name": "New" }),
    )
    .await
    .assert_error(403, "registration_closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_creates_a_user_and_a_session_and_is_limited_per_address() {
    let server = TestServer::start_with(|c| c.registration = open_registration(3)).await;
    let client = &server.client;
    let created = register(
        client,
        json!({ "email": " New@Example.com", "password": "a-good-password", "name": "New User" }),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["user"]["email"], "new@example.com");
    assert_eq!(created.body["user"]["name"], "New User");
    assert_eq!(created.body["user"]["role_id"], 1);
    assert!(created.body["user"]["id"].is_string());
    assert_eq!(created.body["tokenType"], "Bearer");
    let tokens = Tokens::from_body(&created.body);
    assert_eq!(client.profile(&tokens.access).await.status, StatusCode::OK);
    assert_eq!(client.refresh(&tokens.refresh).await.status, StatusCode::OK);
    let again = json!({ "email": "new@example.com", "password": "a-good-password" });
    assert_eq!(
        client.post_json("/auth/login", &again).await.status,
        StatusCode::OK
    );

    register(
        client,
        json!({ "email": "NEW@example.com", "password": "another-password", "name": "X" }),
    )
    .await
    .assert_error(409, "email_taken");
    for bad in [
        json!({ "email": "not-an-email", "password": "a-good-password", "name": "X" }),
        json!({ "email": "a@example.com", "password": "short", "name": "X" }),
        json!({ "email": "a@example.com", "password": "x".repeat(1025), "name": "X" }),
        json!({ "email": "a@example.com", "password": "a-good-password", "name": "" }),
        json!({ "email": "a@example.com", "password": "a-good-password", "name": "n".repeat(201) }),
        json!({ "email": "a@example.com", "password": "a-good-password" }),
    ] {
        register(client, bad)
            .await
            .assert_error(400, "invalid_request");
    }
    register(
        client,
        json!({ "email": "web@example.com", "password": "a-good-password", "name": "W", "type": "web" }),
    )
    .await
    .assert_error(403, "role_not_allowed");
    // Three sign-ups (and attempts on taken emails) per address per hour.
    let second = register(
        client,
        json!({ "email": "second@example.com", "password": "a-good-password", "name": "S" }),
    )
    .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    let limited = register(
        client,
        json!({ "email": "third@example.com", "password": "a-good-password", "name": "T" }),
    )
    .await;
    limited.assert_error(429, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_changes_their_profile_and_tokens_follow_at_the_next_refresh() {
    let server = TestServer::start().await;
    let client = &server.client;
    let tokens = server.login("ana@example.com", None).await;
    let changed = patch_profile(
        client,
        &tokens.access,
        json!({ "name": "Ana B", "email": "Ana.B@example.com" }),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.body["profile"]["name"], "Ana B");
    assert_eq!(changed.body["profile"]["email"], "ana.b@example.com");
    let next = Tokens::from_body(&client.refresh(&tokens.refresh).await.body);
    let profile = client.profile(&next.access).await;
    assert_eq!(profile.body["profile"]["email"], "ana.b@example.com");
    assert_eq!(profile.body["profile"]["name"], "Ana B");

    patch_profile(client, &next.access, json!({ "email": "mo@example.com" }))
        .await
        .assert_error(409, "email_taken");
    patch_profile(client, &next.access, json!({}))
        .await
        .assert_error(400, "invalid_request");
    patch_profile(client, &next.access, json!({ "name": " " }))
        .await
        .assert_error(400, "invalid_request");
    patch_profile(client, "garbage", json!({ "name": "X" }))
        .await
        .assert_error(401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_every_other_session() {
    let server = TestServer::start().await;
    let client = &server.client;
    let phone = server.login("ana@example.com", None).await;
    let laptop = server.login("ana@example.com", None).await;
    let change = json!({ "currentPassword": PASSWORD, "newPassword": "a-brand-new-password" });
    let changed = with_bearer(
        client,
        Method::POST,
        "/auth/password",
        &phone.access,
        Some(change),
    )
    .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{}", changed.text);
    client
        .refresh(&laptop.refresh)
        .await
        .assert_error(401, "session_revoked");
    client
        .profile(&laptop.access)
        .await
        .assert_error(401, "session_revoked");
    assert_eq!(client.profile(&phone.access).await.status, StatusCode::OK);
    assert_eq!(client.refresh(&phone.refresh).await.status, StatusCode::OK);
    let old = json!({ "email": "ana@example.com", "password": PASSWORD });
    client
        .post_json("/auth/login", &old)
        .await
        .assert_error(401, "invalid_credentials");
    let new = json!({ "email": "ana@example.com", "password": "a-brand-new-password" });
    assert_eq!(
        client.post_json("/auth/login", &new).await.status,
        StatusCode::OK
    );

    // A wrong current password counts as a failed login.
    let other = server.login("mo@example.com", None).await;
    let wrong = json!({ "currentPassword": "not it", "newPassword": "whatever-password" });
    for _ in 0..5 {
        with_bearer(
            client,
            Method::POST,
            "/auth/password",
            &other.access,
            Some(wrong.clone()),
        )
        .await
        .assert_error(401, "invalid_credentials");
    }
    let right = json!({ "email": "mo@example.com", "password": PASSWORD });
    client
        .post_json("/auth/login", &right)
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_list_and_revoke_their_own_sessions() {
    let server = TestServer::start().await;
    let client = &server.client;
    let phone = server.login("ana@example.com", None).await;
    let laptop = server.login("ana@example.com", None).await;
    let listed = with_bearer(client, Method::GET, "/auth/sessions", &phone.access, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let sessions = listed.body["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    let phone_sid = claims(&phone.access)["sid"].as_str().unwrap().to_string();
    let laptop_sid = claims(&laptop.access)["sid"].as_str().unwrap().to_string();
    for session in &sessions {
        assert_eq!(
            session["current"],
            json!(session["id"] == phone_sid.as_str())
        );
        for field in ["createdAt", "lastUsedAt", "expiresAt"] {
            assert!(session[field].is_u64(), "{field}: {session}");
        }
    }
    let path = format!("/auth/sessions/{laptop_sid}");
    let revoked = with_bearer(client, Method::DELETE, &path, &phone.access, None).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    client
        .refresh(&laptop.refresh)
        .await
        .assert_error(401, "session_revoked");
    with_bearer(client, Method::DELETE, &path, &phone.access, None)
        .await
        .assert_error(404, "session_not_found");
    // Another user's session is not one of the caller's.
    let mo = server.login("mo@example.com", None).await;
    let path = format!("/auth/sessions/{phone_sid}");
    with_bearer(client, Method::DELETE, &path, &mo.access, None)
        .await
        .assert_error(404, "session_not_found");
    with_bearer(
        client,
        Method::DELETE,
        "/auth/sessions/zzz",
        &mo.access,
        None,
    )
    .await
    .assert_error(404, "session_not_found");
}

async fn admin_server() -> TestServer {
    TestServer::start_with(|c| {
        c.admin_key = Some(Secret::new(ADMIN_KEY.as_bytes().to_vec()).unwrap());
        c.admin_roles = vec![2];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_404_unless_configured_and_checks_who_calls() {
    let plain = TestServer::start().await;
    with_bearer(&plain.client, Method::GET, "/admin/users", ADMIN_KEY, None)
        .await
        .assert_error(404, "not_found");

    let server = admin_server().await;
    let client = &server.client;
    client
        .send(Method::GET, "/admin/users", &[], "")
        .await
        .assert_error(401, "invalid_token");
    with_bearer(client, Method::GET, "/admin/users", "wrong-key", None)
        .await
        .assert_error(401, "invalid_token");
    let mobile = server.login("mo@example.com", None).await; // role 1
    with_bearer(client, Method::GET, "/admin/users", &mobile.access, None)
        .await
        .assert_error(403, "forbidden");
    let admin = server.login("ana@example.com", None).await; // role 2, an admin role
    let by_role = with_bearer(client, Method::GET, "/admin/users", &admin.access, None).await;
    assert_eq!(by_role.status, StatusCode::OK, "{}", by_role.text);
    let by_key = with_bearer(client, Method::GET, "/admin/users", ADMIN_KEY, None).await;
    assert_eq!(by_key.status, StatusCode::OK);
    assert_eq!(by_key.body["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_manage_users_and_sessions() {
    let server = admin_server().await;
    let client = &server.client;
    let admin = |method: Method, path: &str, body: Option<Value>| {
        let (client, path) = (client.clone(), path.to_string());
        async move { with_bearer(&client, method, &path, ADMIN_KEY, body).await }
    };
    let created = admin(
        Method::POST,
        "/admin/users",
        Some(json!({ "email": "Cy@Example.com", "name": "Cy", "role_id": 1, "password": "cy-password-1" })),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let cy = created.body["user"].clone();
    assert_eq!(cy["email"], "cy@example.com");
    assert_eq!(cy["disabled"], false);
    assert!(cy["createdAt"].is_u64());
    assert!(cy.get("password_hash").is_none());
    let id = cy["id"].as_str().unwrap().to_string();
    admin(
        Method::POST,
        "/admin/users",
        Some(json!({ "email": "cy@example.com", "name": "Cy", "role_id": 1, "password": "cy-password-1" })),
    )
    .await
    .assert_error(409, "email_taken");

    // Pages by id.
    let first = admin(Method::GET, "/admin/users?limit=2", None).await;
    assert_eq!(first.body["users"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["total"], 3);
    let next = first.body["next"].as_str().unwrap().to_string();
    let second = admin(
        Method::GET,
        &format!("/admin/users?limit=2&after={next}"),
        None,
    )
    .await;
    assert_eq!(second.body["users"][0]["id"], id.as_str());
    assert_eq!(second.body["next"], Value::Null);
    let found = admin(Method::GET, "/admin/users?email=CY%40example.com", None).await;
    assert_eq!(found.body["users"][0]["id"], id.as_str());
    admin(Method::GET, "/admin/users?limit=1001", None)
        .await
        .assert_error(400, "invalid_request");

    let got = admin(Method::GET, &format!("/admin/users/{id}"), None).await;
    assert_eq!(got.body["user"]["name"], "Cy");
    admin(Method::GET, "/admin/users/999", None)
        .await
        .assert_error(404, "user_not_found");

    // A session, then a new password: the session ends.
    let cy_login = json!({ "email": "cy@example.com", "password": "cy-password-1" });
    let tokens = Tokens::from_body(&client.post_json("/auth/login", &cy_login).await.body);
    let sessions = admin(Method::GET, &format!("/admin/users/{id}/sessions"), None).await;
    assert_eq!(sessions.body["sessions"].as_array().unwrap().len(), 1);
    assert!(sessions.body["sessions"][0].get("current").is_none());
    let patched = admin(
        Method::PATCH,
        &format!("/admin/users/{id}"),
        Some(json!({ "password": "cy-password-2", "role_id": 2, "name": "Cy Two" })),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["user"]["role_id"], 2);
    client
        .refresh(&tokens.refresh)
        .await
        .assert_error(401, "session_revoked");

    // Disabled: the right password gets 403, a wrong one 401; sessions end.
    let login2 = json!({ "email": "cy@example.com", "password": "cy-password-2" });
    let tokens = Tokens::from_body(&client.post_json("/auth/login", &login2).await.body);
    let disabled = admin(
        Method::PATCH,
        &format!("/admin/users/{id}"),
        Some(json!({ "disabled": true })),
    )
    .await;
    assert_eq!(disabled.body["user"]["disabled"], true);
    client
        .post_json("/auth/login", &login2)
        .await
        .assert_error(403, "user_disabled");
    let wrong = json!({ "email": "cy@example.com", "password": "not-the-password" });
    client
        .post_json("/auth/login", &wrong)
        .await
        .assert_error(401, "invalid_credentials");
    client
        .refresh(&tokens.refresh)
        .await
        .assert_error(401, "session_revoked");
    admin(
        Method::PATCH,
        &format!("/admin/users/{id}"),
        Some(json!({ "disabled": false })),
    )
    .await;
    let tokens = Tokens::from_body(&client.post_json("/auth/login", &login2).await.body);

    // Revoke one session, all sessions, and delete.
    let sid = claims(&tokens.access)["sid"].as_str().unwrap().to_string();
    let revoke = admin(Method::DELETE, &format!("/admin/sessions/{sid}"), None).await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    client
        .refresh(&tokens.refresh)
        .await
        .assert_error(401, "session_revoked");
    admin(Method::DELETE, &format!("/admin/sessions/{sid}"), None)
        .await
        .assert_error(404, "session_not_found");
    let tokens = Tokens::from_body(&client.post_json("/auth/login", &login2).await.body);
    let all = admin(Method::DELETE, &format!("/admin/users/{id}/sessions"), None).await;
    assert_eq!(all.status, StatusCode::NO_CONTENT);
    client
        .profile(&tokens.access)
        .await
        .assert_error(401, "session_revoked");
    let deleted = admin(Method::DELETE, &format!("/admin/users/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    admin(Method::GET, &format!("/admin/users/{id}"), None)
        .await
        .assert_error(404, "user_not_found");
    client
        .post_json("/auth/login", &login2)
        .await
        .assert_error(401, "invalid_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_administrator_loses_access_at_once_and_file_routes_stay_local() {
    let server = admin_server().await;
    let client = &server.client;
    let ana = server.login("ana@example.com", None).await; // role 2: an admin role
    assert_eq!(
        with_bearer(client, Method::GET, "/admin/users", &ana.access, None)
            .await
            .status,
        StatusCode::OK
    );
    let id = claims(&ana.access)["sub"].as_str().unwrap().to_string();
    let demoted = with_bearer(
        client,
        Method::PATCH,
        &format!("/admin/users/{id}"),
        ADMIN_KEY,
        Some(json!({ "role_id": 1 })),
    )
    .await;
    assert_eq!(demoted.status, StatusCode::OK);
    // The same, still unexpired token no longer opens the admin API.
    with_bearer(client, Method::GET, "/admin/users", &ana.access, None)
        .await
        .assert_error(403, "forbidden");
    // Backup, import and export are not on the public port.
    for (method, path) in [
        (Method::POST, "/admin/backup"),
        (Method::POST, "/admin/users/import"),
        (Method::GET, "/admin/users/export"),
    ] {
        with_bearer(
            client,
            method,
            path,
            ADMIN_KEY,
            Some(json!({ "path": "/tmp/x" })),
        )
        .await
        .assert_error(404, "not_found");
    }
    // An expired or revoked token is invalid_token here.
    assert_eq!(
        client.logout(&ana.refresh, None).await.status,
        StatusCode::NO_CONTENT
    );
    with_bearer(client, Method::GET, "/admin/users", &ana.access, None)
        .await
        .assert_error(401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_changes_are_limited_per_user() {
    let server = TestServer::start().await;
    let tokens = server.login("ana@example.com", None).await;
    for n in 0..10 {
        let change = json!({ "email": format!("ana{n}@example.com") });
        let answer = with_bearer(
            &server.client,
            Method::PATCH,
            "/auth/profile",
            &tokens.access,
            Some(change),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
    patch_profile(
        &server.client,
        &tokens.access,
        json!({ "email": "mo@example.com" }),
    )
    .await
    .assert_error(429, "rate_limited");
    // Names are not limited.
    let name = patch_profile(&server.client, &tokens.access, json!({ "name": "Ana" })).await;
    assert_eq!(name.status, StatusCode::OK);
}
