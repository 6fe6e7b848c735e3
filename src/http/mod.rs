//! The HTTP layer: routing, body limits, JSON in and out.
//!
//! Thin by design: read a size-limited JSON body, pick fields out of it with
//! messages that name the field (never echo its value), call one use case in
//! [`crate::auth`], serialise the answer. Every error becomes the JSON
//! `{"error", "message"}` body here, from [`Error::status`]/[`Error::code`].

mod handlers;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};

use crate::app::App;
use crate::error::Error;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request. Never fails: errors become JSON error responses.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> HttpResponse {
    let result = route(&app, request).await;
    result.unwrap_or_else(|error| error_response(&error))
}

async fn route(app: &App, request: Request<Incoming>) -> Result<HttpResponse, Error> {
    let method = request.method().clone();
    match (request.uri().path(), method) {
        ("/auth/login", Method::POST) => handlers::login(app, request).await,
        ("/auth/refresh", Method::POST) => handlers::refresh(app, request).await,
        ("/auth/logout", Method::POST) => handlers::logout(app, request).await,
        ("/auth/profile", Method::GET) => handlers::profile(app, &request).await,
        ("/healthz", Method::GET) => handlers::healthz(app).await,
        ("/auth/login" | "/auth/refresh" | "/auth/logout", _) => {
            Err(Error::MethodNotAllowed { allow: "POST" })
        }
        ("/auth/profile" | "/healthz", _) => Err(Error::MethodNotAllowed { allow: "GET" }),
        _ => Err(Error::NotFound),
    }
}

pub fn error_response(error: &Error) -> HttpResponse {
    if error.is_server_fault() {
        let incident = crate::session::TokenId::generate().to_hex();
        tracing::error!(incident = %&incident[..12], cause = %error, "request failed");
    }
    let body = serde_json::json!({ "error": error.code(), "message": error.client_message() });
    let mut response = json_response(error.status(), &body);
    let headers = response.headers_mut();
    match error {
        Error::MethodNotAllowed { allow } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        e if e.status() == StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Error::Unavailable(_) | Error::Overloaded => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
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

fn is_json(request: &Request<Incoming>) -> bool {
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

/// Reads a JSON object body: 415 unless `application/json`, 413 past
/// [`MAX_BODY_BYTES`] (checked against `Content-Length` first and while
/// reading), 400 for anything that is not a JSON object.
async fn read_json_object(request: Request<Incoming>) -> Result<Map<String, Value>, Error> {
    if !is_json(&request) {
        return Err(Error::UnsupportedMediaType);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(Error::PayloadTooLarge);
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Error::PayloadTooLarge
            } else {
                Error::InvalidRequest("the request body could not be read".into())
            }
        })?;
    match serde_json::from_slice::<Value>(&body.to_bytes()) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Error::InvalidRequest(
            "the body must be a JSON object".into(),
        )),
        Err(_) => Err(Error::InvalidRequest("the body is not valid JSON".into())),
    }
}

/// A required string field.
fn required_str(object: &Map<String, Value>, field: &str) -> Result<String, Error> {
    optional_str(object, field)?
        .ok_or_else(|| Error::InvalidRequest(format!("{field} is required")))
}

/// An optional string field; `null` counts as absent.
fn optional_str(object: &Map<String, Value>, field: &str) -> Result<Option<String>, Error> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Error::InvalidRequest(format!("{field} must be a string"))),
    }
}
