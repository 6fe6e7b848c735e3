//! Signing keys over real HTTP: every algorithm verified against the served
//! JWKS by independent verifiers (the `jsonwebtoken` crate, PyJWT, Node's
//! `jose`), forged tokens refused, rotation under load, typed tokens,
//! issuer and audience, secret rollover, and the `keys` commands.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use hyper::Method;
use latchkey::keys::{KeyFile, SigningAlg};
use latchkey::secrets::Secret;
use serde_json::{json, Value};

use crate::common::*;

/// The README's Rust verifier, as the README shows it.
#[path = "../verifiers/verify.rs"]
mod readme_rust_verifier;

const ADMIN_KEY: &str = "an-admin-key-for-the-signing-tests-0123456789";
const ASYMMETRIC: [SigningAlg; 3] = [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256];

async fn server(alg: SigningAlg) -> TestServer {
    TestServer::start_with(|config| {
        config.signing.alg = alg;
        config.admin_key = Some(Secret::new(ADMIN_KEY.as_bytes().to_vec()).unwrap());
    })
    .await
}

async fn jwks(client: &HttpClient) -> Response {
    client
        .send(Method::GET, "/.well-known/jwks.json", &[], Bytes::new())
        .await
}

async fn rotate(client: &HttpClient, now: bool) -> Response {
    let bearer = format!("Bearer {ADMIN_KEY}");
    client
        .send(
            Method::POST,
            "/admin/keys/rotate",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            json!({ "now": now }).to_string(),
        )
        .await
}

/// Verifies `token` with the `jsonwebtoken` crate and the JWK of its `kid`
/// from `jwks`, the algorithm taken from the JWK.
fn verify_with_jsonwebtoken(token: &str, jwks: &Value) -> Value {
    use jsonwebtoken::jwk::JwkSet;
    let set: JwkSet = serde_json::from_value(jwks.clone()).expect("a JWK set");
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.expect("a kid");
    let jwk = set.find(&kid).expect("the token's key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let alg: jsonwebtoken::Algorithm = jwk
        .common
        .key_algorithm
        .map(|a| a.to_string().parse().unwrap())
        .expect("the JWK names its algorithm");
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("verifies with the published key")
        .claims
}

fn assert_public_only(jwks: &Value) {
    for key in jwks["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} in {key}"
            );
        }
        assert_eq!(key["use"], "sig", "{key}");
        assert!(key["kid"].is_string() && key["alg"].is_string(), "{key}");
    }
}

#[tokio::test]
async fn every_algorithm_signs_tokens_that_verify_against_the_published_jwks() {
    for alg in ASYMMETRIC {
        let server = server(alg).await;
        let tokens = server.login("mo@example.com", None).await;
        let header = jwt_part(&tokens.access, 0);
        assert_eq!(header["alg"], alg.as_str());
        assert_eq!(header["typ"], "at+jwt");
        let answer = jwks(&server.client).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.headers["cache-control"], "public, max-age=300",
            "{alg:?}"
        );
        assert_public_only(&answer.body);
        let keys = answer.body["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{}", answer.text);
        assert_eq!(keys[0]["kid"], header["kid"]);
        assert_eq!(keys[0]["alg"], alg.as_str());
        let claims = verify_with_jsonwebtoken(&tokens.access, &answer.body);
        assert_eq!(claims["type"], "access");
        assert!(claims["sid"].is_string() && claims["jti"].is_string());
        assert_eq!(claims["profile"]["email"], "mo@example.com");
        // Refresh tokens are latchkey's own: HS256 with the secret, their own type.
        let refresh_header = jwt_part(&tokens.refresh, 0);
        assert_eq!(refresh_header["alg"], "HS256");
        assert_eq!(refresh_header["typ"], "refresh+jwt");
        // Both work as before.
        assert_eq!(server.client.profile(&tokens.access).await.status, 200);
        let refreshed = server.client.refresh(&tokens.refresh).await;
        assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    }
}

#[tokio::test]
async fn under_hs256_the_jwks_is_empty_and_tokens_verify_with_the_secret() {
    let server = TestServer::start().await;
    let answer = jwks(&server.client).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({ "keys": [] }));
    let tokens = server.login("mo@example.com", None).await;
    let header = jwt_part(&tokens.access, 0);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].as_str().unwrap().starts_with("hs256-"));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let claims = jsonwebtoken::decode::<Value>(&tokens.access, &key, &validation)
        .unwrap()
        .claims;
    for claim in ["sub", "type", "profile", "iat", "exp", "jti", "sid"] {
        assert!(claims.get(claim).is_some(), "{claim} in {claims}");
    }
    assert!(claims.get("iss").is_none() && claims.get("aud").is_none());
}

/// A token with `header` and `claims`, HMAC-signed with `secret` (or, for
/// `alg: none`, unsigned).
fn forge(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    if header["alg"] == "none" {
        return format!("{input}.");
    }
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{signature}")
}

#[tokio::test]
async fn algorithm_confusion_none_and_unknown_or_hostile_kids_are_refused() {
    for alg in [SigningAlg::EdDSA, SigningAlg::RS256] {
        let server = server(alg).await;
        let tokens = server.login("mo@example.com", None).await;
        let claims = claims(&tokens.access);
        let answer = jwks(&server.client).await;
        let jwk = &answer.body["keys"][0];
        let kid = jwk["kid"].as_str().unwrap();
        // HS256 with the public key as the HMAC secret, in every form an
        // attacker might try.
        let mut public_forms: Vec<Vec<u8>> = vec![jwk.to_string().into_bytes()];
        for member in ["x", "n"] {
            if let Some(text) = jwk[member].as_str() {
                public_forms.push(text.as_bytes().to_vec());
                public_forms.push(B64.decode(text).unwrap());
            }
        }
        let mut forged = Vec::new();
        for secret in &public_forms {
            let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
            forged.push(forge(&header, &claims, secret));
        }
        forged.push(forge(
            &json!({ "alg": "none", "typ": "at+jwt", "kid": kid }),
            &claims,
            b"",
        ));
        forged.push(forge(
            &json!({ "alg": "none", "typ": "at+jwt" }),
            &claims,
            b"",
        ));
        // The right algorithm but a key latchkey does not have.
        let other = latchkey::keys::material::generate_pkcs8(SigningAlg::EdDSA).unwrap();
        for hostile_kid in [
            "no-such-key",
            "../../../../etc/passwd",
            "/dev/zero",
            "https://attacker.example/jwks.json",
            kid,
        ] {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.typ = Some("at+jwt".into());
            header.kid = Some(hostile_kid.into());
            let key = jsonwebtoken::EncodingKey::from_ed_der(&other);
            forged.push(jsonwebtoken::encode(&header, &claims, &key).unwrap());
        }
        for token in &forged {
            let answer = server.client.profile(token).await;
            answer.assert_error(401, "invalid_token");
        }
        // The genuine token still works.
        assert_eq!(server.client.profile(&tokens.access).await.status, 200);
    }
}

#[tokio::test]
async fn token_types_are_checked_by_header_and_claim() {
    let server = TestServer::start().await;
    let tokens = server.login("mo@example.com", None).await;
    server
        .client
        .refresh(&tokens.access)
        .await
        .assert_error(401, "invalid_token");
    server
        .client
        .profile(&tokens.refresh)
        .await
        .assert_error(401, "invalid_token");
    // With the secret: a refresh claim under the access header, and the
    // reverse, and the untyped header of old versions on a new database.
    let kid = jwt_part(&tokens.refresh, 0)["kid"].clone();
    let refresh_claims = claims(&tokens.refresh);
    let access_claims = claims(&tokens.access);
    for (typ, claims, path) in [
        ("at+jwt", &refresh_claims, "/auth/refresh"),
        ("JWT", &refresh_claims, "/auth/refresh"),
        ("refresh+jwt", &access_claims, "/auth/profile"),
        ("JWT", &access_claims, "/auth/profile"),
    ] {
        let header = json!({ "alg": "HS256", "typ": typ, "kid": kid });
        let token = forge(&header, claims, SECRET.as_bytes());
        let answer = if path == "/auth/refresh" {
            server.client.refresh(&token).await
        } else {
            server.client.profile(&token).await
        };
        answer.assert_error(401, "invalid_token");
    }
    // The same forgeries with the right header pass: the check above is the header.
    let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
    let token = forge(&header, &access_claims, SECRET.as_bytes());
    assert_eq!(server.client.profile(&token).await.status, 200);
}

#[tokio::test]
async fn issuer_and_audience_are_added_and_enforced() {
    let server = TestServer::start_with(|config| {
        config.signing.alg = SigningAlg::EdDSA;
        config.signing.issuer = Some("https://auth.example.com".into());
        config.signing.audiences = vec!["api".into(), "billing".into()];
    })
    .await;
    let tokens = server.login("mo@example.com", None).await;
    let access_claims = claims(&tokens.access);
    assert_eq!(access_claims["iss"], "https://auth.example.com");
    assert_eq!(access_claims["aud"], json!(["api", "billing"]));
    assert!(claims_of_refresh_lack_iss(&tokens.refresh));
    assert_eq!(server.client.profile(&tokens.access).await.status, 200);

    // An access token without `iss`, minted with the secret for a live
    // session of a server that requires one, is refused.
    let strict = TestServer::start_with(|config| {
        config.signing.issuer = Some("https://auth.example.com".into());
    })
    .await;
    let own = strict.login("mo@example.com", None).await;
    let mut own_claims = claims(&own.access);
    own_claims.as_object_mut().unwrap().remove("iss");
    let header = jwt_part(&own.access, 0);
    let token = forge(&header, &own_claims, SECRET.as_bytes());
    strict
        .client
        .profile(&token)
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(strict.client.profile(&own.access).await.status, 200);

    let audience_only = TestServer::start_with(|config| {
        config.signing.audiences = vec!["api".into()];
    })
    .await;
    let own = audience_only.login("mo@example.com", None).await;
    assert_eq!(claims(&own.access)["aud"], "api");
    let header = jwt_part(&own.access, 0);
    for aud in [json!("other"), json!(["other", "more"]), Value::Null] {
        let mut forged_claims = claims(&own.access);
        if aud.is_null() {
            forged_claims.as_object_mut().unwrap().remove("aud");
        } else {
            forged_claims["aud"] = aud;
        }
        let token = forge(&header, &forged_claims, SECRET.as_bytes());
        audience_only
            .client
            .profile(&token)
            .await
            .assert_error(401, "invalid_token");
    }
}

fn claims_of_refresh_lack_iss(refresh: &str) -> bool {
    let claims = claims(refresh);
    claims.get("iss").is_none() && claims.get("aud").is_none()
}

#[tokio::test]
async fn rotation_under_refresh_load_logs_nobody_out() {
    let server = Arc::new(server(SigningAlg::EdDSA).await);
    let before = server.login("mo@example.com", None).await;
    let mut chains = Vec::new();
    for _ in 0..12 {
        chains.push(server.login("mo@example.com", None).await);
    }
    let failures = Arc::new(AtomicUsize::new(0));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let kids = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for chain in chains {
        let (server, failures, refreshes, kids) = (
            Arc::clone(&server),
            Arc::clone(&failures),
            Arc::clone(&refreshes),
            Arc::clone(&kids),
        );
        tasks.push(tokio::spawn(async move {
            let mut refresh = chain.refresh;
            while Instant::now() < deadline {
                let answer = server.client.refresh(&refresh).await;
                if answer.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("refresh failed: {}", answer.text);
                    return;
                }
                let tokens = Tokens::from_body(&answer.body);
                if server.client.profile(&tokens.access).await.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let kid = jwt_part(&tokens.access, 0)["kid"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let mut seen = kids.lock().unwrap();
                if !seen.contains(&kid) {
                    seen.push(kid);
                }
                drop(seen);
                refresh = tokens.refresh;
                refreshes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Rotations while the chains run: at once, ahead then promoted, at once.
    for now in [true, false, true, true] {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let answer = rotate(&server.client, now).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(refreshes.load(Ordering::Relaxed) > 50);
    let kids = kids.lock().unwrap().clone();
    assert!(kids.len() >= 3, "access tokens from several keys: {kids:?}");
    // Every key that signed is published, and the access token from before
    // the rotations still works, here and with an independent verifier.
    let published = jwks(&server.client).await.body;
    assert_public_only(&published);
    for kid in &kids {
        assert!(
            published["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid.as_str()),
            "{kid} published"
        );
    }
    assert_eq!(server.client.profile(&before.access).await.status, 200);
    verify_with_jsonwebtoken(&before.access, &published);
    let list = server
        .client
        .send(
            Method::GET,
            "/admin/keys",
            &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
            Bytes::new(),
        )
        .await;
    let states: Vec<&str> = list.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "current").count(),
        1,
        "{}",
        list.text
    );
    assert!(
        states.iter().filter(|s| **s == "previous").count() >= 3,
        "{}",
        list.text
    );
}

#[tokio::test]
async fn a_grace_replay_after_a_rotation_returns_the_identical_refresh_token() {
    let server = server(SigningAlg::ES256).await;
    let first = server.login("mo@example.com", None).await;
    let rotated = server.client.refresh(&first.refresh).await;
    assert_eq!(rotated.status, 200);
    assert_eq!(rotate(&server.client, true).await.status, 200);
    let replay = server.client.refresh(&first.refresh).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(
        replay.body["refreshToken"], rotated.body["refreshToken"],
        "byte-identical"
    );
    // The replay's access token is signed with the new key.
    let old_kid = jwt_part(rotated.body["accessToken"].as_str().unwrap(), 0)["kid"].clone();
    let new_kid = jwt_part(replay.body["accessToken"].as_str().unwrap(), 0)["kid"].clone();
    assert_ne!(old_kid, new_kid);
}

#[tokio::test]
async fn a_pending_key_is_published_first_and_rotation_of_hs256_is_refused() {
    let server = server(SigningAlg::EdDSA).await;
    let before = jwt_part(&server.login("mo@example.com", None).await.access, 0)["kid"].clone();
    let answer = rotate(&server.client, false).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let states: Vec<Value> = answer.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].clone())
        .collect();
    assert_eq!(states, vec![json!("next"), json!("current")]);
    assert_eq!(
        jwks(&server.client).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Still signing with the old key for the JWKS cache lifetime.
    let during = jwt_part(&server.login("mo@example.com", None).await.access, 0)["kid"].clone();
    assert_eq!(during, before);
    // A second rotation while one is pending is refused.
    rotate(&server.client, false)
        .await
        .assert_error(409, "cannot_rotate");

    let hs = TestServer::start_with(|config| {
        config.admin_key = Some(Secret::new(ADMIN_KEY.as_bytes().to_vec()).unwrap());
    })
    .await;
    rotate(&hs.client, true)
        .await
        .assert_error(409, "cannot_rotate");
}

#[tokio::test]
async fn a_key_file_signs_and_is_published_under_its_thumbprint() {
    let der = latchkey::keys::material::generate_pkcs8(SigningAlg::ES256).unwrap();
    let pem = pem(&der);
    let file = KeyFile::parse(pem.as_bytes()).unwrap();
    let kid = file.kid.clone();
    let server = TestServer::start_with(|config| {
        config.signing.alg = SigningAlg::ES256;
        config.signing.key_file = Some(file);
        config.admin_key = Some(Secret::new(ADMIN_KEY.as_bytes().to_vec()).unwrap());
    })
    .await;
    let tokens = server.login("mo@example.com", None).await;
    assert_eq!(jwt_part(&tokens.access, 0)["kid"], kid.as_str());
    let published = jwks(&server.client).await.body;
    assert_eq!(published["keys"][0]["kid"], kid.as_str());
    verify_with_jsonwebtoken(&tokens.access, &published);
    rotate(&server.client, true)
        .await
        .assert_error(409, "cannot_rotate");
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

// ---- the real binary: restarts, switching, secrets, the keys commands ------

const SEED: &str = "mo@example.com:1:Mo Mobile:correct horse battery";

fn serve(data: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--secret", SECRET, "--seed-user", SEED];
    args.extend(extra);
    ServerProcess::start(data, &args)
}

fn db(data: &Path) -> String {
    data.join("latchkey.redb").display().to_string()
}

fn keys_list(data: &Path) -> Vec<Value> {
    let output = run_cli(&["keys", "list", "--json", "--data", &db(data)], "");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn keys_are_kept_across_restarts_and_rotate_through_the_socket_and_the_file() {
    let (_dir, data) = data_dir();
    let server = serve(&data, &["--signing-alg", "EdDSA"]);
    let first = login(&server.client, "mo@example.com", None).await;
    let first_kid = jwt_part(&first.access, 0)["kid"].clone();
    let listed = keys_list(&data);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "current");
    assert_eq!(listed[0]["kid"], first_kid);

    // Through the admin socket, while the server runs.
    let output = run_cli(&["keys", "rotate", "--data", &db(&data)], "");
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        table.contains("next") && table.contains("current"),
        "{table}"
    );
    assert_eq!(
        jwks(&server.client).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let output = run_cli(&["keys", "rotate", "--now", "--data", &db(&data)], "");
    assert!(output.status.success(), "{output:?}");
    let second = login(&server.client, "mo@example.com", None).await;
    let second_kid = jwt_part(&second.access, 0)["kid"].clone();
    assert_ne!(first_kid, second_kid);
    assert_eq!(server.client.profile(&first.access).await.status, 200);
    assert_eq!(server.terminate().code(), Some(0));

    // On the stopped file.
    let output = run_cli(&["keys", "rotate", "--now", "--data", &db(&data)], "");
    assert!(output.status.success(), "{output:?}");
    let states: Vec<String> = keys_list(&data)
        .iter()
        .filter(|k| k["alg"] == "EdDSA")
        .map(|k| k["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["current", "previous", "previous"]);

    let server = serve(&data, &["--signing-alg", "EdDSA"]);
    let published = jwks(&server.client).await.body;
    assert_eq!(published["keys"].as_array().unwrap().len(), 3);
    let third = login(&server.client, "mo@example.com", None).await;
    let third_kid = jwt_part(&third.access, 0)["kid"].clone();
    assert!(third_kid != first_kid && third_kid != second_kid);
    // Every earlier token still works after the restart.
    for tokens in [&first, &second] {
        assert_eq!(server.client.profile(&tokens.access).await.status, 200);
        verify_with_jsonwebtoken(&tokens.access, &published);
    }
    assert_eq!(server.client.refresh(&first.refresh).await.status, 200);
}

#[tokio::test]
async fn switching_from_hs256_to_eddsa_logs_nobody_out_and_ends_hs256_access_tokens() {
    let (_dir, data) = data_dir();
    let server = serve(&data, &[]);
    let before = login(&server.client, "mo@example.com", None).await;
    assert_eq!(server.terminate().code(), Some(0));

    let server = serve(&data, &["--signing-alg", "EdDSA"]);
    assert_eq!(server.client.profile(&before.access).await.status, 200);
    let refreshed = server.client.refresh(&before.refresh).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    assert_eq!(
        jwt_part(refreshed.body["accessToken"].as_str().unwrap(), 0)["alg"],
        "EdDSA"
    );
    // Whoever still holds the secret cannot mint access tokens any more.
    let mut minted_claims = claims(&before.access);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    minted_claims["iat"] = json!(now + 1);
    minted_claims["exp"] = json!(now + 600);
    let minted = forge(
        &jwt_part(&before.access, 0),
        &minted_claims,
        SECRET.as_bytes(),
    );
    server
        .client
        .profile(&minted)
        .await
        .assert_error(401, "invalid_token");
}

#[tokio::test]
async fn a_previous_secret_keeps_tokens_of_the_old_secret_working() {
    let (_dir, data) = data_dir();
    let server = serve(&data, &[]);
    let before = login(&server.client, "mo@example.com", None).await;
    let spare = login(&server.client, "mo@example.com", None).await;
    assert_eq!(server.terminate().code(), Some(0));

    let new_secret = "a-new-secret-for-the-rollover-test-0123456789";
    let args = [
        "--secret",
        new_secret,
        "--previous-secret",
        SECRET,
        "--seed-user",
        SEED,
    ];
    let server = ServerProcess::start(&data, &args);
    assert_eq!(server.client.profile(&before.access).await.status, 200);
    let refreshed = server.client.refresh(&before.refresh).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let tokens = Tokens::from_body(&refreshed.body);
    assert_ne!(
        jwt_part(&tokens.refresh, 0)["kid"],
        jwt_part(&before.refresh, 0)["kid"]
    );
    assert_eq!(server.client.refresh(&tokens.refresh).await.status, 200);
    assert_eq!(server.terminate().code(), Some(0));

    // Without it, tokens of the old secret are refused.
    let server = ServerProcess::start(&data, &args[..2]);
    server
        .client
        .refresh(&spare.refresh)
        .await
        .assert_error(401, "invalid_token");
}

#[test]
fn bad_signing_configurations_are_refused_at_start() {
    let (_dir, data) = data_dir();
    let db = db(&data);
    let key_path = data.join("key.pem");
    let der = latchkey::keys::material::generate_pkcs8(SigningAlg::ES256).unwrap();
    std::fs::write(&key_path, pem(&der)).unwrap();
    let key = key_path.display().to_string();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (extra, expected) in [
        (
            vec!["--signing-alg", "ES256", "--signing-key-file", &key],
            "other users",
        ),
        (vec!["--signing-key-file", &key], "--signing-alg"),
        (vec!["--signing-alg", "XS999"], "signing-alg"),
        (vec!["--previous-secret", "short"], "32 bytes"),
        (vec!["--issuer", "auth.example.com"], "--issuer"),
    ] {
        let output = run_failing_serve(&db, &extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} started");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = run_failing_serve(&db, &["--signing-alg", "EdDSA", "--signing-key-file", &key]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ES256 key"), "{stderr}");
}

// ---- verifiers in other languages ----------------------------------------

/// The folder of the verifier scripts.
fn verifiers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers")
}

/// PyJWT (in a virtualenv under the target folder) and jose (in
/// `tests/verifiers/node_modules`), installed on first use from the pinned
/// versions in `tests/verifiers`. `Err` says why they are missing.
pub(crate) fn verifier_tools() -> Result<(PathBuf, PathBuf), String> {
    static TOOLS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let run = |command: &mut std::process::Command| -> Result<(), String> {
                let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
                if output.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{command:?} failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    ))
                }
            };
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("verifier-venv");
            let python = venv.join("bin/python");
            let has_jwt = |python: &Path| {
                std::process::Command::new(python)
                    .args(["-c", "import jwt, cryptography"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if !has_jwt(&python) {
                run(std::process::Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv))?;
                run(std::process::Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(verifiers().join("requirements.txt")))?;
            }
            if !verifiers().join("node_modules/jose").exists() {
                run(std::process::Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                    .arg(verifiers()))?;
            }
            Ok((python, PathBuf::from("node")))
        })
        .clone()
}

async fn run_verifier(program: &Path, script: &str, args: &[&str]) -> Result<Value, String> {
    let mut command = std::process::Command::new(program);
    command.arg(verifiers().join(script)).args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).to_string());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_readme_verifiers_accept_tokens_of_every_algorithm_across_a_rotation() {
    let tools = match tokio::task::spawn_blocking(verifier_tools).await.unwrap() {
        Ok(tools) => Some(tools),
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED the PyJWT and jose checks: they could not be installed ({why})");
            None
        }
        Err(why) => panic!("the verifier libraries are needed in CI: {why}"),
    };
    let scripts = tools
        .iter()
        .flat_map(|(python, node)| [(python.clone(), "verify.py"), (node.clone(), "verify.mjs")])
        .collect::<Vec<_>>();
    for alg in ASYMMETRIC {
        let server = TestServer::start_with(|config| {
            config.signing.alg = alg;
            config.signing.issuer = Some("https://auth.example.com".into());
            config.signing.audiences = vec!["api".into()];
            config.admin_key = Some(Secret::new(ADMIN_KEY.as_bytes().to_vec()).unwrap());
        })
        .await;
        let before = server.login("mo@example.com", None).await;
        let cached: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(jwks(&server.client).await.body).unwrap();
        // Rotate at once: the verifiers must fetch the key set again for
        // the new key, and still accept the old one.
        assert_eq!(rotate(&server.client, true).await.status, 200);
        let after = server.login("mo@example.com", None).await;
        let fresh: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(jwks(&server.client).await.body).unwrap();
        let (issuer, audience) = ("https://auth.example.com", "api");
        for token in [&before.access, &after.access] {
            let verified = readme_rust_verifier::verify(token, &fresh, issuer, audience)
                .unwrap_or_else(|e| panic!("verify.rs refused a {alg:?} token: {e}"));
            assert_eq!(verified["sub"], claims(token)["sub"]);
            let args = [&server.url, token.as_str(), issuer, audience];
            for (program, script) in &scripts {
                let verified = run_verifier(program, script, &args)
                    .await
                    .unwrap_or_else(|e| panic!("{script} refused a {alg:?} token: {e}"));
                assert_eq!(verified["sub"], claims(token)["sub"]);
            }
        }
        // A cached set without the new key says so (the caller refetches).
        assert!(readme_rust_verifier::verify(&after.access, &cached, issuer, audience).is_err());
        // All refuse a refresh token, a broken signature, another audience.
        // A changed character well inside the signature (the last one may
        // only hold padding bits).
        let mut broken = after.access.clone().into_bytes();
        let at = broken.len() - 10;
        broken[at] = if broken[at] == b'A' { b'B' } else { b'A' };
        let broken = String::from_utf8(broken).unwrap();
        for (token, aud) in [
            (&after.refresh, audience),
            (&broken, audience),
            (&after.access, "other"),
        ] {
            assert!(readme_rust_verifier::verify(token, &fresh, issuer, aud).is_err());
            let args = [&server.url, token.as_str(), issuer, aud];
            for (program, script) in &scripts {
                assert!(
                    run_verifier(program, script, &args).await.is_err(),
                    "{script} accepted a bad token"
                );
            }
        }
    }
}
