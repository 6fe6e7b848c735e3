//! latchkey: a self-hosted auth token server.
//!
//! Users log in with email and password and receive a short-lived signed access
//! token and a rotating refresh token. Every refresh token belongs to a
//! session (a token family); presenting a token that was already rotated
//! revokes the whole family. Users and sessions live in one embedded redb file.
//!
//! The module map, with what each module owns, is the README's "Layout"
//! section; each module's own doc says the rest.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin_socket;
pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod error;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod passwords;
pub mod revocations;
pub mod secrets;
pub mod server;
pub mod session;
pub mod store;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod throttle;
pub mod tokens;
