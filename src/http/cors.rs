//! CORS for browser apps on the origins of `--cors-origin`: their
//! requests get `Access-Control-Allow-Origin` with their own origin (never
//! `*`, and no credentials mode: the API takes tokens in headers, not
//! cookies), preflights get 204 with the methods and headers the API
//! uses. Other origins, and every request without the flag, get no CORS
//! headers at all, so browsers refuse to hand them the answers.

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use super::{empty_response, HttpResponse};

/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// The request's `Origin`, if it is one of `allowed`.
pub fn allowed_origin(allowed: &[String], headers: &hyper::HeaderMap) -> Option<HeaderValue> {
    if allowed.is_empty() {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    // Scheme and host are case-insensitive; the configured ones are lowercase.
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

/// The answer to a preflight `OPTIONS` from an allowed origin.
pub fn preflight() -> HttpResponse {
    let mut response = empty_response(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PATCH, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, X-Request-Id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    response
}

/// Marks an answer readable by a script from `origin`.
pub fn add_headers(response: &mut HttpResponse, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After, X-Request-Id, WWW-Authenticate"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}
