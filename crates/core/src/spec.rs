//! The spec: what a workspace is made of.
//!
//! A spec is read from JSON, TOML or YAML (chosen by file extension), checked
//! field by field, and refused with an error that names the file, the field
//! and what was expected. Derrick's workspace config is read apart, as
//! Derrick reads it (see [`Spec::from_derrick_file`]).

mod derrick;

pub use derrick::DerrickConfig;

use crate::WorkspacePath;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// Where an isolated workspace's files are when its spec names no `root`.
pub const DEFAULT_ROOT: &str = "/workspace";

/// Top-level directories of an isolated workspace's filesystem that its
/// runtime mounts over, so a root cannot be in them.
const RUNTIME_DIRS: &[&str] = &["proc", "dev", "sys", "tmp", ".berth"];

/// A workspace spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A name for workspaces made from this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: Option<String>,
    /// The runtime: `local`, `sandbox`, `docker`, `fake`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub runtime: Option<String>,
    /// The base image (ignored by `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where the workspace's files are in an isolated workspace's
    /// filesystem, as an absolute path: commands start there and the
    /// paths of repositories and files are relative to it. `/workspace`
    /// when absent; `/` makes the whole filesystem the workspace (as
    /// Derrick's configs do). A `local` workspace is its directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/")]
    pub root: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::object::from_objects",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub repositories: Vec<Repository>,
    /// A shell script run in the workspace root after cloning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_script: Option<String>,
    /// Environment of the setup script and of every command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = env_schema)]
    pub env: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "crate::object::from_object",
        skip_serializing_if = "Limits::is_empty"
    )]
    pub limits: Limits,
    /// Network access; `none` by default on isolated runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(
        default,
        deserialize_with = "crate::object::from_object",
        skip_serializing_if = "Timeouts::is_empty"
    )]
    pub timeouts: Timeouts,
}

/// A map of environment variables, whose names have no `=` and no NUL.
fn env_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Environment of the setup script and of every command.",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^=\\x00]+$")),
        ))
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// A git repository cloned into the workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    #[schema(pattern = "\\S")]
    pub url: String,
    /// Where the clone goes, relative to the workspace root (the spec's
    /// `root`).
    #[schema(value_type = String)]
    pub path: WorkspacePath,
    /// A branch, tag or commit; the remote's default branch when absent.
    #[serde(
        default,
        rename = "ref",
        alias = "reference",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(pattern = "^[^-]")]
    pub reference: Option<String>,
    /// The name of a provider-held credential used to clone and fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub credential: Option<String>,
}

/// Resource limits; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory in bytes; also accepts strings like `512m` or `2g`.
    #[serde(
        default,
        deserialize_with = "deserialize_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = memory_schema)]
    pub memory: Option<u64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint32", minimum = 1, maximum = 4294967295_u32)]
    pub pids: Option<u32>,
    /// CPU share, in cores (e.g. `0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub cpus: Option<f64>,
    /// The size of the tmpfs at `/tmp` of an isolated workspace, at most
    /// its memory limit; also accepts strings like `256m`.
    #[serde(
        default,
        deserialize_with = "deserialize_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = tmp_schema)]
    pub tmp: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self == &Limits::default()
    }
}

/// Memory as [`deserialize_bytes`] reads it.
fn memory_schema() -> utoipa::openapi::schema::Schema {
    bytes_schema("Memory in bytes; also accepts strings like `512m` or `2g`.")
}

/// `/tmp`'s size as [`deserialize_bytes`] reads it.
fn tmp_schema() -> utoipa::openapi::schema::Schema {
    bytes_schema(
        "The size of `/tmp` (a tmpfs) in bytes, at most the memory limit; \
         also accepts strings like `256m`.",
    )
}

/// A size as [`deserialize_bytes`] reads it: a positive number of bytes,
/// or a number with a unit (`512m`, `1.5GiB`).
fn bytes_schema(description: &str) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
    };
    let one_of = OneOfBuilder::new()
        .description(Some(description))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(1))
                .maximum(Some(u64::MAX)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(BYTES_PATTERN)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    Schema::OneOf(one_of)
}

/// What [`parse_bytes`] reads: a decimal number, a unit, an optional `b`.
const BYTES_PATTERN: &str = "^\\s*[+]?([0-9]+[.]?[0-9]*|[.][0-9]+)\\s*([kKmMgGtT][iI]?)?[bB]?\\s*$";

/// Network access for a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Loopback only.
    None,
    /// The host's network.
    Host,
}

/// Time limits, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Limit for the setup script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub setup: Option<u64>,
    /// Default limit for each command run in the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub exec: Option<u64>,
    /// Seconds without a command, a file operation or an open terminal
    /// after which the workspace is stopped; its files are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 1, maximum = 18446744073709551615_u64)]
    pub idle: Option<u64>,
    /// Seconds after its creation at which the workspace is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 1, maximum = 18446744073709551615_u64)]
    pub lifetime: Option<u64>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self == &Timeouts::default()
    }
}

/// The formats a spec file can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
    Yaml,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// What a spec describes: a workspace, or a batch job (whose errors say
/// `invalid job`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecKind {
    Workspace,
    Job,
}

/// A spec that could not be read, naming the file and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct SpecError {
    pub kind: SpecKind,
    /// The spec file, when the spec came from one.
    pub file: Option<PathBuf>,
    /// The field at fault, as a path like `repositories[1].path`; empty for
    /// the spec as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            SpecKind::Workspace => "invalid spec",
            SpecKind::Job => "invalid job",
        })?;
        if let Some(file) = &self.file {
            write!(f, " {}", file.display())?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl SpecError {
    /// A spec of `kind` refused for its `field` (empty: the whole spec).
    pub fn new(kind: SpecKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            kind,
            file: None,
            field: field.into(),
            message: message.into(),
        }
    }

    fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError::new(SpecKind::Workspace, field, message)
    }

    /// The same error, of the spec read from `file`.
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl Format {
    /// Reads a spec file of `kind`: its format, which its extension picks,
    /// and its text.
    pub fn read(file: &Path, kind: SpecKind) -> Result<(Format, String), SpecError> {
        let whole = |message: String| SpecError::new(kind, "", message).in_file(file);
        let format = Format::from_path(file).ok_or_else(|| {
            whole("unknown file extension; expected .json, .toml, .yaml or .yml".into())
        })?;
        let text =
            std::fs::read_to_string(file).map_err(|e| whole(format!("cannot read file: {e}")))?;
        Ok((format, text))
    }

    /// Deserializes a spec of `kind` from `text`, an error naming the field
    /// at fault.
    pub fn deserialize<T: serde::de::DeserializeOwned>(
        self,
        text: &str,
        kind: SpecKind,
    ) -> Result<T, SpecError> {
        match self {
            Format::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de).map_err(|e| located(kind, e))
            }
            Format::Toml => {
                let de = toml::Deserializer::parse(text)
                    .map_err(|e| SpecError::new(kind, "", e.to_string()))?;
                serde_path_to_error::deserialize(de).map_err(|e| located(kind, e))
            }
            Format::Yaml => {
                let de = serde_yaml_ng::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| located(kind, e))
            }
        }
    }
}

/// Whether a repository URL is a path relative to its spec file (`.`,
/// `..`, `./x`, `../x`).
pub fn is_relative_url(url: &str) -> bool {
    url == "." || url == ".." || url.starts_with("./") || url.starts_with("../")
}

/// A repository URL with a relative path taken relative to `base`, the
/// spec file's directory; any other URL as it is.
pub fn resolve_url(base: &Path, url: &str) -> String {
    if !is_relative_url(url) {
        return url.to_string();
    }
    let joined = base.join(url);
    let absolute = std::fs::canonicalize(&joined).unwrap_or(joined);
    absolute.display().to_string()
}

impl Spec {
    /// Reads and checks a spec file; its extension picks the format.
    pub fn from_file(file: &Path) -> Result<Spec, SpecError> {
        let (format, text) = Format::read(file, SpecKind::Workspace)?;
        let mut spec = Spec::parse(&text, format).map_err(|e| e.in_file(file))?;
        spec.resolve_local_urls(file.parent().unwrap_or(Path::new(".")));
        Ok(spec)
    }

    /// Repository URLs that are relative paths (`.`, `./x`, `../x`) are
    /// taken relative to the spec file's directory.
    fn resolve_local_urls(&mut self, base: &Path) {
        for repo in &mut self.repositories {
            repo.url = resolve_url(base, &repo.url);
        }
    }

    /// Parses and checks a spec from text.
    pub fn parse(text: &str, format: Format) -> Result<Spec, SpecError> {
        let spec: Spec = format.deserialize(text, SpecKind::Workspace)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The workspace root in an isolated workspace's filesystem: the
    /// spec's `root`, or [`DEFAULT_ROOT`].
    pub fn root(&self) -> &str {
        self.root.as_deref().unwrap_or(DEFAULT_ROOT)
    }

    /// Checks what the types alone cannot: names, paths, overlaps, ranges.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name {
            check_name("name", name)?;
        }
        if let Some(runtime) = &self.runtime {
            check_name("runtime", runtime)?;
        }
        if let Some(root) = &self.root {
            check_root(root)?;
        }
        let mut seen: Vec<&WorkspacePath> = Vec::new();
        for (i, repo) in self.repositories.iter().enumerate() {
            if repo.path.is_root() && self.root() == "/" {
                return Err(SpecError::field(
                    format!("repositories[{i}].path"),
                    "a repository cannot be the whole filesystem (the root is `/`): \
                     give it a directory",
                ));
            }
            if self.root() == "/"
                && repo
                    .path
                    .components()
                    .next()
                    .is_some_and(|top| RUNTIME_DIRS.contains(&top))
            {
                return Err(SpecError::field(
                    format!("repositories[{i}].path"),
                    format!(
                        "`/{}` is where the runtime mounts its own files; choose another directory",
                        repo.path
                    ),
                ));
            }
            if repo.url.trim().is_empty() {
                return Err(SpecError::field(
                    format!("repositories[{i}].url"),
                    "expected a git URL, found an empty string",
                ));
            }
            if let Some(reference) = &repo.reference
                && (reference.is_empty() || reference.starts_with('-'))
            {
                return Err(SpecError::field(
                    format!("repositories[{i}].ref"),
                    format!("`{reference}` is not a branch, tag or commit"),
                ));
            }
            if let Some(credential) = &repo.credential {
                check_name(&format!("repositories[{i}].credential"), credential)?;
            }
            for other in &seen {
                if repo.path == **other {
                    return Err(SpecError::field(
                        format!("repositories[{i}].path"),
                        format!("duplicate repository path `{}`", repo.path),
                    ));
                }
                if repo.path.starts_with(other) || other.starts_with(&repo.path) {
                    return Err(SpecError::field(
                        format!("repositories[{i}].path"),
                        format!(
                            "repository path `{}` overlaps repository path `{}`",
                            repo.path, other
                        ),
                    ));
                }
            }
            seen.push(&repo.path);
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::field(
                    format!("env.{key}"),
                    "expected a variable name without `=` or NUL",
                ));
            }
        }
        for (field, value) in [
            ("timeouts.idle", self.timeouts.idle),
            ("timeouts.lifetime", self.timeouts.lifetime),
        ] {
            if value == Some(0) {
                return Err(SpecError::field(
                    field,
                    "expected at least 1 second; leave it out for no deadline",
                ));
            }
        }
        for (field, value) in [
            ("limits.memory", self.limits.memory),
            ("limits.tmp", self.limits.tmp),
        ] {
            if value == Some(0) {
                return Err(SpecError::field(field, "expected more than 0 bytes"));
            }
        }
        if self.limits.pids == Some(0) {
            return Err(SpecError::field(
                "limits.pids",
                "expected at least 1 process",
            ));
        }
        if let Some(cpus) = self.limits.cpus
            && !(cpus.is_finite() && cpus > 0.0)
        {
            return Err(SpecError::field(
                "limits.cpus",
                "expected a positive number of cores",
            ));
        }
        Ok(())
    }

    /// The key under which this spec's provisioned state is cached: a hash of
    /// everything that determines it (image, repositories and refs, setup
    /// script, env). Upstream commits are not part of it: a cached state is
    /// brought up to date by fetching, not by provisioning again.
    pub fn cache_key(&self, runtime: &str) -> String {
        #[derive(Serialize)]
        struct Determinants<'a> {
            version: u32,
            runtime: &'a str,
            image: &'a Option<String>,
            // Left out when absent, so that keys made before roots existed
            // stay the same.
            #[serde(skip_serializing_if = "Option::is_none")]
            root: &'a Option<String>,
            repositories: Vec<(&'a str, &'a str, &'a Option<String>)>,
            setup_script: &'a Option<String>,
            env: &'a BTreeMap<String, String>,
        }
        let determinants = Determinants {
            version: 1,
            runtime,
            image: &self.image,
            root: &self.root,
            repositories: self
                .repositories
                .iter()
                .map(|r| (r.url.as_str(), r.path.as_str(), &r.reference))
                .collect(),
            setup_script: &self.setup_script,
            env: &self.env,
        };
        // Serialising plain structs, vectors and sorted maps cannot fail.
        let canonical = serde_json::to_vec(&determinants).unwrap_or_default();
        hex::encode(&Sha256::digest(&canonical)[..16])
    }
}

fn located<E: fmt::Display>(kind: SpecKind, err: serde_path_to_error::Error<E>) -> SpecError {
    let field = err.path().to_string();
    let field = if field == "." { String::new() } else { field };
    SpecError::new(kind, field, err.into_inner().to_string())
}

/// Whether `value` can be a name (of a workspace, a runtime, a
/// credential): 1-128 letters, digits, `-`, `_`, `.`. Workspace ids are
/// such names too.
pub fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The OpenAPI document states the same rule as the pattern of each name
/// field (`^[A-Za-z0-9._-]{1,128}$`).
fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
    if is_name(value) {
        Ok(())
    } else {
        Err(SpecError::field(
            field,
            format!(
                "`{value}` is not a name: expected 1-128 characters of letters, digits, `-`, `_`, `.`"
            ),
        ))
    }
}

/// A root must be an absolute, normalised directory outside the runtime's
/// own mounts.
fn check_root(root: &str) -> Result<(), SpecError> {
    let refuse = |why: &str| Err(SpecError::field("root", format!("`{root}` {why}")));
    let Some(rel) = root.strip_prefix('/') else {
        return refuse("is not an absolute path");
    };
    match WorkspacePath::parse(rel) {
        Ok(path) if path.as_str() == rel => {
            if path
                .components()
                .next()
                .is_some_and(|top| RUNTIME_DIRS.contains(&top))
            {
                return refuse(
                    "is where the runtime mounts its own files; choose another directory",
                );
            }
            Ok(())
        }
        Ok(path) => refuse(&format!("is not normalised; write `/{}`", path.as_str())),
        Err(e) => Err(SpecError::field("root", e.to_string())),
    }
}

/// Accepts bytes as an integer or as a string with a k/m/g/t suffix
/// (`512m`, `2GiB`), as [`parse_bytes`] reads it.
pub fn deserialize_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Other(_)) => Err(serde::de::Error::custom(
            "expected a size: a number of bytes, or a string such as \"512m\"",
        )),
        Some(Raw::Text(text)) => parse_bytes(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a size: expected bytes or a number with k, m, g or t"
            ))
        }),
    }
}

/// Parses sizes like `512m`, `2G`, `1.5g`, `4096`.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" | "ki" => 10,
        "m" | "mi" => 20,
        "g" | "gi" => 30,
        "t" | "ti" => 40,
        _ => return None,
    };
    let number: f64 = number.trim().parse().ok()?;
    (number.is_finite() && number >= 0.0).then(|| (number * (1u64 << shift) as f64) as u64)
}

/// Writes a size as [`parse_bytes`] reads it: in the largest binary unit
/// that divides it (`4GiB`, `64KiB`), else in bytes.
pub fn format_bytes(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(text, Format::Json)
    }

    #[test]
    fn derricks_config_is_a_valid_spec() {
        let spec = json(
            r#"{"name": "test-123",
                "repositories": [{"url": "https://example.com/a.git", "path": "a", "reference": "main"}],
                "setup_script": "echo \"Hello World\""}"#,
        )
        .unwrap();
        assert_eq!(spec.repositories[0].reference.as_deref(), Some("main"));
        assert_eq!(spec.setup_script.as_deref(), Some("echo \"Hello World\""));
    }

    #[test]
    fn the_three_formats_read_the_same_spec() {
        let from_json = json(
            r#"{"runtime":"local","repositories":[{"url":"u","path":"p","ref":"v1"}],
                "env":{"A":"1"},"limits":{"memory":"512m","pids":64}}"#,
        )
        .unwrap();
        let from_toml = Spec::parse(
            "runtime = \"local\"\nenv = { A = \"1\" }\nlimits = { memory = \"512m\", pids = 64 }\n\
             [[repositories]]\nurl = \"u\"\npath = \"p\"\nref = \"v1\"\n",
            Format::Toml,
        )
        .unwrap();
        let from_yaml = Spec::parse(
            "runtime: local\nrepositories:\n  - url: u\n    path: p\n    ref: v1\nenv:\n  A: \"1\"\n\
             limits:\n  memory: 512m\n  pids: 64\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(from_json, from_toml);
        assert_eq!(from_json, from_yaml);
        assert_eq!(from_json.limits.memory, Some(512 << 20));
    }

    #[test]
    fn errors_name_the_field() {
        let err = json(r#"{"repositories":[{"url":"u","path":"p","colour":1}]}"#).unwrap_err();
        assert!(err.field.starts_with("repositories[0]"), "{err}");
        assert!(err.message.contains("unknown field `colour`"), "{err}");

        let err = json(r#"{"limits":{"pids":"many"}}"#).unwrap_err();
        assert_eq!(err.field, "limits.pids", "{err}");

        let err = json(r#"{"repositories":[{"url":"u","path":"../x"}]}"#).unwrap_err();
        assert_eq!(err.field, "repositories[0].path", "{err}");
        assert!(err.message.contains(".."), "{err}");

        let err =
            Spec::parse("repositories:\n  - url: u\n    path: /abs\n", Format::Yaml).unwrap_err();
        assert_eq!(err.field, "repositories[0].path", "{err}");

        let err = Spec::parse("[limits]\nmemory = \"lots\"\n", Format::Toml).unwrap_err();
        assert_eq!(err.field, "limits.memory", "{err}");

        assert_eq!(
            json(r#"{"limits":{"tmp":"256m"}}"#).unwrap().limits.tmp,
            Some(256 << 20)
        );
        let err = json(r#"{"limits":{"tmp":0}}"#).unwrap_err();
        assert_eq!(err.field, "limits.tmp", "{err}");
        assert!(err.message.contains("more than 0 bytes"), "{err}");
    }

    #[test]
    fn duplicate_and_nested_repository_paths_are_refused() {
        let err = json(r#"{"repositories":[{"url":"a","path":"x"},{"url":"b","path":"./x/"}]}"#)
            .unwrap_err();
        assert_eq!(err.field, "repositories[1].path");
        assert!(err.message.contains("duplicate"), "{err}");
        let err = json(r#"{"repositories":[{"url":"a","path":"x"},{"url":"b","path":"x/y"}]}"#)
            .unwrap_err();
        assert!(err.message.contains("overlaps"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("berth-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.json");
        std::fs::write(&file, r#"{"name": 5}"#).unwrap();
        let err = Spec::from_file(&file).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
        assert!(err.to_string().contains("field `name`"), "{err}");
        let err = Spec::from_file(&dir.join("spec.ini")).unwrap_err();
        assert!(err.message.contains("extension"), "{err}");
        let relative = dir.join("relative.toml");
        std::fs::write(
            &relative,
            "[[repositories]]\nurl = \"./repo\"\npath = \"r\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("repo")).unwrap();
        let spec = Spec::from_file(&relative).unwrap();
        assert_eq!(
            Path::new(&spec.repositories[0].url),
            std::fs::canonicalize(dir.join("repo")).unwrap()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_root_must_be_absolute_normalised_and_not_the_runtimes_own() {
        assert_eq!(json("{}").unwrap().root(), DEFAULT_ROOT);
        assert_eq!(json(r#"{"root":"/"}"#).unwrap().root(), "/");
        assert_eq!(json(r#"{"root":"/src/app"}"#).unwrap().root(), "/src/app");
        for (root, expected) in [
            ("src", "absolute"),
            ("/src/", "write `/src`"),
            ("/a/../b", ".."),
            ("/proc/self", "mounts its own files"),
            ("/.berth", "mounts its own files"),
            ("/tmp", "mounts its own files"),
            ("/tmp/app", "mounts its own files"),
        ] {
            let err = json(&format!(r#"{{"root":"{root}"}}"#)).unwrap_err();
            assert_eq!(err.field, "root", "{err}");
            assert!(err.message.contains(expected), "{root}: {err}");
        }
        // Under `/`, a clone cannot go where the runtime mounts over it.
        let err =
            json(r#"{"root":"/","repositories":[{"url":"u","path":"tmp/app"}]}"#).unwrap_err();
        assert_eq!(err.field, "repositories[0].path", "{err}");
        assert!(err.message.contains("`/tmp/app`"), "{err}");
        json(r#"{"root":"/","repositories":[{"url":"u","path":"code/tmp"}]}"#).unwrap();
    }

    #[test]
    fn cache_key_follows_what_determines_the_state() {
        let a = json(r#"{"repositories":[{"url":"u","path":"p"}],"setup_script":"make"}"#).unwrap();
        let mut b = a.clone();
        b.name = Some("other-name".into());
        b.timeouts.idle = Some(60);
        b.timeouts.lifetime = Some(3600);
        assert_eq!(a.cache_key("local"), b.cache_key("local"));
        b.setup_script = Some("make all".into());
        assert_ne!(a.cache_key("local"), b.cache_key("local"));
        assert_ne!(a.cache_key("local"), a.cache_key("sandbox"));
        let mut rooted = a.clone();
        rooted.root = Some("/".into());
        assert_ne!(a.cache_key("docker"), rooted.cache_key("docker"));
        // Keys made before roots existed are still found.
        assert_eq!(a.cache_key("local"), "ff0a22b7e5e26f73a0890ca535f2d1c6");
    }

    #[test]
    fn a_deadline_of_zero_seconds_is_refused_naming_its_field() {
        let err = json(r#"{"timeouts":{"idle":600,"lifetime":0}}"#).unwrap_err();
        assert_eq!(err.field, "timeouts.lifetime");
        assert!(err.message.contains("at least 1 second"), "{err}");
        let err = json(r#"{"timeouts":{"idle":0}}"#).unwrap_err();
        assert_eq!(err.field, "timeouts.idle");
        let spec = json(r#"{"timeouts":{"idle":600,"lifetime":86400}}"#).unwrap();
        assert_eq!(spec.timeouts.idle, Some(600));
        assert_eq!(spec.timeouts.lifetime, Some(86400));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("1.5K"), Some(1536));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        for size in [0, 1000, 64 << 10, 1536 << 20, 4 << 30, 3 << 40] {
            assert_eq!(parse_bytes(&format_bytes(size)), Some(size), "{size}");
        }
        assert_eq!(format_bytes(4 << 30), "4GiB");
        assert_eq!(format_bytes(1536 << 20), "1536MiB");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(parse_bytes("12 parsecs"), None);
    }

    proptest::proptest! {
        #[test]
        fn no_accepted_repository_path_escapes(path in "[a-z./]{0,12}") {
            let text = format!(r#"{{"repositories":[{{"url":"u","path":"{path}"}}]}}"#);
            if let Ok(spec) = json(&text) {
                let p = &spec.repositories[0].path;
                proptest::prop_assert!(!p.as_str().starts_with('/'));
                proptest::prop_assert!(p.components().all(|c| c != ".." && c != "."));
            }
        }
    }
}
