//! `latchkey bench`: a load generator in the spirit of `redis-benchmark` and
//! `pgbench`, and `--populate`, which fills a database with test data.
//!
//! The generator opens `--connections` HTTP/1.1 connections, each with one
//! request in flight, and runs a scenario for `--duration`. Setup (logins
//! that give each connection its tokens) is not measured. In the `refresh`
//! scenario every request is a real rotation: a connection always sends the
//! token its last answer gave it, and any non-200 breaks the chain, is counted
//! as an error, and the connection logs in again to start a new chain.

mod populate;

pub use populate::populate;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::cli::{BenchArgs, Scenario};
use crate::config::parse_duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every `MIXED_LOGIN_EVERY`-th request of the mixed scenario is a login.
const MIXED_LOGIN_EVERY: u64 = 100;
/// Profile reads per refresh in the mixed scenario.
const MIXED_PROFILES_PER_REFRESH: u64 = 4;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Endpoint {
    Login,
    Refresh,
    Profile,
    Introspect,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Login => "login",
            Endpoint::Refresh => "refresh",
            Endpoint::Profile => "profile",
            Endpoint::Introspect => "introspect",
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::Login | Endpoint::Refresh | Endpoint::Introspect => Method::POST,
            Endpoint::Profile => Method::GET,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Login => "/auth/login",
            Endpoint::Refresh => "/auth/refresh",
            Endpoint::Profile => "/auth/profile",
            Endpoint::Introspect => "/oauth/introspect",
        }
    }
}

/// What one connection observed.
#[derive(Default)]
struct Tally {
    latencies_us: BTreeMap<Endpoint, Vec<u32>>,
    non_2xx: BTreeMap<u16, u64>,
    transport_errors: u64,
    chain_breaks: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (endpoint, mut latencies) in other.latencies_us {
            self.latencies_us
                .entry(endpoint)
                .or_default()
                .append(&mut latencies);
        }
        for (status, count) in other.non_2xx {
            *self.non_2xx.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.chain_breaks += other.chain_breaks;
    }
}

/// One HTTP/1.1 connection to the server under test.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Connection {
    async fn open(authority: &str) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            authority: authority.to_string(),
        })
    }

    /// Sends one request; answers the status and the parsed JSON body.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), BoxError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                request = request.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&value)?)
            }
            None => Bytes::new(),
        };
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

struct Plan {
    /// Connection `i` goes to `authorities[i % len]` (several instances
    /// loaded by one generator).
    authorities: Vec<String>,
    scenario: Scenario,
    duration: Duration,
    users: u64,
    email_format: String,
    password: String,
    /// The bearer of introspection requests.
    verifier_key: Option<String>,
}

impl Plan {
    fn authority(&self, index: u64) -> &str {
        &self.authorities[(index % self.authorities.len() as u64) as usize]
    }

    fn email(&self, n: u64) -> String {
        self.email_format
            .replace("{}", &(n % self.users.max(1) + 1).to_string())
    }

    fn login_body(&self, n: u64) -> Value {
        json!({ "email": self.email(n), "password": self.password })
    }
}

fn token(body: &Value, field: &str) -> Option<String> {
    body[field].as_str().map(str::to_string)
}

/// Logs in outside the measured loop, retrying while the server answers
/// 503 (its hashing queue is full, e.g. under a concurrent login flood).
async fn setup_login(conn: &mut Connection, plan: &Plan, n: u64) -> Result<Value, BoxError> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = conn
            .call(Method::POST, "/auth/login", None, Some(plan.login_body(n)))
            .await?;
        match status {
            200 => return Ok(body),
            503 if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => {
                return Err(format!(
                    "setup login for {} answered {status}: {body}",
                    plan.email(n)
                )
                .into())
            }
        }
    }
}

/// A connection after setup: its tokens, ready to be measured.
struct Ready {
    conn: Connection,
    refresh: Option<String>,
    access: Option<String>,
    user_cursor: u64,
}

/// Setup, not measured: a connection and the tokens to start from.
async fn set_up(
    plan: &Plan,
    index: u64,
    connections: u64,
    first_refresh: Option<String>,
) -> Result<Ready, BoxError> {
    let mut conn = Connection::open(plan.authority(index)).await?;
    let (mut refresh, mut access) = (first_refresh, None::<String>);
    if plan.scenario != Scenario::Login && refresh.is_none() {
        let body = setup_login(&mut conn, plan, index).await?;
        refresh = token(&body, "refreshToken");
        access = token(&body, "accessToken");
    }
    if matches!(plan.scenario, Scenario::Profile | Scenario::Introspect) && access.is_none() {
        // Started from a token file: one refresh gives an access token.
        let (status, body) = conn
            .call(
                Method::POST,
                "/auth/refresh",
                None,
                Some(json!({ "refreshToken": refresh })),
            )
            .await?;
        if status != 200 {
            return Err(format!("setup refresh answered {status}: {body}").into());
        }
        refresh = token(&body, "refreshToken");
        access = token(&body, "accessToken");
    }
    Ok(Ready {
        conn,
        refresh,
        access,
        user_cursor: index + connections,
    })
}

/// Runs one connection: setup, then (all connections together, after the
/// barrier) the measured loop. Answers the tally and the measured time.
/// What a connection of `scenario` sends as its `sequence`-th request.
fn next_endpoint(scenario: Scenario, sequence: u64) -> Endpoint {
    match scenario {
        Scenario::Login => Endpoint::Login,
        Scenario::Refresh => Endpoint::Refresh,
        Scenario::Profile => Endpoint::Profile,
        Scenario::Introspect => Endpoint::Introspect,
        Scenario::Mixed if sequence % MIXED_LOGIN_EVERY == MIXED_LOGIN_EVERY - 1 => Endpoint::Login,
        Scenario::Mixed if sequence.is_multiple_of(MIXED_PROFILES_PER_REFRESH + 1) => {
            Endpoint::Refresh
        }
        Scenario::Mixed => Endpoint::Profile,
    }
}

/// The access token to send with `endpoint`, if it takes one.
fn endpoint_bearer<'a>(
    endpoint: Endpoint,
    access: &'a Option<String>,
    plan: &'a Plan,
) -> Option<&'a str> {
    match endpoint {
        Endpoint::Profile => access.as_deref(),
        Endpoint::Introspect => plan.verifier_key.as_deref(),
        Endpoint::Login | Endpoint::Refresh => None,
    }
}

async fn run_connection(
    plan: Arc<Plan>,
    barrier: Arc<tokio::sync::Barrier>,
    index: u64,
    connections: u64,
    first_refresh: Option<String>,
) -> Result<(Tally, Duration), BoxError> {
    let ready = set_up(&plan, index, connections, first_refresh).await;
    // Always reach the barrier, or the others would wait for ever.
    barrier.wait().await;
    let Ready {
        mut conn,
        mut refresh,
        mut access,
        mut user_cursor,
    } = ready?;
    let mut next_user = || {
        let n = user_cursor;
        user_cursor += connections;
        n
    };
    let mut tally = Tally::default();
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut sequence: u64 = 0;
    while Instant::now() < deadline {
        let endpoint = next_endpoint(plan.scenario, sequence);
        sequence += 1;
        let started = Instant::now();
        let body = match endpoint {
            Endpoint::Login => Some(plan.login_body(next_user())),
            Endpoint::Refresh => Some(json!({ "refreshToken": refresh })),
            Endpoint::Profile => None,
            Endpoint::Introspect => Some(json!({ "token": access })),
        };
        let result = conn
            .call(
                endpoint.method(),
                endpoint.path(),
                endpoint_bearer(endpoint, &access, &plan),
                body,
            )
            .await;
        let elapsed = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let (status, body) = match result {
            Ok(answer) => answer,
            Err(_) => {
                tally.transport_errors += 1;
                conn = Connection::open(plan.authority(index)).await?;
                continue;
            }
        };
        tally
            .latencies_us
            .entry(endpoint)
            .or_default()
            .push(elapsed);
        if !(200..300).contains(&status) {
            *tally.non_2xx.entry(status).or_default() += 1;
        }
        match (endpoint, status) {
            (Endpoint::Login | Endpoint::Refresh, 200) => {
                refresh = token(&body, "refreshToken");
                access = token(&body, "accessToken");
            }
            // An introspection that says "inactive" measures nothing useful.
            (Endpoint::Introspect, 200) if body["active"] != true => tally.chain_breaks += 1,
            (Endpoint::Refresh, _) => {
                // The chain broke: start a new one (not measured).
                tally.chain_breaks += 1;
                let body = setup_login(&mut conn, &plan, next_user()).await?;
                refresh = token(&body, "refreshToken");
                access = token(&body, "accessToken");
            }
            _ => {}
        }
    }
    Ok((tally, started.elapsed()))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn latency_summary(latencies: &mut [u32], seconds: f64) -> Value {
    latencies.sort_unstable();
    json!({
        "requests": latencies.len(),
        "rps": (latencies.len() as f64 / seconds).round(),
        "p50_ms": percentile(latencies, 50.0),
        "p90_ms": percentile(latencies, 90.0),
        "p99_ms": percentile(latencies, 99.0),
        "p99_9_ms": percentile(latencies, 99.9),
        "max_ms": percentile(latencies, 100.0),
    })
}

fn authority_of(url: &str) -> Result<String, BoxError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return Err("--url has no host".into());
    }
    Ok(authority.to_string())
}

/// Runs the load and prints the report. Fails when any request failed.
pub async fn run(args: &BenchArgs) -> Result<(), BoxError> {
    let duration = parse_duration(&args.duration)?;
    let connections = args.connections.max(1);
    let start_tokens: Vec<String> = match &args.tokens {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    if args.tokens.is_some() && start_tokens.len() < connections {
        return Err(format!(
            "--tokens has {} tokens; {connections} connections need one each",
            start_tokens.len()
        )
        .into());
    }
    let plan = Arc::new(Plan {
        authorities: args
            .url
            .iter()
            .map(|url| authority_of(url))
            .collect::<Result<_, _>>()?,
        scenario: args.scenario,
        duration,
        users: args.users.max(1),
        email_format: args.email_format.clone(),
        password: args.password.clone(),
        verifier_key: match (&args.verifier_key_file, args.scenario) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        format!("cannot read --verifier-key-file {}: {e}", path.display())
                    })?
                    .trim_end_matches('\n')
                    .to_string(),
            ),
            (None, Scenario::Introspect) => {
                return Err("--scenario introspect needs --verifier-key-file".into())
            }
            (None, _) => None,
        },
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(connections));
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            let (plan, barrier) = (Arc::clone(&plan), Arc::clone(&barrier));
            let first = start_tokens.get(index).cloned();
            tokio::spawn(run_connection(
                plan,
                barrier,
                index as u64,
                connections as u64,
                first,
            ))
        })
        .collect();
    let mut tally = Tally::default();
    let mut measured = Duration::ZERO;
    for task in tasks {
        let (connection_tally, seconds) = task.await??;
        tally.merge(connection_tally);
        measured = measured.max(seconds);
    }
    report(args, connections, measured.as_secs_f64().max(0.001), tally)
}

fn report(
    args: &BenchArgs,
    connections: usize,
    seconds: f64,
    mut tally: Tally,
) -> Result<(), BoxError> {
    let mut all: Vec<u32> = tally.latencies_us.values().flatten().copied().collect();
    let total = latency_summary(&mut all, seconds);
    let by_endpoint: BTreeMap<&str, Value> = tally
        .latencies_us
        .iter_mut()
        .map(|(e, l)| (e.name(), latency_summary(l, seconds)))
        .collect();
    let non_2xx: BTreeMap<String, u64> = tally
        .non_2xx
        .iter()
        .map(|(s, c)| (s.to_string(), *c))
        .collect();
    let failures = tally.non_2xx.values().sum::<u64>() + tally.transport_errors;
    let scenario = format!("{:?}", args.scenario).to_lowercase();
    if args.json {
        let line = json!({
            "scenario": scenario, "connections": connections, "seconds": (seconds * 100.0).round() / 100.0,
            "total": total, "by_endpoint": by_endpoint, "non_2xx": non_2xx,
            "transport_errors": tally.transport_errors, "chain_breaks": tally.chain_breaks,
        });
        println!("{line}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "scenario {scenario}: {connections} connections, {seconds:.1} s"
        )?;
        for (name, s) in by_endpoint
            .iter()
            .chain(std::iter::once((&"total", &total)))
        {
            writeln!(
                out,
                "  {name:<8} {:>9} requests {:>9} req/s   latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                s["requests"], s["rps"], s["p50_ms"].as_f64().unwrap_or(0.0), s["p90_ms"].as_f64().unwrap_or(0.0),
                s["p99_ms"].as_f64().unwrap_or(0.0), s["p99_9_ms"].as_f64().unwrap_or(0.0), s["max_ms"].as_f64().unwrap_or(0.0),
            )?;
        }
        if non_2xx.is_empty() {
            writeln!(out, "  non-2xx: none")?;
        } else {
            writeln!(out, "  non-2xx by status: {non_2xx:?}")?;
        }
        if tally.transport_errors > 0 {
            writeln!(out, "  transport errors: {}", tally.transport_errors)?;
        }
        if tally.chain_breaks > 0 {
            writeln!(out, "  ERROR: {} refresh chain(s) broke (a non-200 answer to a token the server had just issued)", tally.chain_breaks)?;
        }
    }
    if failures > 0 {
        return Err(format!("{failures} request(s) failed").into());
    }
    Ok(())
}
