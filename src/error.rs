//! The one error type of the request path and its mapping to HTTP.
//!
//! Every failure a client can see is a variant here, named in domain words.
//! [`Error::status`] and [`Error::code`] are the only place that chooses a
//! status code or an error code. Client errors carry a fixed, short message;
//! internal errors are logged with their cause under an id, and the client
//! sees only that id. No variant ever carries a token or a password.

use hyper::StatusCode;
use std::fmt;

use crate::store::StoreError;

#[derive(Debug)]
pub enum Error {
    /// Malformed JSON, a missing or mistyped field, an invalid value. The text
    /// names the field; it never repeats the value the client sent.
    InvalidRequest(String),
    InvalidCredentials,
    RoleNotAllowed,
    /// A token that does not verify, is malformed, of the wrong type, or
    /// names an unknown session. The text says which, without the token.
    InvalidToken(&'static str),
    TokenExpired,
    TokenReused,
    SessionRevoked,
    UserNotFound,
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    /// Too many failed logins for this account or client; retry after the delay.
    RateLimited {
        retry_after_secs: u64,
    },
    /// The client took too long to send its request body.
    RequestTimeout,
    /// Too many password hashes are running or waiting; retry shortly.
    Overloaded,
    /// The database cannot serve the request right now.
    Unavailable(StoreError),
    /// A bug or an unexpected failure; the cause is logged, not sent.
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Error::InvalidCredentials
            | Error::InvalidToken(_)
            | Error::TokenExpired
            | Error::TokenReused
            | Error::SessionRevoked => StatusCode::UNAUTHORIZED,
            Error::RoleNotAllowed => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::UserNotFound | Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unavailable(_) | Error::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidCredentials => "invalid_credentials",
            Error::RoleNotAllowed => "role_not_allowed",
            Error::InvalidToken(_) => "invalid_token",
            Error::TokenExpired => "token_expired",
            Error::TokenReused => "token_reused",
            Error::SessionRevoked => "session_revoked",
            Error::UserNotFound => "user_not_found",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::PayloadTooLarge => "payload_too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::RateLimited { .. } => "rate_limited",
            Error::RequestTimeout => "request_timeout",
            Error::Overloaded => "overloaded",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal_error",
        }
    }

    /// The human text for the client. Internal causes are not included.
    pub fn client_message(&self) -> String {
        match self {
            Error::InvalidRequest(text) => text.clone(),
            Error::InvalidCredentials => "email or password is incorrect".into(),
            Error::RoleNotAllowed => "this account may not log in to this client type".into(),
            Error::InvalidToken(why) => format!("the token is invalid: {why}"),
            Error::TokenExpired => "the token has expired; log in again".into(),
            Error::TokenReused => {
                "this refresh token was already used; its session has been revoked".into()
            }
            Error::SessionRevoked => "the session has been revoked; log in again".into(),
            Error::UserNotFound => "the user behind this token no longer exists".into(),
            Error::NotFound => "no such endpoint".into(),
            Error::MethodNotAllowed { allow } => format!("method not allowed; use {allow}"),
            Error::PayloadTooLarge => "the request body is larger than 16 KiB".into(),
            Error::UnsupportedMediaType => "the request body must be application/json".into(),
            Error::RateLimited { retry_after_secs } => {
                format!("too many failed logins; retry in {retry_after_secs} s")
            }
            Error::RequestTimeout => "the request body took too long to arrive".into(),
            Error::Overloaded => "too many logins at once; retry shortly".into(),
            Error::Unavailable(_) => "the database is unavailable; try again later".into(),
            Error::Internal(_) => "internal error".into(),
        }
    }

    /// Whether this error should be logged with its cause (server-side
    /// faults), except lasting store conditions, which the store logs once.
    pub fn is_server_fault(&self) -> bool {
        match self {
            Error::Unavailable(cause) => !cause.is_lasting_condition(),
            Error::Internal(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(cause) => write!(f, "unavailable: {cause}"),
            Error::Internal(cause) => write!(f, "internal: {cause}"),
            other => write!(f, "{}: {}", other.code(), other.client_message()),
        }
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        Error::Unavailable(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasting_store_conditions_are_not_logged_per_request() {
        let lasting = [
            StoreError::ReadOnly,
            StoreError::DiskFull {
                available: 1,
                reserve: 2,
            },
        ];
        for cause in lasting {
            let error = Error::Unavailable(cause);
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!error.is_server_fault());
        }
        assert!(Error::Unavailable(StoreError::Io("EIO".into())).is_server_fault());
        assert!(Error::Internal("bug".into()).is_server_fault());
        assert!(!Error::InvalidCredentials.is_server_fault());
    }
}
