//! One handler per endpoint: parse, call a use case, serialise.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::{decode, empty_response, json_response, read_json_body, HttpError, HttpResponse};
use crate::app::App;
use crate::auth::{LoginAttempt, TokenPair};

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
    let pair = app.auth.login(attempt).await?;
    Ok(token_pair_response(&pair))
}

pub async fn refresh(app: &App, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
    let token = decode::refresh_request(&read_json_body(request, app.config.body_timeout).await?)?;
    let pair = app.auth.refresh(&token).await?;
    Ok(token_pair_response(&pair))
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
