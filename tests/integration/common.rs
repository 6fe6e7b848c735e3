//! Test harness: an in-process server on port 0 with a temporary data folder,
//! the real binary for CLI and crash tests, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use latchkey::app::App;
use latchkey::config::{Argon2Costs, Lifetimes, ServeConfig, TypeRoles};
use latchkey::secrets::Secret;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery";
/// Cheap argon2 parameters so tests do not spend their time hashing.
pub const CHEAP_ARGON2: Argon2Costs = Argon2Costs {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};
pub const CHEAP_ARGON2_FLAGS: [&str; 4] = ["--argon2-memory", "64", "--argon2-iterations", "1"];

/// The keys test servers sign with, for minting tokens in tests.
pub fn test_keys() -> latchkey::tokens::TokenKeys {
    latchkey::tokens::TokenKeys::new(&Secret::new(SECRET.as_bytes().to_vec()).unwrap())
}

pub fn test_config(data: &Path) -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1".into(),
        port: 0,
        data: data.join("latchkey.redb"),
        cache_bytes: 8 << 20,
        min_free_bytes: 0,
        database: None,
        database_pool: 16,
        secret_from_database: false,
        database_ca_file: None,
        signing: latchkey::keys::SigningConfig::hs256(
            Secret::new(SECRET.as_bytes().to_vec()).unwrap(),
        ),
        lifetimes: Lifetimes {
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(7 * 86_400),
            reuse_grace: Duration::from_secs(10),
            session_ttl: Duration::from_secs(30 * 86_400),
        },
        type_roles: TypeRoles::default(),
        argon2: CHEAP_ARGON2,
        hash_workers: 2,
        hash_queue: 64,
        seed_users: vec![
            latchkey::config::parse_seed_user(&format!("ana@example.com:2:Ana Admin:{PASSWORD}"))
                .unwrap(),
            latchkey::config::parse_seed_user(&format!("mo@example.com:1:Mo Mobile:{PASSWORD}"))
                .unwrap(),
        ],
        sweep_interval: Duration::from_secs(3600),
        shutdown_timeout: Duration::from_secs(5),
        drain_delay: Duration::ZERO,
        throttle: Some(latchkey::throttle::ThrottlePolicy::default()),
        trusted_proxies: Vec::new(),
        max_connections: 10_000,
        max_sessions_per_user: 100,
        registration: None,
        admin_key: None,
        verifier_keys: Vec::new(),
        admin_roles: Vec::new(),
        admin_socket: None,
        admin_socket_explicit: false,
        cors_origins: Vec::new(),
        metrics_bind: None,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
    }
}

/// The real server, in this process, on a free port, with its own data folder.
pub struct TestServer {
    pub url: String,
    pub app: Arc<App>,
    pub client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    _data: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = test_config(data.path());
        adjust(&mut config);
        let app = App::start(config).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&app);
        let done = tokio::spawn(async move {
            latchkey::server::serve(listener, served, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            client: HttpClient::new(&url),
            url,
            app,
            stop: Some(stop),
            done: Some(done),
            _data: data,
        }
    }

    /// Stops accepting and waits for the server task to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
    }

    pub async fn login(&self, email: &str, kind: Option<&str>) -> Tokens {
        login(&self.client, email, kind).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl Tokens {
    pub fn from_body(body: &Value) -> Self {
        Tokens {
            access: body["accessToken"]
                .as_str()
                .expect("accessToken")
                .to_string(),
            refresh: body["refreshToken"]
                .as_str()
                .expect("refreshToken")
                .to_string(),
        }
    }
}

pub async fn login(client: &HttpClient, email: &str, kind: Option<&str>) -> Tokens {
    let mut body = json!({ "email": email, "password": PASSWORD });
    if let Some(kind) = kind {
        body["type"] = json!(kind);
    }
    let response = client.post_json("/auth/login", &body).await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "login failed: {}",
        response.body
    );
    Tokens::from_body(&response.body)
}

#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Response {
    pub fn error_code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<no error code>")
    }

    /// Asserts status and error code, and the shape of an error body.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.error_code(), code, "body: {}", self.text);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message missing: {}",
            self.text
        );
        assert_eq!(
            self.body.as_object().unwrap().len(),
            2,
            "only error and message: {}",
            self.text
        );
    }
}

#[derive(Clone)]
pub struct HttpClient {
    base: String,
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new(base: &str) -> Self {
        HttpClient {
            base: base.to_string(),
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; a transport failure (refused, reset, timed out) is an `Err`.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.request(request))
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Response {
            status,
            headers,
            text,
            body,
        })
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response {
        self.try_send(method, path, headers, body)
            .await
            .expect("request failed")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// Like [`HttpClient::refresh`], but a transport failure is an `Err`.
    pub async fn try_refresh(&self, refresh_token: &str) -> Result<Response, String> {
        let body = json!({ "refreshToken": refresh_token }).to_string();
        self.try_send(
            Method::POST,
            "/auth/refresh",
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json("/auth/refresh", &json!({ "refreshToken": refresh_token }))
            .await
    }

    pub async fn healthz(&self) -> Response {
        self.send(Method::GET, "/healthz", &[], Bytes::new()).await
    }

    pub async fn profile(&self, access_token: &str) -> Response {
        let bearer = format!("Bearer {access_token}");
        self.send(
            Method::GET,
            "/auth/profile",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await
    }

    pub async fn logout(&self, refresh_token: &str, scope: Option<&str>) -> Response {
        let mut body = json!({ "refreshToken": refresh_token });
        if let Some(scope) = scope {
            body["scope"] = json!(scope);
        }
        self.post_json("/auth/logout", &body).await
    }
}

/// Decodes a JWT part (header or payload) without verifying anything.
pub fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWT part");
    serde_json::from_slice(&base64url_decode(part)).expect("JSON in JWT")
}

pub fn claims(token: &str) -> Value {
    jwt_part(token, 1)
}

fn base64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (value(c) << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

// ---- the real binary -----------------------------------------------------

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_latchkey")
}

/// Runs the binary to completion with `stdin` fed in.
pub fn run_cli(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    wait_with_timeout(child, Duration::from_secs(30))
}

/// Runs `latchkey serve --port 0 --data <db> <extra…>` for a start-up that
/// is expected to fail (a server that starts would run until the timeout).
pub fn run_failing_serve(db: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["serve", "--port", "0", "--data", db];
    args.extend(extra);
    run_cli(&args, "")
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `latchkey serve` as a child process on a free port.
pub struct ServerProcess {
    pub child: Child,
    pub client: HttpClient,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `latchkey serve --port 0 --data <data>/latchkey.redb <extra…>`
    /// and waits for it to report its address.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let db = data.join("latchkey.redb");
        let mut command = Command::new(binary());
        command.arg("serve");
        // Port 0 (a free one) unless the caller chose one.
        if !extra.contains(&"--port") {
            command.args(["--port", "0"]);
        }
        command
            .arg("--data")
            .arg(&db)
            .args(CHEAP_ARGON2_FLAGS)
            .args(extra);
        command
            .env("LATCHKEY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    // Text or JSON logs: the address is what follows, up to
                    // the first character no address has.
                    let rest = &line[at + "listening on http://".len()..];
                    let address: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                        .collect();
                    let _ = address_tx.send(address);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", log.lock().unwrap());
            }
        };
        let url = format!("http://{address}");
        ServerProcess {
            child,
            client: HttpClient::new(&url),
            log,
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit (after a signal sent elsewhere).
    pub fn terminate_waiting(mut self) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends `signal` (`TERM`, `INT`), then waits for a clean exit.
    pub fn stop_with(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The stderr reader may lag behind the exit by a moment.
                for _ in 0..100 {
                    if self
                        .log
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|line| line.contains("stopped"))
                    {
                        return status;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                panic!("no clean stop in the log: {:?}", self.log.lock().unwrap());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server did not stop after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn data_dir() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}
