//! The HTTP layer: routing, body limits, JSON in and out.
//!
//! Thin by design: read a size-limited JSON body, pick fields out of it with
//! messages that name the field (never echo its value), call one use case in
//! [`crate::auth`], serialise the answer. Every error becomes the JSON
//! `{"error", "message"}` body in [`error`], the one table of statuses.

pub mod admin;
pub mod client_address;
mod cors;
pub mod decode;
pub mod error;
mod handlers;
mod oauth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::app::App;
pub use error::{error_response, HttpError};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest body of an admin request on the admin socket (an import).
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024 * 1024;

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request from `peer`. Never fails: errors become JSON error responses.
pub async fn handle(app: Arc<App>, request: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let started = std::time::Instant::now();
    let request_id = sane_request_id(request.headers()).unwrap_or_else(|| app.next_request_id());
    let method = request.method().clone();
    let route_name = route_template(request.uri().path());
    // Only for the log line: worked out only when it is written.
    let client = tracing::enabled!(tracing::Level::INFO).then(|| {
        client_address::client_address(peer, request.headers(), &app.config.trusted_proxies)
    });
    let cors_origin = cors::allowed_origin(&app.config.cors_origins, request.headers());
    let mut response = match (&cors_origin, request.method()) {
        (Some(_), &Method::OPTIONS) => cors::preflight(),
        // A panic in a handler is a 500 like any other answer: counted,
        // logged, with its request id and CORS headers.
        _ => crate::server::CatchPanic(Box::pin(route(&app, request, peer)))
            .await
            .unwrap_or_else(|()| {
                Err(crate::error::Error::Internal("a request handler panicked".into()).into())
            })
            .unwrap_or_else(|error| error_response(&error)),
    };
    if let Some(origin) = cors_origin {
        cors::add_headers(&mut response, origin);
    } else if !app.config.cors_origins.is_empty() {
        // The answer depends on the origin: caches must keep them apart.
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(request_id.clone())) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    app.metrics.request(
        route_name,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        method = %method,
        route = route_name,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id = %request_id,
        client = %client.map_or_else(String::new, |c| c.to_string()),
        "request"
    );
    response
}

const REQUEST_ID: &str = "x-request-id";
/// Longest request id echoed back; a longer or unprintable one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id`, if it is short and printable ASCII.
fn sane_request_id(headers: &hyper::HeaderMap) -> Option<String> {
    let value = headers.get(REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| value.to_string())
}

/// The route a path belongs to, as a template (`/admin/users/{id}`), for
/// logs and metrics: never a raw path, so ids and tokens never become
/// labels.
pub fn route_template(path: &str) -> &'static str {
    match path {
        "/auth/login" => "/auth/login",
        "/auth/register" => "/auth/register",
        "/auth/refresh" => "/auth/refresh",
        "/auth/logout" => "/auth/logout",
        "/auth/profile" => "/auth/profile",
        "/auth/password" => "/auth/password",
        "/auth/sessions" => "/auth/sessions",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/openapi.json" => "/openapi.json",
        "/.well-known/jwks.json" => "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server" => "/.well-known/oauth-authorization-server",
        "/oauth/introspect" => "/oauth/introspect",
        "/oauth/revoke" => "/oauth/revoke",
        "/oauth/revocations" => "/oauth/revocations",
        "/admin/users" => "/admin/users",
        "/admin/keys" => "/admin/keys",
        "/admin/keys/rotate" => "/admin/keys/rotate",
        path if path.starts_with("/auth/sessions/") => "/auth/sessions/{id}",
        path if path.starts_with("/admin/sessions/") => "/admin/sessions/{sid}",
        path if path.starts_with("/admin/users/") => {
            match path
                .trim_start_matches("/admin/users/")
                .split('/')
                .collect::<Vec<_>>()
                .as_slice()
            {
                [_] => "/admin/users/{id}",
                [_, "sessions"] => "/admin/users/{id}/sessions",
                _ => "unmatched",
            }
        }
        _ => "unmatched",
    }
}

async fn route(
    app: &App,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<HttpResponse, HttpError> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client =
        || client_address::client_address(peer, request.headers(), &app.config.trusted_proxies);
    match (path.as_str(), method) {
        ("/auth/login", Method::POST) => {
            let client = client();
            handlers::login(app, request, client).await
        }
        ("/auth/register", Method::POST) => {
            let client = client();
            handlers::register(app, request, client).await
        }
        ("/auth/refresh", Method::POST) => handlers::refresh(app, request).await,
        ("/auth/logout", Method::POST) => handlers::logout(app, request).await,
        ("/auth/profile", Method::GET) => handlers::profile(app, &request).await,
        ("/auth/profile", Method::PATCH) => handlers::update_profile(app, request).await,
        ("/auth/password", Method::POST) => {
            let client = client();
            handlers::change_password(app, request, client).await
        }
        ("/auth/sessions", Method::GET) => handlers::own_sessions(app, &request).await,
        ("/healthz", Method::GET) => handlers::healthz(app).await,
        ("/readyz", Method::GET) => handlers::readyz(app).await,
        ("/openapi.json", Method::GET) => Ok(openapi_document()),
        ("/.well-known/jwks.json", Method::GET) => Ok(jwks_document(app)),
        ("/.well-known/oauth-authorization-server", Method::GET) => oauth::server_metadata(app),
        ("/oauth/introspect", Method::POST) => oauth::introspect(app, request).await,
        ("/oauth/revoke", Method::POST) => oauth::revoke(app, request).await,
        ("/oauth/revocations", Method::GET) => oauth::revocation_feed(app, &request).await,
        ("/oauth/introspect" | "/oauth/revoke", _) => {
            Err(HttpError::MethodNotAllowed { allow: "POST" })
        }
        (
            "/auth/login" | "/auth/refresh" | "/auth/logout" | "/auth/register" | "/auth/password",
            _,
        ) => Err(HttpError::MethodNotAllowed { allow: "POST" }),
        ("/auth/profile", _) => Err(HttpError::MethodNotAllowed {
            allow: "GET, PATCH",
        }),
        (
            "/auth/sessions"
            | "/healthz"
            | "/readyz"
            | "/openapi.json"
            | "/.well-known/jwks.json"
            | "/.well-known/oauth-authorization-server"
            | "/oauth/revocations",
            _,
        ) => Err(HttpError::MethodNotAllowed { allow: "GET" }),
        (path, method) => {
            if let Some(id) = path.strip_prefix("/auth/sessions/") {
                return match method {
                    Method::DELETE => handlers::revoke_own_session(app, &request, id).await,
                    _ => Err(HttpError::MethodNotAllowed { allow: "DELETE" }),
                };
            }
            if let Some(rest) = path.strip_prefix("/admin/") {
                let rest = rest.to_string();
                return admin_over_tcp(app, request, &rest).await;
            }
            Err(HttpError::NotFound)
        }
    }
}

/// `/admin/…` on the public port: 404 unless an admin key or admin roles
/// are configured; then the admin key, or an access token of an admin role.
async fn admin_over_tcp(
    app: &App,
    request: Request<Incoming>,
    rest: &str,
) -> Result<HttpResponse, HttpError> {
    let config = &app.config;
    if config.admin_key.is_none() && config.admin_roles.is_empty() {
        return Err(HttpError::NotFound);
    }
    let token = decode::bearer_token(request.headers().get(header::AUTHORIZATION))?;
    let is_admin_key = config
        .admin_key
        .as_ref()
        .is_some_and(|key| subtle::ConstantTimeEq::ct_eq(key.bytes(), token.as_bytes()).into());
    if !is_admin_key {
        use crate::error::Error;
        let caller = match app.auth.authenticate(token).await {
            Ok(caller) => caller,
            Err(unavailable @ Error::Unavailable(_)) => return Err(unavailable.into()),
            Err(_) => {
                return Err(Error::InvalidToken("not the admin key or a live access token").into())
            }
        };
        // The role as it is now, not as the token says: a demoted or
        // disabled administrator loses access at once.
        let user = app
            .auth
            .store()
            .user(caller.user_id)
            .await
            .map_err(Error::from)?;
        if !user.is_some_and(|u| !u.disabled && config.admin_roles.contains(&u.role_id)) {
            return Err(Error::Forbidden.into());
        }
    }
    serve_admin(app, admin::Channel::Tcp, request, rest, config.body_timeout).await
}

/// Runs an authorised admin request (TCP or the admin socket).
pub async fn serve_admin<B>(
    app: &App,
    channel: admin::Channel,
    request: Request<B>,
    rest: &str,
    body_timeout: Duration,
) -> Result<HttpResponse, HttpError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = request.method().clone();
    admin::check_route(channel, &method, rest)?;
    let query = request.uri().query().map(str::to_string);
    let limit = match channel {
        admin::Channel::Local => MAX_ADMIN_BODY_BYTES,
        admin::Channel::Tcp => MAX_BODY_BYTES,
    };
    let body = if !matches!(method, Method::POST | Method::PATCH) {
        Bytes::new()
    } else if request.headers().get(header::CONTENT_TYPE).is_none() {
        // A POST with no body at all (`keys/rotate`) needs no content type.
        let body = read_body_limited(request, body_timeout, limit).await?;
        if !body.is_empty() {
            return Err(HttpError::UnsupportedMediaType);
        }
        body
    } else {
        read_json_body_limited(request, body_timeout, limit).await?
    };
    let keys = crate::keys::KeyAdmin::Serving(Arc::clone(&app.keys));
    let target = admin::Target {
        accounts: app.auth.accounts(),
        keys: &keys,
    };
    admin::route(&target, channel, &method, rest, query.as_deref(), body).await
}

/// `/.well-known/jwks.json`: the public keys that may have live access
/// tokens (none under HS256), cacheable for as long as a rotated key is
/// published before it signs.
fn jwks_document(app: &App) -> HttpResponse {
    public_json(app.keys.tokens().ring().jwks())
}

/// A JSON document anyone may cache for 300 s (the JWKS, server metadata).
pub(crate) fn public_json(body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// The OpenAPI 3 description of this API, for clients and API fuzzers.
fn openapi_document() -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(include_bytes!(
        "openapi.json"
    ))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn empty_response(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn is_json<B>(request: &Request<B>) -> bool {
    let Some(value) = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Reads a JSON body: 415 unless `application/json`, 413 past
/// [`MAX_BODY_BYTES`] (checked against `Content-Length` first and while
/// reading), 408 when it does not arrive within `timeout`.
async fn read_json_body(request: Request<Incoming>, timeout: Duration) -> Result<Bytes, HttpError> {
    read_json_body_limited(request, timeout, MAX_BODY_BYTES).await
}

async fn read_json_body_limited<B>(
    request: Request<B>,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, HttpError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if !is_json(&request) {
        return Err(HttpError::UnsupportedMediaType);
    }
    read_body_limited(request, timeout, limit).await
}

/// Reads a body of any type: 413 past `limit`, 408 past `timeout`.
pub(crate) async fn read_body_limited<B>(
    request: Request<B>,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, HttpError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(HttpError::PayloadTooLarge);
    }
    let collect = Limited::new(request.into_body(), limit).collect();
    let collected = tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| HttpError::RequestTimeout)?;
    let body = collected.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            HttpError::PayloadTooLarge
        } else {
            crate::error::Error::InvalidRequest("the request body could not be read".into()).into()
        }
    })?;
    Ok(body.to_bytes())
}
