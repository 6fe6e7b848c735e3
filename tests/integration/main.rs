//! All integration tests, compiled into one binary. Each test starts its own
//! server on port 0 with its own temporary data folder.

mod accounts;
mod api;
mod bench;
mod cli;
mod cli_accounts;
mod common;
mod concurrency;
mod docs;
mod durability;
mod hardening;
mod instances;
mod limits;
mod operations;
mod revocation;
mod signing;
mod throttle;
