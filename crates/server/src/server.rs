//! Binding and running the HTTP server: a loopback TCP port guarded by a
//! bearer token, or a unix socket guarded by its file mode.

use crate::auth::{Auth, load_or_create_token};
use crate::boundary::Boundary;
use crate::{RouterConfig, router};
use axum::Router;
use axum::serve::ListenerExt;
use berth_core::{Spec, SystemClock};
use berth_jobs::Jobs;
use berth_provider::Provider;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The TCP port `berth serve` listens on by default, on 127.0.0.1.
pub const DEFAULT_PORT: u16 = 7433;

/// How long requests still running at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    /// A unix socket at this path, created with mode 0600.
    Unix(PathBuf),
}

impl Default for Listen {
    fn default() -> Self {
        Listen::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            DEFAULT_PORT,
        ))
    }
}

/// How the server is set up.
#[derive(Clone, Default)]
pub struct ServerConfig {
    pub listen: Listen,
    /// The bearer token TCP clients must send; when absent, the one stored
    /// in `$BERTH_HOME/server-token` (made on first start).
    pub token: Option<String>,
    /// Serves TCP without any token. Only allowed on a loopback address,
    /// for clients that cannot send one (Derrick's).
    pub insecure_no_auth: bool,
    /// The spec Derrick's `POST /workspaces` uses when the body has none.
    pub default_spec: Option<Spec>,
    /// The jobs service; when absent, one over the provider's registry.
    pub jobs: Option<Jobs>,
    /// The cluster's nodes, when the server serves a cluster.
    pub cluster: Option<std::sync::Arc<dyn crate::cluster::NodeDirectory>>,
    /// What the workspace routes call, when not the provider.
    pub workspaces: Option<Arc<dyn crate::workspaces::Workspaces>>,
}

impl std::fmt::Debug for ServerConfig {
    // By hand, so that the token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("default_spec", &self.default_spec)
            .field("jobs", &self.jobs.is_some())
            .field("cluster", &self.cluster.is_some())
            .field("workspaces", &self.workspaces.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to serve without authentication on {addr}: the insecure no-auth mode is \
         only allowed on a loopback address (127.0.0.1, ::1); anywhere else, serve with the \
         token (the default)"
    )]
    InsecureNotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on unix socket {}", path.display())]
    BindUnix {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another server is already listening on unix socket {}", path.display())]
    SocketInUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("server token file {}", path.display())]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "server token file {} has mode {mode:04o}; it must be readable by its owner only \
         (chmod 600)",
        path.display()
    )]
    TokenFileMode { path: PathBuf, mode: u32 },
    #[error("server token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("cannot open the jobs registry in {}", home.display())]
    Jobs {
        home: PathBuf,
        #[source]
        source: berth_store::StoreError,
    },
    #[error("the server stopped")]
    Serve(#[source] std::io::Error),
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix {
        listener: tokio::net::UnixListener,
        path: PathBuf,
    },
}

/// A bound server, not yet accepting: what it listens on is known, so that
/// a caller (or a test on port 0) can tell its clients.
pub struct Server {
    listener: Listener,
    router: Router,
    token: Option<String>,
    provider: Provider,
    /// What Derrick's workspaces are removed through.
    workspaces: Arc<dyn crate::workspaces::Workspaces>,
    /// Removed once the server stopped, as Derrick's workspaces were its
    /// server's.
    derrick_workspaces: crate::derrick::Made,
}

/// Binds the listener and builds the router; nothing is served yet.
pub async fn bind(provider: Provider, config: ServerConfig) -> Result<Server, ServerError> {
    let (listener, token, boundary) = match &config.listen {
        Listen::Tcp(addr) => {
            let token = if config.insecure_no_auth {
                if !addr.ip().is_loopback() {
                    return Err(ServerError::InsecureNotLoopback { addr: *addr });
                }
                tracing::warn!(%addr, "serving without authentication (insecure no-auth mode)");
                None
            } else {
                match &config.token {
                    Some(token) => Some(token.clone()),
                    None => Some(load_or_create_token(provider.home())?),
                }
            };
            let bind_error = |source| ServerError::BindTcp {
                addr: *addr,
                source,
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_error)?;
            let boundary = match &token {
                Some(_) => Boundary::any_host(),
                None => Boundary::loopback(listener.local_addr().map_err(bind_error)?),
            };
            (Listener::Tcp(listener), token, boundary)
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path).await?;
            (
                Listener::Unix {
                    listener,
                    path: path.clone(),
                },
                None,
                Boundary::any_host(),
            )
        }
    };
    let auth = match &token {
        Some(token) => Auth::token(token),
        None => Auth::none(),
    };
    let jobs = match config.jobs {
        Some(jobs) => jobs,
        None => {
            let store =
                berth_store::Store::open(provider.home()).map_err(|source| ServerError::Jobs {
                    home: provider.home().to_path_buf(),
                    source,
                })?;
            Jobs::sqlite(Arc::new(store), Arc::new(SystemClock))
        }
    };
    let derrick_workspaces = crate::derrick::Made::default();
    let workspaces = config
        .workspaces
        .unwrap_or_else(|| Arc::new(provider.clone()));
    let router = router(
        provider.clone(),
        RouterConfig {
            auth,
            jobs,
            boundary,
            default_spec: config.default_spec,
            derrick_workspaces: derrick_workspaces.clone(),
            cluster: config.cluster,
            workspaces: Some(workspaces.clone()),
        },
    );
    Ok(Server {
        listener,
        router,
        token,
        provider,
        workspaces,
        derrick_workspaces,
    })
}

/// Binds as configured and serves until SIGINT or SIGTERM.
pub async fn serve(provider: Provider, config: ServerConfig) -> Result<(), ServerError> {
    bind(provider, config).await?.run().await
}

impl Server {
    /// The TCP address, when listening on TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(listener) => listener.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// The socket path, when listening on a unix socket.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.listener {
            Listener::Tcp(_) => None,
            Listener::Unix { path, .. } => Some(path),
        }
    }

    /// The bearer token clients must send, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<(), ServerError> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then lets running requests finish
    /// for a grace period, and removes the workspaces made through
    /// Derrick's routes.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let grace = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        // The workspaces' deadlines are applied while the server runs.
        let reaper = tokio::spawn(self.provider.clone().reap_forever());
        let result = match self.listener {
            Listener::Tcp(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(%addr, "serving the berth API");
                }
                // A streamed answer is written in small pieces (an output
                // line, then the exit); with Nagle's algorithm each piece
                // after the first waits for the client's delayed ack, about
                // 40 ms on Linux.
                let listener = listener.tap_io(|stream| {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
                    }
                });
                let served = axum::serve(listener, self.router).with_graceful_shutdown(signal);
                tokio::select! {
                    result = served => result.map_err(ServerError::Serve),
                    () = grace => Ok(()),
                }
            }
            Listener::Unix { listener, path } => {
                tracing::info!(path = %path.display(), "serving the berth API");
                let served = axum::serve(listener, self.router).with_graceful_shutdown(signal);
                let result = tokio::select! {
                    result = served => result.map_err(ServerError::Serve),
                    () = grace => Ok(()),
                };
                let _ = std::fs::remove_file(&path);
                result
            }
        };
        reaper.abort();
        // The listener is closed by now; the workspaces go after it.
        self.derrick_workspaces.remove_all(&*self.workspaces).await;
        result
    }
}

/// Binds a unix socket that is never reachable with a wider mode than 0600:
/// it is made in a private directory, restricted, then renamed into place.
/// A stale socket left by a dead server is replaced; a live one is not.
async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    let bind_error = |source| ServerError::BindUnix {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ServerError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(bind_error)?;
    let private = tempfile::Builder::new()
        .prefix(".berth-socket-")
        .tempdir_in(parent)
        .map_err(bind_error)?;
    let staged = private.path().join("s");
    let listener = tokio::net::UnixListener::bind(&staged).map_err(bind_error)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .map_err(bind_error)?;
    std::fs::rename(&staged, path).map_err(bind_error)?;
    Ok(listener)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = interrupt.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = ServerConfig {
            token: Some("s3cret-value".into()),
            ..ServerConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
