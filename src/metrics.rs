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

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    sessions: Gauge,
    hash_queue: Gauge,
    work: WorkMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
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
        Metrics {
            recorder,
            handle,
            sessions,
            hash_queue,
            work,
        }
    }

    pub fn work(&self) -> WorkMetrics {
        self.work.clone()
    }

    /// One answered request.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        let status = Label::new("status", status_label(status));
        let route = Label::new("route", route);
        self.recorder
            .register_counter(
                &Key::from_parts(HTTP_REQUESTS, vec![route.clone(), status]),
                &METADATA,
            )
            .increment(1);
        self.recorder
            .register_histogram(&Key::from_parts(HTTP_DURATION, vec![route]), &METADATA)
            .record(seconds);
    }

    pub fn login(&self, result: &'static str) {
        self.count(LOGINS, result);
    }

    pub fn refresh(&self, result: &'static str) {
        self.count(REFRESHES, result);
    }

    fn count(&self, name: &'static str, result: &'static str) {
        let counter: Counter = self.recorder.register_counter(
            &Key::from_parts(name, vec![Label::new("result", result)]),
            &METADATA,
        );
        counter.increment(1);
    }

    /// The exposition text, with the gauges read now.
    pub fn render(&self, sessions: u64, hash_queue: usize) -> String {
        self.sessions.set(sessions as f64);
        self.hash_queue.set(hash_queue as f64);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Status codes as fixed label values.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        429 => "429",
        431 => "431",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;
