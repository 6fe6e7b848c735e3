//! The endpoints for other services: introspection (RFC 7662), revocation
//! (RFC 7009), the revocation feed, and server metadata (RFC 8414).
//!
//! Introspection and the feed need a verifier key (`--verifier-key-file`)
//! or the admin key; revocation needs none (the token is the credential, as
//! for a public client). Bodies are `application/x-www-form-urlencoded`, as
//! the RFCs say, or JSON with the same fields.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};

use super::{
    empty_response, json_response, read_body_limited, HttpError, HttpResponse, MAX_BODY_BYTES,
};
use crate::app::App;
use crate::auth::Introspection;
use crate::error::Error;
use crate::tokens::TokenType;

/// The feed's path, also named in the server metadata.
pub const FEED_PATH: &str = "/oauth/revocations";

/// Checks the caller's verifier key (or the admin key), in constant time
/// against each. 404 when neither kind of key is configured.
fn authorize_verifier(app: &App, request: &Request<Incoming>) -> Result<(), HttpError> {
    let config = &app.config;
    if config.verifier_keys.is_empty() && config.admin_key.is_none() {
        return Err(HttpError::NotFound);
    }
    let presented = super::decode::bearer_token(request.headers().get(header::AUTHORIZATION))
        .map_err(|_| Error::InvalidClient)?;
    let mut matched = subtle::Choice::from(0);
    for key in config.verifier_keys.iter().chain(&config.admin_key) {
        matched |= subtle::ConstantTimeEq::ct_eq(key.bytes(), presented.as_bytes());
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Error::InvalidClient.into())
    }
}

/// `token` and `token_type_hint` from a form or JSON body.
struct TokenRequest {
    token: Option<String>,
    hint: Option<TokenType>,
}

async fn read_token_request(
    request: Request<Incoming>,
    timeout: Duration,
) -> Result<TokenRequest, HttpError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let form = match content_type.as_deref() {
        Some("application/x-www-form-urlencoded") => true,
        Some("application/json") => false,
        _ => return Err(HttpError::UnsupportedMediaType),
    };
    let body = read_body_limited(request, timeout, MAX_BODY_BYTES).await?;
    let fields: Vec<(String, String)> = if form {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        let object: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|_| Error::InvalidRequest("the body is not a JSON object".into()))?;
        let mut fields = Vec::new();
        for name in ["token", "token_type_hint"] {
            match object.get(name) {
                None => {}
                Some(Value::String(value)) => fields.push((name.to_string(), value.clone())),
                Some(_) => {
                    return Err(Error::InvalidRequest(format!("{name} must be a string")).into())
                }
            }
        }
        fields
    };
    let mut token = None;
    let mut hint = None;
    for (name, value) in fields {
        let slot = match name.as_str() {
            "token" => &mut token,
            "token_type_hint" => &mut hint,
            // Other parameters (client_id, …) are ignored, as RFC 7662 allows.
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Error::InvalidRequest(format!("{name} is given twice")).into());
        }
    }
    Ok(TokenRequest {
        token: token.filter(|t| !t.is_empty()),
        // Only a hint: an unknown value is ignored (RFC 7662 §2.1).
        hint: match hint.as_deref() {
            Some("access_token") => Some(TokenType::Access),
            Some("refresh_token") => Some(TokenType::Refresh),
            _ => None,
        },
    })
}

fn required_token(request: &TokenRequest) -> Result<&str, HttpError> {
    request
        .token
        .as_deref()
        .ok_or_else(|| Error::InvalidRequest("token is required".into()).into())
}

/// `POST /oauth/introspect`.
pub async fn introspect(app: &App, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
    authorize_verifier(app, &request)?;
    let parsed = read_token_request(request, app.config.body_timeout).await?;
    let token = required_token(&parsed)?;
    let answer = match app.auth.introspect(token, parsed.hint).await? {
        Introspection::Inactive => json!({ "active": false }),
        Introspection::Active { token_type, claims } => {
            let mut answer = json!({
                "active": true,
                "token_type": match token_type {
                    TokenType::Access => "access_token",
                    TokenType::Refresh => "refresh_token",
                },
                "sub": claims.sub,
                "sid": claims.sid,
                "jti": claims.jti,
                "iat": claims.iat,
                "exp": claims.exp,
            });
            let signing = &app.config.signing;
            if let Some(issuer) = &signing.issuer {
                answer["iss"] = json!(issuer);
            }
            match signing.audiences.as_slice() {
                [] => {}
                [one] => answer["aud"] = json!(one),
                many => answer["aud"] = json!(many),
            }
            if let Some(profile) = claims.profile.filter(|_| token_type == TokenType::Access) {
                answer["username"] = json!(profile.email);
            }
            answer
        }
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `POST /oauth/revoke`: 200 with an empty body for every token.
pub async fn revoke(app: &App, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
    let parsed = read_token_request(request, app.config.body_timeout).await?;
    let token = required_token(&parsed)?;
    app.auth.revoke_token(token, parsed.hint).await?;
    let mut response = empty_response(StatusCode::OK);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /oauth/revocations?after=CURSOR&wait=SECONDS`.
pub async fn revocation_feed(
    app: &App,
    request: &Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    authorize_verifier(app, request)?;
    let (mut after, mut wait) = (None, Duration::ZERO);
    for (name, value) in form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "after" => after = Some(value.into_owned()),
            "wait" => {
                let seconds: u64 = value.parse().map_err(|_| {
                    Error::InvalidRequest("wait must be a whole number of seconds".into())
                })?;
                if seconds > crate::revocations::MAX_WAIT.as_secs() {
                    return Err(Error::InvalidRequest("wait is at most 60 seconds".into()).into());
                }
                wait = Duration::from_secs(seconds);
            }
            _ => {}
        }
    }
    let mut stopping = app.stopping.subscribe();
    let stop = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let answer = app.revocations.read(after.as_deref(), wait, stop).await?;
    let entries: Vec<Value> = answer
        .entries
        .iter()
        .map(|e| json!({ "sid": e.sid, "sub": e.sub, "until": e.until }))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "revocations": entries, "cursor": answer.cursor }),
    ))
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414), with `--issuer`.
pub fn server_metadata(app: &App) -> Result<HttpResponse, HttpError> {
    let issuer = app
        .config
        .signing
        .issuer
        .as_deref()
        .ok_or(HttpError::NotFound)?;
    let base = issuer.trim_end_matches('/');
    let body = json!({
        "issuer": issuer,
        // No authorization endpoint: latchkey issues tokens at /auth/login.
        "response_types_supported": [],
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "revocation_endpoint_auth_methods_supported": ["none"],
        "latchkey_revocation_feed_endpoint": format!("{base}{FEED_PATH}"),
    });
    Ok(super::public_json(Bytes::from(body.to_string())))
}
