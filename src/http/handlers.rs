//! One handler per endpoint: parse, call a use case, serialise.

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::{
    empty_response, json_response, optional_str, read_json_object, required_str, HttpResponse,
};
use crate::app::{now_millis, App};
use crate::auth::{LoginAttempt, TokenPair};
use crate::error::Error;
use crate::passwords::Password;
use crate::store::LogoutScope;

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

pub async fn login(app: &App, request: Request<Incoming>) -> Result<HttpResponse, Error> {
    let body = read_json_object(request).await?;
    let attempt = LoginAttempt {
        email: required_str(&body, "email")?,
        password: Password::new(required_str(&body, "password")?),
        client_type: optional_str(&body, "type")?,
    };
    let pair = app.auth.login(attempt, now_millis()).await?;
    Ok(token_pair_response(&pair))
}

pub async fn refresh(app: &App, request: Request<Incoming>) -> Result<HttpResponse, Error> {
    let body = read_json_object(request).await?;
    let token = required_str(&body, "refreshToken")?;
    let pair = app.auth.refresh(&token, now_millis()).await?;
    Ok(token_pair_response(&pair))
}

pub async fn logout(app: &App, request: Request<Incoming>) -> Result<HttpResponse, Error> {
    let body = read_json_object(request).await?;
    let token = required_str(&body, "refreshToken")?;
    let scope = match optional_str(&body, "scope")?.as_deref() {
        None | Some("local") => LogoutScope::Session,
        Some("global") => LogoutScope::AllSessionsOfUser,
        Some(_) => {
            return Err(Error::InvalidRequest(
                "scope must be \"local\" or \"global\"".into(),
            ))
        }
    };
    app.auth.logout(&token, scope, now_millis()).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

pub async fn profile(app: &App, request: &Request<Incoming>) -> Result<HttpResponse, Error> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(Error::InvalidToken("missing bearer token"))?;
    let header = header
        .to_str()
        .map_err(|_| Error::InvalidToken("malformed Authorization header"))?;
    let token = match header.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            token.trim()
        }
        _ => {
            return Err(Error::InvalidToken(
                "expected Authorization: Bearer <token>",
            ))
        }
    };
    let profile = app.auth.profile(token, now_millis()).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "profile": profile }),
    ))
}

pub async fn healthz(app: &App) -> Result<HttpResponse, Error> {
    app.auth.store().ping().await?;
    Ok(json_response(StatusCode::OK, &json!({ "status": "ok" })))
}
