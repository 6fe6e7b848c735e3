//! The accept loop: one task per connection, HTTP/1.1 with keep-alive,
//! timeouts, a connection cap that sheds idle clients, panic isolation, the
//! session sweeper, the signing-key reloader, and graceful shutdown.
//!
//! [`serve`] takes an already bound listener and any shutdown future, so
//! tests bind port 0 and run the real server in-process.
//!
//! Slow clients: hyper's header-read timeout closes a connection that does
//! not deliver its request headers in time (hyper starts it whenever it waits
//! for a request, so it also ends idle keep-alive connections); the body
//! timeout lives in [`crate::http`]. At `--max-connections`, a new
//! connection pushes out the oldest open connection that is idle (no request
//! in progress), so half-open connections cannot lock out clients; when
//! every connection is busy, the new one is closed at once.
//!
//! Memory per connection is bounded: the request line and headers may take
//! at most [`MAX_HEAD_BYTES`] (a larger head gets 431), which is also the
//! most hyper buffers for a connection; bodies are bounded in
//! [`crate::http`].

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::app::App;
use crate::error::Error;

/// Most bytes of request line plus headers; hyper answers a larger head with
/// 431. Also the size hyper's read buffer may grow to, per connection.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most open connections to the metrics listener.
const METRICS_CONNECTIONS: usize = 16;

/// One open connection, as the cap sees it.
struct Tracked {
    requests_in_progress: Arc<AtomicUsize>,
    shed: Arc<Notify>,
}

/// Open connections by age (ids increase).
#[derive(Default)]
struct Connections {
    open: Mutex<BTreeMap<u64, Tracked>>,
}

impl Connections {
    /// Registers a connection; at the cap, first closes the oldest idle one.
    /// Returns `None` when every connection is busy (the new one is refused).
    fn admit(&self, id: u64, cap: usize) -> Option<(Arc<AtomicUsize>, Arc<Notify>)> {
        // Every update under this lock is one insert or remove: a poisoned
        // lock still holds a consistent map.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= cap {
            let idle = open
                .iter()
                .find(|(_, c)| c.requests_in_progress.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            let victim = open.remove(&idle?)?;
            // notify_one stores a permit if the task is not waiting yet.
            victim.shed.notify_one();
        }
        let tracked = Tracked {
            requests_in_progress: Arc::new(AtomicUsize::new(0)),
            shed: Arc::new(Notify::new()),
        };
        let handles = (
            Arc::clone(&tracked.requests_in_progress),
            Arc::clone(&tracked.shed),
        );
        open.insert(id, tracked);
        Some(handles)
    }

    fn release(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Counts a request as in progress for as long as it lives.
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InProgress(Arc::clone(counter))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Turns a panic while polling `inner` into `Err(())`: a bug in one request
/// costs that request a 500, not the connection or the process.
pub(crate) struct CatchPanic<F>(pub(crate) Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// What every connection is served with.
struct Connector {
    app: Arc<App>,
    builder: http1::Builder,
    graceful: GracefulShutdown,
    connections: Arc<Connections>,
    next_id: u64,
}

impl Connector {
    fn new(app: Arc<App>) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(app.config.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        Connector {
            app,
            builder,
            graceful: GracefulShutdown::new(),
            connections: Arc::new(Connections::default()),
            next_id: 0,
        }
    }

    /// Admits a connection under the cap and serves it on its own task:
    /// every request runs under [`CatchPanic`] and counts as in progress (so
    /// the cap does not shed the connection mid-request); the task ends when
    /// the client goes, when shutdown has drained it, or when the cap sheds it.
    fn serve(&mut self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        self.next_id += 1;
        let id = self.next_id;
        let Some((requests_in_progress, shed)) =
            self.connections.admit(id, self.app.config.max_connections)
        else {
            tracing::warn!(
                "connection limit reached and every connection is busy; refusing a connection"
            );
            return;
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&self.app);
        let service = service_fn(move |request| {
            let (app, in_progress) = (Arc::clone(&app), InProgress::start(&requests_in_progress));
            async move {
                let handled = CatchPanic(Box::pin(crate::http::handle(app, request, peer))).await;
                drop(in_progress);
                Ok::<_, std::convert::Infallible>(handled.unwrap_or_else(|()| {
                    crate::http::error_response(
                        &Error::Internal("a request handler panicked".into()).into(),
                    )
                }))
            }
        });
        let connection = self
            .graceful
            .watch(self.builder.serve_connection(TokioIo::new(stream), service));
        let connections = Arc::clone(&self.connections);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = shed.notified() => tracing::debug!("closed an idle connection to admit a new one"),
            }
            connections.release(id);
        });
    }
}

/// Serves `GET /metrics` (Prometheus text format 0.0.4) on its own
/// listener until the task is dropped; any other request gets 404.
pub async fn serve_metrics(listener: TcpListener, app: Arc<App>) {
    let upkeep = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticks.tick().await;
                app.metrics.upkeep();
            }
        })
    };
    // Ends the upkeep with this task.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _upkeep = AbortOnDrop(upkeep);
    // A scraper needs one connection; a few spare, and no more, so the
    // metrics port cannot use up the file descriptors the public one needs.
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let app = Arc::clone(&app);
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let app = Arc::clone(&app);
            async move {
                let response = if request.method() == hyper::Method::GET
                    && request.uri().path() == "/metrics"
                {
                    let sessions = app.auth.store().count_sessions().await.ok();
                    let depth = app.auth.passwords().queue_depth();
                    let mut response = hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(app.metrics.render(sessions, depth)),
                    ));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                } else {
                    crate::http::error_response(&crate::http::HttpError::NotFound)
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
}

/// Serves until `shutdown` completes, then lets in-flight requests finish
/// for up to the configured shutdown timeout.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let sweeper = tokio::spawn(Arc::clone(&app).run_sweeper(app.config.sweep_interval));
    let key_reloader = tokio::spawn(Arc::clone(&app).run_key_reloader());
    let mut connector = Connector::new(Arc::clone(&app));
    tokio::pin!(shutdown);
    // After the stop signal, serving goes on for the drain delay while
    // /readyz answers 503, so a load balancer takes the instance out first.
    let drained = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(drained);
    let mut draining = false;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown, if !draining => {
                app.draining.store(true, std::sync::atomic::Ordering::Release);
                if app.config.drain_delay.is_zero() {
                    break;
                }
                tracing::info!(delay = ?app.config.drain_delay, "draining: /readyz answers 503");
                draining = true;
                drained.as_mut().reset(tokio::time::Instant::now() + app.config.drain_delay);
                continue;
            }
            () = &mut drained => break,
        };
        connector.serve(stream, peer);
    }

    drop(listener);
    app.stopping.send_replace(true);
    sweeper.abort();
    key_reloader.abort();
    let deadline = app.config.shutdown_timeout;
    tracing::info!(timeout = ?deadline, "shutting down: finishing in-flight requests");
    if tokio::time::timeout(deadline, connector.graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_handling_becomes_an_error_value() {
        let panicked = CatchPanic(Box::pin(async {
            tokio::task::yield_now().await;
            panic!("a bug in a handler");
        }))
        .await;
        assert!(panicked.is_err());
        assert_eq!(CatchPanic(Box::pin(async { 5 })).await, Ok(5));
    }

    #[test]
    fn the_cap_sheds_the_oldest_idle_connection_and_keeps_busy_ones() {
        let connections = Connections::default();
        let (busy, _) = connections.admit(1, 2).unwrap();
        busy.fetch_add(1, Ordering::AcqRel);
        let (_, shed_second) = connections.admit(2, 2).unwrap();
        assert!(
            connections.admit(3, 2).is_some(),
            "admitted by shedding connection 2"
        );
        assert_eq!(
            connections
                .open
                .lock()
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
        // The shed connection's task is told to close.
        let told = shed_second.notified();
        tokio::pin!(told);
        assert!(futures_ready(told.as_mut()));
    }

    fn futures_ready<F: Future>(future: Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        future.poll(&mut Context::from_waker(waker)).is_ready()
    }
}
