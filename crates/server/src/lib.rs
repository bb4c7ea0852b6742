//! berth's HTTP API: a thin translation of HTTP requests into calls on the
//! provider's service layer ([`berth_provider::Provider`]) and of its
//! answers and errors back into HTTP.
//!
//! Two surfaces share one router:
//! - the versioned REST API under `/v1`, described by an OpenAPI document
//!   generated from the code and served at `GET /v1/openapi.json`:
//!   workspaces, commands and files ([`v1`]), layers ([`layers`]), the
//!   workspace's agent — interpreters, sessions, terminals ([`agent`]) —,
//!   the agent binary for hosts that download it ([`distribution`]), and
//!   batch jobs, their runs, logs and patches ([`jobs`]), the cluster's
//!   nodes ([`cluster`]) and the changes of all these lists ([`events`]);
//! - Derrick's routes ([`derrick`]), so that clients written for Derrick keep
//!   working unchanged;
//! - the web dashboard at `/` ([`dashboard`]), a client of the same API
//!   that logs in for a session cookie ([`session`]).
//!
//! Errors are JSON, `{"error": {"code", "message"}}`, with the service
//! layer's stable code; [`status_for`] is the one mapping from codes to
//! statuses. Long operations never block others: each request is its own
//! task, provisioning and fetches run in tasks of their own (so they finish
//! even if their client goes away), and a command whose client goes away is
//! cancelled, its whole process tree ended.
//!
//! [`serve`] binds a loopback TCP port (token-protected) or a unix socket
//! (protected by its file mode) and runs the router until a shutdown signal.

pub mod agent;
mod auth;
mod boundary;
pub mod cluster;
mod dashboard;
pub mod derrick;
pub mod distribution;
mod error;
pub mod events;
mod extract;
pub mod jobs;
pub mod layers;
pub mod openapi;
mod server;
pub mod session;
mod stream;
pub mod v1;
pub mod workspaces;

pub use auth::{Auth, TOKEN_FILE};
pub use boundary::Boundary;
pub use error::{ApiError, ErrorBody, ErrorResponse, status_for};
pub use server::{
    DEFAULT_PORT, Listen, Server, ServerConfig, ServerError, bind, serve, shutdown_signal,
};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use berth_core::Spec;
use berth_jobs::Jobs;
use berth_provider::Provider;
use std::sync::Arc;
use tower_http::trace::TraceLayer;

/// The largest request body accepted, in bytes (file writes are buffered
/// whole before they reach the workspace).
pub const BODY_LIMIT: usize = 100 << 20;

/// How the router is set up.
#[derive(Clone)]
pub struct RouterConfig {
    pub auth: Auth,
    /// The jobs service the `/v1/jobs` and `/v1/runs` routes call.
    pub jobs: Jobs,
    /// Which `Host` and `Origin` requests may carry.
    pub boundary: Boundary,
    /// The spec Derrick's `POST /workspaces` uses when its body names none
    /// (`berth serve --workspace-config-path`).
    pub default_spec: Option<Spec>,
    /// The workspaces made through Derrick's routes, for the server to
    /// remove when it stops.
    pub derrick_workspaces: derrick::Made,
    /// The cluster's nodes, when the server serves a cluster.
    pub cluster: Option<std::sync::Arc<dyn cluster::NodeDirectory>>,
    /// What the workspace routes call, when not the provider: a cluster's
    /// controller placing workspaces on its nodes.
    pub workspaces: Option<Arc<dyn workspaces::Workspaces>>,
}

impl RouterConfig {
    pub fn new(auth: Auth, jobs: Jobs) -> Self {
        RouterConfig {
            auth,
            jobs,
            boundary: Boundary::any_host(),
            default_spec: None,
            derrick_workspaces: derrick::Made::default(),
            cluster: None,
            workspaces: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub provider: Provider,
    /// What the workspace routes call: the provider, or the cluster.
    pub workspaces: Arc<dyn workspaces::Workspaces>,
    pub jobs: Jobs,
    /// Who may use the API: the token, and the browser sessions opened
    /// with it.
    pub auth: Auth,
    pub default_spec: Option<Arc<Spec>>,
    /// The workspaces made through Derrick's routes.
    pub made: derrick::Made,
    pub cluster: Option<std::sync::Arc<dyn cluster::NodeDirectory>>,
    /// The watcher of the lists' changes.
    pub lists: events::Lists,
}

/// The whole HTTP API over `provider` and `jobs`: `/v1`, Derrick's routes, the health
/// checks, the OpenAPI document, the `Host` and `Origin` checks,
/// authentication and request tracing.
pub fn router(provider: Provider, config: RouterConfig) -> Router {
    let workspaces = config
        .workspaces
        .unwrap_or_else(|| Arc::new(provider.clone()));
    let state = AppState {
        provider,
        workspaces,
        jobs: config.jobs,
        auth: config.auth.clone(),
        default_spec: config.default_spec.map(Arc::new),
        made: config.derrick_workspaces,
        cluster: config.cluster,
        lists: events::Lists::default(),
    };
    let (routes, document) = openapi::routes().split_for_parts();
    // Rendered once: the document never changes while the server runs.
    let document = bytes::Bytes::from(document.to_pretty_json().unwrap_or_default());
    routes
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document) }
            }),
        )
        .merge(dashboard::routes())
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            config.auth,
            auth::require_token,
        ))
        // Outside authentication: a web page is refused before anything
        // else looks at its request.
        .layer(axum::middleware::from_fn_with_state(
            config.boundary,
            boundary::check,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
