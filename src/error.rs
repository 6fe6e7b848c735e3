//! The domain's error type: every way a use case can fail, in domain words.
//!
//! No HTTP here: [`crate::http::error`] owns the one table that turns these
//! (and the HTTP layer's own failures: unknown route, wrong method, body too
//! large…) into status codes, error codes and client messages. No variant
//! ever carries a token or a password; internal causes are for the log.

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
    /// Another user has this email.
    EmailTaken,
    /// No live session with this id (of this user).
    SessionNotFound,
    /// The right password, for a disabled account.
    UserDisabled,
    /// Sign-up is turned off.
    RegistrationClosed,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// Too many failed logins (or sign-ups) for this account or client; retry after the delay.
    RateLimited {
        retry_after_secs: u64,
    },
    /// Too many password hashes are running or waiting; retry shortly.
    Overloaded,
    /// A caller of introspection or the revocation feed without a valid
    /// verifier key (or the admin key).
    InvalidClient,
    /// A revocation-feed cursor the log can no longer serve.
    CursorExpired,
    /// `keys rotate` does not apply to the key set as it is; the text says why.
    CannotRotate(String),
    /// The database cannot serve the request right now.
    Unavailable(StoreError),
    /// A bug or an unexpected failure; the cause is logged, not sent.
    Internal(String),
}

impl Error {
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
            Error::InvalidRequest(text) => write!(f, "invalid request: {text}"),
            Error::InvalidCredentials => f.write_str("invalid credentials"),
            Error::RoleNotAllowed => f.write_str("role not allowed for this client type"),
            Error::InvalidToken(why) => write!(f, "invalid token: {why}"),
            Error::TokenExpired => f.write_str("token expired"),
            Error::TokenReused => f.write_str("refresh token reused; session revoked"),
            Error::SessionRevoked => f.write_str("session revoked"),
            Error::UserNotFound => f.write_str("user not found"),
            Error::EmailTaken => f.write_str("email taken"),
            Error::SessionNotFound => f.write_str("session not found"),
            Error::UserDisabled => f.write_str("user disabled"),
            Error::RegistrationClosed => f.write_str("registration closed"),
            Error::Forbidden => f.write_str("forbidden"),
            Error::RateLimited { retry_after_secs } => {
                write!(f, "rate limited for {retry_after_secs} s")
            }
            Error::Overloaded => f.write_str("password hashing overloaded"),
            Error::CannotRotate(why) => write!(f, "cannot rotate: {why}"),
            Error::InvalidClient => f.write_str("invalid client credentials"),
            Error::CursorExpired => f.write_str("cursor expired"),
            Error::Unavailable(cause) => write!(f, "unavailable: {cause}"),
            Error::Internal(cause) => write!(f, "internal: {cause}"),
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
            assert!(!Error::Unavailable(cause).is_server_fault());
        }
        assert!(Error::Unavailable(StoreError::Io("EIO".into())).is_server_fault());
        assert!(Error::Internal("bug".into()).is_server_fault());
        assert!(!Error::InvalidCredentials.is_server_fault());
    }
}
