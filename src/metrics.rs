//! Prometheus metrics: what is counted, and its rendering in the text
//! exposition format 0.0.4 (by `metrics-exporter-prometheus`).
//!
//! One [`Metrics`] belongs to one [`crate::app::App`]; its recorder is not
//! installed as the process's global one, so in-process test servers keep
//! their counts apart. Label values come from fixed sets (route templates,
//! status codes, result names): no email, address, id or token ever
//! becomes a label.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// Latency buckets (seconds) for requests, hashing and commits.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Operations per group commit.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

const HTTP_REQUESTS: &str = "latchkey_http_requests_total";
const HTTP_DURATION: &str = "latchkey_http_request_duration_seconds";
const LOGINS: &str = "latchkey_logins_total";
const REFRESHES: &str = "latchkey_refreshes_total";
const SESSIONS: &str = "latchkey_sessions_active";
const HASH_QUEUE: &str = "latchkey_password_hash_queue_depth";
const HASH_DURATION: &str = "latchkey_password_hash_duration_seconds";
const COMMIT_DURATION: &str = "latchkey_store_commit_duration_seconds";
const BATCH_SIZE: &str = "latchkey_store_batch_size";
const BUILD_INFO: &str = "latchkey_build_info";

/// Histograms the hashing pool and the writer record into.
#[derive(Clone)]
pub struct WorkMetrics {
    pub hash_duration: Histogram,
    pub commit_duration: Histogram,
    pub batch_size: Histogram,
}

/// Every route template a request can be counted under.
pub const ROUTES: &[&str] = &[
    "/auth/login",
    "/auth/register",
    "/auth/refresh",
    "/auth/logout",
    "/auth/profile",
    "/auth/password",
    "/auth/sessions",
    "/auth/sessions/{id}",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/admin/users",
    "/admin/users/{id}",
    "/admin/users/{id}/sessions",
    "/admin/sessions/{sid}",
    "unmatched",
];

/// Every status label.
const STATUSES: &[&str] = &[
    "200", "201", "204", "400", "401", "403", "404", "405", "408", "409", "413", "415", "429",
    "431", "500", "503", "other",
];

const LOGIN_RESULTS: &[&str] = &[
    "success",
    "invalid_credentials",
    "rate_limited",
    "overloaded",
    "role_not_allowed",
    "user_disabled",
    "invalid_request",
    "error",
];

const REFRESH_RESULTS: &[&str] = &[
    "rotated", "grace", "reused", "expired", "revoked", "invalid", "error",
];

/// A metric handle made the first time it is used: a label combination
/// appears in the exposition once it has happened, and the hot path never
/// looks anything up or allocates.
type Lazy<T> = std::sync::OnceLock<T>;

struct RouteMetrics {
    duration: Lazy<Histogram>,
    by_status: Vec<Lazy<Counter>>,
}

pub struct Metrics {
    /// Without a metrics listener nothing is recorded: histogram samples
    /// wait in memory until an upkeep folds them into buckets.
    enabled: bool,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    sessions: Gauge,
    hash_queue: Gauge,
    work: WorkMetrics,
    routes: Vec<RouteMetrics>,
    logins: Vec<Lazy<Counter>>,
    refreshes: Vec<Lazy<Counter>>,
}

impl Metrics {
    /// Metrics that record only when `enabled` (a listener serves them).
    pub fn new(enabled: bool) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.into()),
                    BATCH,
                )
            })
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, help: &'static str| {
            (KeyName::from_const_str(name), SharedString::const_str(help))
        };
        for (name, help) in [
            describe(
                HTTP_REQUESTS,
                "HTTP requests answered, by route template and status",
            ),
            describe(LOGINS, "Login attempts, by result"),
            describe(REFRESHES, "Refresh attempts, by result"),
        ] {
            recorder.describe_counter(name, None, help);
        }
        for (name, help) in [
            describe(
                HTTP_DURATION,
                "Time to answer an HTTP request, by route template",
            ),
            describe(
                HASH_DURATION,
                "Time of one password hash or check on the hashing pool",
            ),
            describe(COMMIT_DURATION, "Time of one durable group commit"),
            describe(BATCH_SIZE, "Write operations per group commit"),
        ] {
            recorder.describe_histogram(name, None, help);
        }
        for (name, help) in [
            describe(
                SESSIONS,
                "Sessions stored: live ones, and ended ones until the sweep deletes them",
            ),
            describe(HASH_QUEUE, "Password hashes running or waiting"),
            describe(BUILD_INFO, "Always 1; the version in its label"),
        ] {
            recorder.describe_gauge(name, None, help);
        }
        let gauge = |name: &'static str, labels: Vec<Label>| {
            recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
        };
        gauge(
            BUILD_INFO,
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
        let sessions = gauge(SESSIONS, Vec::new());
        let hash_queue = gauge(HASH_QUEUE, Vec::new());
        let histogram =
            |name: &'static str| recorder.register_histogram(&Key::from_name(name), &METADATA);
        let work = WorkMetrics {
            hash_duration: histogram(HASH_DURATION),
            commit_duration: histogram(COMMIT_DURATION),
            batch_size: histogram(BATCH_SIZE),
        };
        let lazies = |n: usize| (0..n).map(|_| Lazy::new()).collect::<Vec<_>>();
        let metrics = Metrics {
            enabled,
            recorder,
            handle,
            sessions,
            hash_queue,
            work,
            routes: ROUTES
                .iter()
                .map(|_| RouteMetrics {
                    duration: Lazy::new(),
                    by_status: lazies(STATUSES.len()),
                })
                .collect(),
            logins: lazies(LOGIN_RESULTS.len()),
            refreshes: lazies(REFRESH_RESULTS.len()),
        };
        if enabled {
            // Every login and refresh series exists from the start, at 0, so
            // `increase()` sees the first event after a restart.
            for (counters, results, name) in [
                (&metrics.logins, LOGIN_RESULTS, LOGINS),
                (&metrics.refreshes, REFRESH_RESULTS, REFRESHES),
            ] {
                for (counter, result) in counters.iter().zip(results) {
                    counter.get_or_init(|| {
                        let labels = vec![Label::new("result", *result)];
                        metrics
                            .recorder
                            .register_counter(&Key::from_parts(name, labels), &METADATA)
                    });
                }
            }
        }
        metrics
    }

    /// The histograms for the hashing pool and the writer, when enabled.
    pub fn work(&self) -> Option<WorkMetrics> {
        self.enabled.then(|| self.work.clone())
    }

    /// Folds recorded histogram samples into their buckets, so memory stays
    /// bounded between scrapes; run every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// One answered request; `route` is one of [`ROUTES`].
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        if !self.enabled {
            return;
        }
        let index = ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(ROUTES.len() - 1);
        let route_metrics = &self.routes[index];
        let route = ROUTES[index];
        let status = status_index(status);
        route_metrics.by_status[status]
            .get_or_init(|| {
                let labels = vec![
                    Label::new("route", route),
                    Label::new("status", STATUSES[status]),
                ];
                self.recorder
                    .register_counter(&Key::from_parts(HTTP_REQUESTS, labels), &METADATA)
            })
            .increment(1);
        route_metrics
            .duration
            .get_or_init(|| {
                let labels = vec![Label::new("route", route)];
                self.recorder
                    .register_histogram(&Key::from_parts(HTTP_DURATION, labels), &METADATA)
            })
            .record(seconds);
    }

    /// One login attempt; `result` is one of the login results.
    pub fn login(&self, result: &'static str) {
        self.count(LOGINS, LOGIN_RESULTS, &self.logins, result);
    }

    /// One refresh attempt; `result` is one of the refresh results.
    pub fn refresh(&self, result: &'static str) {
        self.count(REFRESHES, REFRESH_RESULTS, &self.refreshes, result);
    }

    fn count(
        &self,
        name: &'static str,
        results: &[&'static str],
        counters: &[Lazy<Counter>],
        result: &str,
    ) {
        if !self.enabled {
            return;
        }
        let index = results
            .iter()
            .position(|r| *r == result)
            .unwrap_or(results.len() - 1);
        counters[index]
            .get_or_init(|| {
                let labels = vec![Label::new("result", results[index])];
                self.recorder
                    .register_counter(&Key::from_parts(name, labels), &METADATA)
            })
            .increment(1);
    }

    /// The exposition text, with the gauges read now.
    /// `sessions` is `None` when it could not be counted (the gauge keeps
    /// its last value).
    pub fn render(&self, sessions: Option<u64>, hash_queue: usize) -> String {
        if let Some(sessions) = sessions {
            self.sessions.set(sessions as f64);
        }
        self.hash_queue.set(hash_queue as f64);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// A status code's place in [`STATUSES`] (`other` for the unusual ones).
fn status_index(status: u16) -> usize {
    match status {
        200 => 0,
        201 => 1,
        204 => 2,
        400 => 3,
        401 => 4,
        403 => 5,
        404 => 6,
        405 => 7,
        408 => 8,
        409 => 9,
        413 => 10,
        415 => 11,
        429 => 12,
        431 => 13,
        500 => 14,
        503 => 15,
        _ => STATUSES.len() - 1,
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_indexes_match_their_labels() {
        for (index, label) in STATUSES.iter().enumerate() {
            match label.parse::<u16>() {
                Ok(status) => assert_eq!(status_index(status), index, "{label}"),
                Err(_) => assert_eq!(status_index(302), index),
            }
        }
    }
}
