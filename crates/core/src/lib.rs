//! berth's concepts, shared by every other crate: the spec a workspace is
//! made from, workspace records and states, provisioning events, and the
//! [`Runtime`] trait each isolation backend implements.
//!
//! Nothing here does heavy I/O; the crates around it do.

pub mod clock;
pub mod events;
pub mod home;
pub mod job;
pub mod label;
pub mod layers;
pub mod node;
pub mod object;
pub mod output;
pub mod read;
pub mod runtime;
pub mod spec;
pub mod usage;
pub mod workspace;

pub use berth_proto as proto;
pub use berth_proto::{
    Command, ExecEvent, ExecRequest, ExitStatus, FileEntry, FileKind, Output, PathError, Stream,
    WorkspacePath,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use events::ProvisionEvent;
pub use home::{HomeId, HomeIdError};
pub use label::{LabelError, Labels};
pub use layers::{Change, ChangeKind, ExportSummary, ExportTarget, GcReport, Snapshot};
pub use output::{Collected, MissingExit};
pub use read::{ReadSender, ReadStream};
pub use runtime::{ExecStream, Isolation, Refusal, ResourceDefaults, Runtime, RuntimeError};
pub use spec::{Spec, SpecError};
pub use workspace::{Workspace, WorkspaceId, WorkspaceState};

/// Milliseconds since the Unix epoch, the one timestamp unit berth uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
