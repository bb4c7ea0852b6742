//! berth's service layer over NATS: the provider served as a NATS service
//! (discoverable with `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`), one
//! endpoint per operation under a subject prefix (`berth.v1` by default),
//! and the client `berth --server nats://...` uses. The front end only
//! translates: behaviour, bounds and errors are the provider's, and error
//! codes and messages are the HTTP API's.

mod api;
mod client;
mod jobs;
pub mod protocol;
mod service;

pub use api::Api;
pub use client::{NatsClient, NatsTerminal};
pub use protocol::{DEFAULT_PREFIX, Op, SERVICE_NAME};
pub use service::{
    Frame, Handler, Input, Inputs, NatsService, ServeError, ServiceConfig, serve, start,
    valid_prefix,
};

/// Whether `server` names a NATS server (`nats://` or `tls://`) rather
/// than an HTTP one.
pub fn is_nats_url(server: &str) -> bool {
    server.starts_with("nats://") || server.starts_with("tls://")
}
