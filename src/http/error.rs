//! The one table from failures to HTTP answers.
//!
//! [`HttpError`] is a domain [`Error`] or one of the HTTP layer's own
//! failures (unknown route, wrong method, body too large, wrong media type,
//! body too slow). [`HttpError::describe`] is the only place that chooses a
//! status code, an error code and a client message; [`error_response`]
//! turns that into the JSON body `{"error", "message"}` with the headers
//! each status needs. Client errors get a fixed, short message; a server
//! fault is logged with its cause under an incident id, and a 500 sends
//! that id as `incidentId`.

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use super::{json_response, HttpResponse};
use crate::error::Error;

#[derive(Debug)]
pub enum HttpError {
    Domain(Error),
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The client took too long to send its request body.
    RequestTimeout,
}

impl From<Error> for HttpError {
    fn from(error: Error) -> Self {
        HttpError::Domain(error)
    }
}

impl HttpError {
    /// Status, error code and client message: the whole table.
    pub fn describe(&self) -> (StatusCode, &'static str, String) {
        use StatusCode as S;
        let domain = match self {
            HttpError::NotFound => return (S::NOT_FOUND, "not_found", "no such endpoint".into()),
            HttpError::MethodNotAllowed { allow } => {
                let message = format!("method not allowed; use {allow}");
                return (S::METHOD_NOT_ALLOWED, "method_not_allowed", message);
            }
            HttpError::PayloadTooLarge => {
                let message = "the request body is larger than 16 KiB".into();
                return (S::PAYLOAD_TOO_LARGE, "payload_too_large", message);
            }
            HttpError::UnsupportedMediaType => {
                let message = "the request body must be application/json".into();
                return (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message);
            }
            HttpError::RequestTimeout => {
                let message = "the request body took too long to arrive".into();
                return (S::REQUEST_TIMEOUT, "request_timeout", message);
            }
            HttpError::Domain(error) => error,
        };
        describe_domain(domain)
    }

    pub fn status(&self) -> StatusCode {
        self.describe().0
    }
}

/// The table's rows for domain errors.
pub fn describe_domain(error: &Error) -> (StatusCode, &'static str, String) {
    use StatusCode as S;
    match error {
        Error::InvalidRequest(text) => (S::BAD_REQUEST, "invalid_request", text.clone()),
        Error::InvalidCredentials => (
            S::UNAUTHORIZED,
            "invalid_credentials",
            "email or password is incorrect".into(),
        ),
        Error::RoleNotAllowed => (
            S::FORBIDDEN,
            "role_not_allowed",
            "this account may not log in to this client type".into(),
        ),
        Error::InvalidToken(why) => (
            S::UNAUTHORIZED,
            "invalid_token",
            format!("the token is invalid: {why}"),
        ),
        Error::TokenExpired => (
            S::UNAUTHORIZED,
            "token_expired",
            "the token has expired; log in again".into(),
        ),
        Error::TokenReused => (
            S::UNAUTHORIZED,
            "token_reused",
            "this refresh token was already used; its session has been revoked".into(),
        ),
        Error::SessionRevoked => (
            S::UNAUTHORIZED,
            "session_revoked",
            "the session has been revoked; log in again".into(),
        ),
        Error::UserNotFound => (
            S::NOT_FOUND,
            "user_not_found",
            "the user behind this token no longer exists".into(),
        ),
        Error::EmailTaken => (
            S::CONFLICT,
            "email_taken",
            "another account has this email".into(),
        ),
        Error::SessionNotFound => (
            S::NOT_FOUND,
            "session_not_found",
            "no such live session".into(),
        ),
        Error::UserDisabled => (
            S::FORBIDDEN,
            "user_disabled",
            "this account is disabled".into(),
        ),
        Error::RegistrationClosed => (
            S::FORBIDDEN,
            "registration_closed",
            "sign-up is closed on this server".into(),
        ),
        Error::Forbidden => (
            S::FORBIDDEN,
            "forbidden",
            "this account may not do this".into(),
        ),
        Error::RateLimited { retry_after_secs } => (
            S::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many attempts; retry in {retry_after_secs} s"),
        ),
        Error::Overloaded => (
            S::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many logins at once; retry shortly".into(),
        ),
        Error::CannotRotate(why) => (S::CONFLICT, "cannot_rotate", why.clone()),
        Error::InvalidClient => (
            S::UNAUTHORIZED,
            "invalid_client",
            "a verifier key (or the admin key) is required: Authorization: Bearer <key>".into(),
        ),
        Error::CursorExpired => (
            S::GONE,
            "cursor_expired",
            "this cursor can no longer be served; read the feed again without `after`".into(),
        ),
        Error::Unavailable(_) => (
            S::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; try again later".into(),
        ),
        Error::Internal(_) => (
            S::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error".into(),
        ),
    }
}

/// The JSON error answer, with `Allow`, `WWW-Authenticate` or `Retry-After`
/// where the status calls for it. Server faults are logged here.
pub fn error_response(error: &HttpError) -> HttpResponse {
    let (status, code, message) = error.describe();
    let mut body = serde_json::json!({ "error": code, "message": message });
    if let HttpError::Domain(domain) = error {
        if domain.is_server_fault() {
            let incident = crate::session::TokenId::generate().to_hex()[..12].to_string();
            tracing::error!(incident = %incident, cause = %domain, "request failed");
            // A 500 names the log line of its cause, so a user's report can be matched to it.
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                body["incidentId"] = serde_json::json!(incident);
            }
        }
    }
    let mut response = json_response(status, &body);
    let headers = response.headers_mut();
    match error {
        HttpError::MethodNotAllowed { allow } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        HttpError::Domain(Error::RateLimited { retry_after_secs }) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        _ if status == StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ if status == StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn storage_failures_are_never_client_errors() {
        for cause in [
            StoreError::ReadOnly,
            StoreError::Io("EIO".into()),
            StoreError::Closed,
        ] {
            let error = HttpError::from(Error::Unavailable(cause));
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn a_500_carries_an_incident_id_and_no_cause() {
        let response = error_response(&Error::Internal("secret detail".into()).into());
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = format!("{:?}", response.body());
        assert!(
            body.contains("incidentId") && !body.contains("secret detail"),
            "{body}"
        );
    }
}
