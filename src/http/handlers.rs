//! One handler per endpoint: parse, call a use case, serialise.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::{
    admin, decode, empty_response, json_response, read_json_body, HttpError, HttpResponse,
};
use crate::app::App;
use crate::auth::{Caller, ProfileChange, SignUp};
use crate::auth::{LoginAttempt, TokenPair};
use crate::error::Error;
use crate::session::SessionId;

fn token_pair_response(pair: &TokenPair) -> HttpResponse {
    json_response(
        StatusCode::OK,
        &json!({
            "accessToken": pair.access_token,
            "refreshToken": pair.refresh_token,
            "tokenType": "Bearer",
            "expiresIn": pair.expires_in,
        }),
    )
}

pub async fn login(
    app: &App,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<HttpResponse, HttpError> {
    let login = decode::login_request(&read_json_body(request, app.config.body_timeout).await?)?;
    let attempt = LoginAttempt {
        email: login.email,
        password: login.password,
        client_type: login.client_type,
        client_address: Some(client),
    };
    let result = app.auth.login(attempt).await;
    app.metrics.login(match &result {
        Ok(_) => "success",
        Err(Error::InvalidCredentials) => "invalid_credentials",
        Err(Error::RateLimited { .. }) => "rate_limited",
        Err(Error::Overloaded) => "overloaded",
        Err(Error::RoleNotAllowed) => "role_not_allowed",
        Err(Error::UserDisabled) => "user_disabled",
        Err(Error::InvalidRequest(_)) => "invalid_request",
        Err(_) => "error",
    });
    Ok(token_pair_response(&result?))
}

pub async fn refresh(app: &App, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
    let token = decode::refresh_request(&read_json_body(request, app.config.body_timeout).await?)?;
    let result = app.auth.refresh(&token).await;
    app.metrics.refresh(match &result {
        Ok(pair) if pair.grace_replay => "grace",
        Ok(_) => "rotated",
        Err(Error::TokenReused) => "reused",
        Err(Error::TokenExpired) => "expired",
        Err(Error::SessionRevoked) => "revoked",
        Err(Error::InvalidToken(_) | Error::UserNotFound) => "invalid",
        Err(_) => "error",
    });
    Ok(token_pair_response(&result?))
}

pub async fn logout(app: &App, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
    let logout = decode::logout_request(&read_json_body(request, app.config.body_timeout).await?)?;
    app.auth.logout(&logout.refresh_token, logout.scope).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

pub async fn profile(app: &App, request: &Request<Incoming>) -> Result<HttpResponse, HttpError> {
    let token = decode::bearer_token(request.headers().get(header::AUTHORIZATION))?;
    let profile = app.auth.profile(token).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "profile": profile }),
    ))
}

/// 200 while the database can be read (503 otherwise); `writes` says
/// whether writes are accepted too, and why not when they are refused.
/// Details go to the log, not to whoever asks.
pub async fn healthz(app: &App) -> Result<HttpResponse, HttpError> {
    let store = app.auth.store();
    store.ping().await.map_err(crate::error::Error::from)?;
    let writes = if app.space.check().is_err() {
        "disk_full"
    } else if store.probe_writes().await.is_err() {
        "failing"
    } else {
        "ok"
    };
    let status = if writes == "ok" { "ok" } else { "degraded" };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "status": status, "writes": writes }),
    ))
}

pub async fn register(
    app: &App,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<HttpResponse, HttpError> {
    let sign_up =
        decode::register_request(&read_json_body(request, app.config.body_timeout).await?)?;
    let (user, pair) = app
        .auth
        .register(SignUp {
            email: sign_up.email,
            password: sign_up.password,
            name: sign_up.name,
            client_type: sign_up.client_type,
            client_address: Some(client),
        })
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "user": {
                "id": user.id.to_string(),
                "email": user.email,
                "name": user.name,
                "role_id": user.role_id,
            },
            "accessToken": pair.access_token,
            "refreshToken": pair.refresh_token,
            "tokenType": "Bearer",
            "expiresIn": pair.expires_in,
        }),
    ))
}

/// The caller behind the request's Bearer access token.
async fn caller<B>(app: &App, request: &Request<B>) -> Result<Caller, HttpError> {
    let token = decode::bearer_token(request.headers().get(header::AUTHORIZATION))?;
    Ok(app.auth.authenticate(token).await?)
}

pub async fn update_profile(
    app: &App,
    request: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    let caller = caller(app, &request).await?;
    let (name, email) =
        decode::profile_change(&read_json_body(request, app.config.body_timeout).await?)?;
    let profile = app
        .auth
        .update_profile(&caller, ProfileChange { name, email })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "profile": profile }),
    ))
}

pub async fn change_password(
    app: &App,
    request: Request<Incoming>,
    client: IpAddr,
) -> Result<HttpResponse, HttpError> {
    let caller = caller(app, &request).await?;
    let (current, new) =
        decode::password_change(&read_json_body(request, app.config.body_timeout).await?)?;
    app.auth
        .change_password(&caller, current, new, Some(client))
        .await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

pub async fn own_sessions(
    app: &App,
    request: &Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    let caller = caller(app, request).await?;
    let sessions: Vec<_> = app
        .auth
        .own_sessions(&caller)
        .await?
        .iter()
        .map(|(info, current)| {
            let mut session = admin::session_json(info);
            session["current"] = json!(current);
            session
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sessions": sessions }),
    ))
}

pub async fn revoke_own_session(
    app: &App,
    request: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, HttpError> {
    let caller = caller(app, request).await?;
    let id = SessionId::from_hex(id).ok_or(Error::SessionNotFound)?;
    app.auth.revoke_own_session(&caller, id).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// 200 `{"status":"ready"}` when the database is open and writable and the
/// server is not draining; 503 `{"status":"draining"|"disk_full"|"failing"|"unavailable"}` otherwise.
pub async fn readyz(app: &App) -> Result<HttpResponse, HttpError> {
    let store = app.auth.store();
    let reason = if app.draining.load(std::sync::atomic::Ordering::Acquire) {
        Some("draining")
    } else if store.ping().await.is_err() {
        Some("unavailable")
    } else if app.space.check().is_err() {
        Some("disk_full")
    } else if store.probe_writes().await.is_err() {
        Some("failing")
    } else {
        None
    };
    Ok(match reason {
        None => json_response(StatusCode::OK, &json!({ "status": "ready" })),
        Some(reason) => {
            let mut response = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": reason }),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            response
        }
    })
}
