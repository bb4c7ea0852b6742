//! The OpenAPI document, generated from the handlers and types, served at
//! `GET /v1/openapi.json`.

use crate::AppState;
use crate::error::{ErrorBody, ErrorResponse};
use crate::stream::{ErrorLine, ProgressLine};
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth",
        description = "Fresh, isolated, pre-provisioned workspaces for coding agents.\n\n\
            Every route but `/healthz`, `/health` and `/v1/session` needs `Authorization: Bearer \
            <token>` on TCP (the token is in `$BERTH_HOME/server-token`), or the session cookie \
            `POST /v1/session` sets for the dashboard (a request that may change anything with \
            the cookie must carry the dashboard's `Origin`); a unix socket needs none. Errors \
            are `{\"error\": {\"code\", \"message\"}}` with a stable code.\n\n\
            A request from another origin (one whose `Origin` is not the `Host` it is \
            addressed to) is refused with 403 `origin_not_allowed`. Without a token (`berth \
            serve --insecure-no-auth`, loopback only) a request addressed to a `Host` other \
            than the server's address or a loopback name with its port is refused with 403 \
            `host_not_allowed`. A JSON body must say `Content-Type: application/json` (415 \
            `unsupported_media_type` otherwise), except on Derrick's routes.",
    ),
    components(schemas(
        ErrorResponse,
        ErrorBody,
        ProgressLine,
        ErrorLine,
        wire::ExecEvent,
        crate::agent::TerminalControl
    )),
    tags(
        (name = "workspaces", description = "Provision, list, start, stop, fetch and remove workspaces"),
        (name = "exec", description = "Run commands in a workspace"),
        (name = "files", description = "Read, write, list and remove a workspace's files"),
        (name = "layers", description = "Snapshots, reset, forks, changes, diffs, exports and garbage collection"),
        (name = "agent", description = "A workspace's agent: interpreters, shell sessions, terminals; and the agent binary itself"),
        (name = "jobs", description = "Batch jobs: register and run a job over many repositories, list jobs and their runs, schedules"),
        (name = "runs", description = "A job's runs and their tasks: state, live events, logs, patches, cancel, retry, publish"),
        (name = "cluster", description = "The nodes of the cluster the server serves (`berth serve --nats`)"),
        (name = "events", description = "The changes of the workspaces', jobs' and nodes' lists, pushed"),
        (name = "health", description = "Liveness"),
        (name = "derrick", description = "Derrick's routes, for its existing clients"),
        (name = "session", description = "The dashboard's browser session: the token traded for a cookie"),
    )
)]
struct ApiDoc;

/// Requires the bearer token on every operation that does not opt out, and
/// documents the answers that the layers, extractors and lookups give
/// rather than the handlers: the 401 of each operation that needs the
/// token, the 403 of a foreign `Host` or `Origin`, the 400 of a malformed
/// query or body, the 400, 410 and 503 of any route naming a workspace (an
/// ambiguous id, a workspace gone, its runtime unavailable), the 413 of a
/// body over the limit and the 415 of a JSON body that does not say so (on
/// every route but Derrick's).
struct Boundaries;

impl Modify for Boundaries {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                // An operation opts out with an empty requirement.
                let open = operation.security.as_ref().is_some_and(|requirements| {
                    requirements
                        .iter()
                        .all(|r| r == &SecurityRequirement::default())
                });
                let derrick = operation
                    .tags
                    .as_ref()
                    .is_some_and(|tags| tags.iter().any(|tag| tag == "derrick"));
                let body = match &operation.request_body {
                    Some(RefOr::T(body)) => Some(body),
                    Some(RefOr::Ref(_)) | None => None,
                };
                let takes_json =
                    body.is_some_and(|body| body.content.contains_key("application/json"));
                let takes_query = operation.parameters.iter().flatten().any(|parameter| {
                    matches!(parameter, RefOr::T(p) if p.parameter_in == ParameterIn::Query)
                });
                let has_body = body.is_some();
                let names_workspace = operation.parameters.iter().flatten().any(|parameter| {
                    matches!(parameter, RefOr::T(p)
                        if p.parameter_in == ParameterIn::Path && p.name == "id")
                });
                let responses = &mut operation.responses.responses;
                if !open {
                    responses.insert("401".into(), error("No bearer token, or the wrong one"));
                }
                match responses.get_mut("403") {
                    Some(RefOr::T(forbidden)) => {
                        forbidden.description =
                            format!("{}; or a {FOREIGN}", forbidden.description);
                    }
                    _ => {
                        responses.insert("403".into(), error(&format!("A {FOREIGN}")));
                    }
                }
                if takes_json || takes_query {
                    responses
                        .entry("400".into())
                        .or_insert_with(|| error("A malformed query parameter or body"));
                }
                if names_workspace {
                    // What looking the workspace up, or reaching its
                    // runtime, can answer on any route.
                    for (status, description) in [
                        (
                            "400",
                            "An ambiguous id prefix, or an id that can name no workspace",
                        ),
                        (
                            "410",
                            "The workspace is gone from its runtime, or was removed",
                        ),
                        ("503", "The workspace's runtime is unavailable here"),
                    ] {
                        responses
                            .entry(status.into())
                            .or_insert_with(|| error(description));
                    }
                }
                if has_body {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("The body is over the limit"));
                }
                if takes_json && !derrick {
                    responses.insert(
                        "415".into(),
                        error("A JSON body without `Content-Type: application/json`"),
                    );
                }
            }
        }
    }
}

/// What a request refused by the `Host` and `Origin` checks is.
const FOREIGN: &str = "foreign `Origin` (a web page), or without a token a foreign `Host`";

/// A response carrying an [`ErrorResponse`].
fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorResponse")))
                .build(),
        )
        .build()
        .into()
}

/// Every documented route, with the document describing them.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    let mut routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::v1::routes())
        .merge(crate::layers::routes())
        .merge(crate::agent::routes())
        .merge(crate::distribution::routes())
        .merge(crate::jobs::routes())
        .merge(crate::cluster::routes())
        .merge(crate::events::routes())
        .merge(crate::derrick::routes())
        .merge(crate::session::routes());
    // After the merge: the modifier needs every operation in place.
    Boundaries.modify(routes.get_openapi_mut());
    routes
}

/// The OpenAPI document of the whole API.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// OpenAPI descriptions of the wire types defined in `berth-proto`, which
/// stays free of OpenAPI dependencies so that the in-workspace agent stays
/// small. A test checks that each description reads and writes exactly
/// what the real type does.
pub mod wire {
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;
    use utoipa::ToSchema;

    /// What to run: an argv vector run directly, or a string run by `sh -c`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Command {
        Argv(Vec<String>),
        Shell(String),
    }

    /// By hand: an argv vector must name its program (a first item that is
    /// not empty), which the derived description cannot say.
    impl utoipa::PartialSchema for Command {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
            let string = || ObjectBuilder::new().schema_type(Type::String);
            OneOfBuilder::new()
                .description(Some(
                    "What to run: an argv vector run directly (its first item the program), \
                     or a string run by `sh -c`.",
                ))
                .item(
                    ArrayBuilder::new()
                        .items(string())
                        .prefix_items([string().min_length(Some(1))])
                        .min_items(Some(1)),
                )
                .item(string())
                .into()
        }
    }

    impl ToSchema for Command {}

    /// A command to run in a workspace.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ExecRequest {
        pub command: Command,
        /// Working directory relative to the workspace root; the root when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cwd: Option<String>,
        /// Variables added to (and overriding) the workspace's environment.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub env: BTreeMap<String, String>,
        /// Bytes written to the command's stdin (base64), which is then closed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(format = Byte)]
        pub stdin: Option<String>,
        /// Time limit in milliseconds; the whole process tree is ended past it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
        pub timeout_ms: Option<u64>,
        /// Bytes kept per stream; anything beyond is counted and dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
        pub output_limit: Option<u64>,
    }

    /// Bytes of output: a string when they are UTF-8, `{"base64"}` otherwise.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(untagged)]
    pub enum Output {
        Text(String),
        Binary {
            #[schema(format = Byte)]
            base64: String,
        },
    }

    /// One event of a running command; `exit` is always the last.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ExecEvent {
        Stdout { data: Output },
        Stderr { data: Output },
        Exit(ExitStatus),
    }

    /// How a command ended.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ExitStatus {
        /// The exit code, when the command exited normally.
        pub code: Option<i32>,
        /// The signal that ended the command, when it was killed by one.
        pub signal: Option<i32>,
        /// The command ran past its timeout and was ended.
        #[serde(default)]
        pub timed_out: bool,
        /// The command was cancelled (explicitly or by its client going away).
        #[serde(default)]
        pub cancelled: bool,
        /// Bytes of stdout beyond the output limit, not delivered.
        #[serde(default)]
        pub stdout_dropped: u64,
        /// Bytes of stderr beyond the output limit, not delivered.
        #[serde(default)]
        pub stderr_dropped: u64,
        /// Wall-clock time from start to exit, in milliseconds.
        #[serde(default)]
        pub duration_ms: u64,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum FileKind {
        File,
        Dir,
        Symlink,
        Other,
    }

    /// What a workspace's agent reports about itself.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AgentInfo {
        /// The agent binary's version.
        pub version: String,
        /// The protocol version it serves.
        pub protocol: u32,
        /// Its process id in the workspace.
        pub pid: u32,
        /// Time since the agent started, in milliseconds.
        pub uptime_ms: u64,
        /// The workspace root commands and paths are relative to.
        pub root: String,
        pub interpreters: Vec<Interpreter>,
        pub resources: Resources,
        /// The agent's nice value (the highest of its threads'): the one
        /// it started at, whatever the workspace did to it, when the
        /// runtime let it hold its priority.
        #[serde(default)]
        pub nice: i32,
    }

    /// An interpreter or shell found in the workspace.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Interpreter {
        /// `python`, `node`, `ruby`, `go`, `java`, `perl`, `R`, `bash`,
        /// `sh`, or a name from the image's hints file.
        pub name: String,
        /// Absolute path of the executable.
        pub path: String,
        /// The version it reported, when it reported one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub version: Option<String>,
        pub source: InterpreterSource,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum InterpreterSource {
        /// Found on the search path and probed.
        Detected,
        /// Named by the image's hints file.
        Hint,
    }

    /// Resource use, read from `/proc` in the workspace.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Resources {
        /// The agent's own resident memory, in bytes.
        pub agent_rss_bytes: u64,
        /// CPU time the agent used, in milliseconds.
        pub agent_cpu_ms: u64,
        /// Processes visible in the workspace, the agent included.
        pub processes: u32,
        /// Operations the agent is running.
        pub operations: u32,
        /// Memory the kernel reports available, in bytes.
        pub memory_available_bytes: u64,
        /// Load average over one minute, times 100.
        pub load_1m_centi: u64,
    }

    /// One entry of a directory listing.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct FileEntry {
        /// Path relative to the workspace root, for display: each sequence
        /// of bytes that is not UTF-8 replaced by U+FFFD.
        pub path: String,
        /// The path's raw bytes in standard base64, present only when they
        /// are not UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path_bytes: Option<String>,
        pub kind: FileKind,
        pub size: u64,
        /// Unix permission bits.
        pub mode: u32,
        /// Last modification, seconds since the Unix epoch.
        pub modified: i64,
    }
}

#[cfg(test)]
mod tests {
    use super::wire;
    use berth_core::proto::{AgentInfo, Interpreter, InterpreterSource, Resources};
    use berth_core::{Command, ExecEvent, ExecRequest, ExitStatus, FileEntry, FileKind, Output};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// `real` serialises to what its description reads back, and back again.
    fn same_wire<R, W>(real: &R)
    where
        R: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
        W: Serialize + DeserializeOwned,
    {
        let json = serde_json::to_value(real).unwrap();
        let described: W = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("the description cannot read {json}: {e}"));
        assert_eq!(serde_json::to_value(&described).unwrap(), json);
        let back: R = serde_json::from_value(serde_json::to_value(&described).unwrap()).unwrap();
        assert_eq!(&back, real);
    }

    #[test]
    fn wire_descriptions_match_the_real_types() {
        let mut request = ExecRequest::argv(["ls", "-l"]);
        request.cwd = Some("src".into());
        request.env.insert("A".into(), "1".into());
        request.stdin = Some(vec![0, 1, 255]);
        request.timeout_ms = Some(5);
        request.output_limit = Some(7);
        same_wire::<_, wire::ExecRequest>(&request);
        same_wire::<_, wire::ExecRequest>(&ExecRequest::shell("echo hi"));
        for event in [
            ExecEvent::Stdout {
                data: Output(b"text".to_vec()),
            },
            ExecEvent::Stderr {
                data: Output(vec![0xff, 0xfe]),
            },
            ExecEvent::Exit(ExitStatus {
                code: Some(3),
                signal: None,
                timed_out: true,
                cancelled: true,
                stdout_dropped: 1,
                stderr_dropped: 2,
                duration_ms: 9,
            }),
        ] {
            same_wire::<_, wire::ExecEvent>(&event);
        }
        for path_bytes in [None, Some("Yf8=".to_owned())] {
            same_wire::<_, wire::FileEntry>(&FileEntry {
                path: "a/b".into(),
                path_bytes,
                kind: FileKind::Symlink,
                size: 3,
                mode: 0o644,
                modified: 17,
            });
        }
        same_wire::<_, wire::Command>(&Command::Shell("true".into()));
        let interpreter = |name: &str, version: Option<&str>, source| Interpreter {
            name: name.into(),
            path: format!("/usr/bin/{name}"),
            version: version.map(str::to_string),
            source,
        };
        same_wire::<_, wire::AgentInfo>(&AgentInfo {
            version: "0.1.0".into(),
            protocol: 1,
            pid: 1,
            uptime_ms: 12,
            root: "/workspace".into(),
            interpreters: vec![
                interpreter("python", Some("3.11.2"), InterpreterSource::Detected),
                interpreter("tool", None, InterpreterSource::Hint),
            ],
            resources: Resources {
                agent_rss_bytes: 1,
                agent_cpu_ms: 2,
                processes: 3,
                operations: 4,
                memory_available_bytes: 5,
                load_1m_centi: 6,
            },
            nice: 7,
        });
    }
}
