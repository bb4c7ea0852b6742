//! File operations on the workspace root.

use crate::Agent;
use crate::server::Outbox;
use berth_proto::{ClientMessage, ErrorCode};
use std::sync::Arc;

pub async fn run(_agent: &Arc<Agent>, message: ClientMessage, _payload: Vec<u8>, out: Outbox) {
    out.error(
        ErrorCode::Unsupported,
        format!("not implemented yet: {message:?}"),
    )
    .await;
}
