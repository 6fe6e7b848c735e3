//! The admin Unix socket: the `/admin/…` API beside the database
//! (`data/latchkey.sock` for `data/latchkey.redb`), so the command line can
//! manage users while the server holds the file.
//!
//! No key is needed on it: the socket file is mode 0600 in the data folder,
//! and every connection's peer credentials are checked (the server's own
//! user, or root). At start a socket file left by a crashed server is
//! replaced; one with a live server behind it stops the start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};

use crate::app::App;
use crate::config::ConfigError;
use crate::http::{error_response, serve_admin, HttpError};

/// A bound admin socket; its file is removed when this is dropped.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AdminSocket {
    /// Binds `path` (mode 0600): refuses when a server answers on it,
    /// replaces a stale socket file (never another kind of file). When the
    /// default socket cannot be created, say on a read-only data folder,
    /// `Ok(None)` with a warning: the server runs without it. One given with
    /// `--admin-socket` (`explicit`) must open.
    pub async fn bind(path: &Path, explicit: bool) -> Result<Option<AdminSocket>, ConfigError> {
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !metadata.file_type().is_socket() {
                return Err(ConfigError(format!(
                    "{} exists and is not a socket; give another --admin-socket",
                    path.display()
                )));
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(ConfigError(format!(
                    "another latchkey server is running on this data: its admin socket {} answers. \
                     Stop it first, or use another --data",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                ConfigError(format!(
                    "cannot replace the stale admin socket {}: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(path = %path.display(), "replaced a stale admin socket");
        }
        let listener = match UnixListener::bind(path) {
            Ok(listener) => listener,
            Err(e) if explicit => {
                return Err(ConfigError(format!(
                    "cannot open the admin socket {}: {e}",
                    path.display()
                )))
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot open the admin socket; serving without it (--admin-socket PATH moves it)"
                );
                return Ok(None);
            }
        };
        let socket = AdminSocket {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ConfigError(format!("cannot set the mode of {}: {e}", path.display())))?;
        Ok(Some(socket))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the admin API until the task is dropped.
    pub async fn serve(self, app: Arc<App>) {
        let own_uid = rustix::process::geteuid().as_raw();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(app.config.header_timeout)
            .max_buf_size(crate::server::MAX_HEAD_BYTES);
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = stream.peer_cred().map(|c| c.uid());
            if !matches!(peer, Ok(uid) if uid == own_uid || uid == 0) {
                tracing::warn!(peer_uid = ?peer.ok(), "refused an admin socket connection from another user");
                continue;
            }
            let app = Arc::clone(&app);
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let app = Arc::clone(&app);
                async move {
                    let path = request.uri().path().to_string();
                    let answer = match path.strip_prefix("/admin/") {
                        Some(rest) => {
                            serve_admin(
                                &app,
                                crate::http::admin::Channel::Local,
                                request,
                                rest,
                                app.config.body_timeout,
                            )
                            .await
                        }
                        None => Err(HttpError::NotFound),
                    };
                    Ok::<_, std::convert::Infallible>(
                        answer.unwrap_or_else(|error| error_response(&error)),
                    )
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "admin socket connection ended with an error");
                }
            });
        }
    }
}
