//! latchkey: a self-hosted auth token server.
//!
//! Users log in with email and password and receive a short-lived HS256 access
//! token and a rotating refresh token. Every refresh token belongs to a
//! session (a token family); presenting a token that was already rotated
//! revokes the whole family. Users and sessions live in one embedded redb file.
//!
//! # Layout
//! - [`cli`]: clap types only.
//! - [`config`]: flags and environment → a validated [`config::ServeConfig`].
//! - [`error`]: the one [`error::Error`] type and its mapping to status codes.
//! - [`tokens`]: JWT claims, signing and verification (pure, takes `now`).
//! - [`passwords`]: argon2id hashing on a bounded pool with admission control.
//! - [`throttle`]: login back-off per account and per client address.
//! - [`session`]: the refresh-token state machine (rotation, reuse, grace).
//! - [`auth`]: the use cases (login, refresh, profile, logout); no HTTP.
//! - [`store`]: the storage interface in domain words, and its redb backend.
//! - [`http`]: routing, body limits, JSON in and out.
//! - [`server`]: the accept loop, connection limits and graceful shutdown.
//! - [`app`]: wiring: config → store, keys, hasher → the shared state.
//! - [`bench`]: the built-in load generator and test-data loader.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod error;
pub mod http;
pub mod passwords;
pub mod secrets;
pub mod server;
pub mod session;
pub mod store;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod throttle;
pub mod tokens;
