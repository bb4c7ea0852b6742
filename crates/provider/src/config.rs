//! A provider from configuration: the file `$BERTH_HOME/config.toml`, each
//! of whose settings an environment variable overrides. Every front end
//! (the CLI, `berth serve`, berth standing in for Derrick) opens its
//! provider here, so a setting means the same everywhere.
//!
//! ```toml
//! runtime = "sandbox"          # BERTH_RUNTIME: for specs that name none
//! output_limit = "16MiB"       # BERTH_OUTPUT_LIMIT: kept per output stream
//! default_memory = "4GiB"      # BERTH_DEFAULT_MEMORY: half the host's, at most 4 GiB
//! shm_size = "64MiB"           # BERTH_SHM_SIZE: each workspace's /dev/shm
//! tmp_size = "1GiB"            # BERTH_TMP_SIZE: each workspace's /tmp, a tmpfs
//! cache_budget = "20GiB"       # BERTH_CACHE_BUDGET: the provisioning cache's size; no limit when unset
//!
//! [docker]
//! host = "unix:///var/run/docker.sock"   # DOCKER_HOST
//!
//! [sandbox]
//! standby = true               # BERTH_SANDBOX_STANDBY (1 or 0)
//! accept_weaker = false        # BERTH_SANDBOX_ACCEPT_WEAKER (1 or 0)
//! host_binds = []              # BERTH_SANDBOX_HOST_BINDS (colon-separated)
//! ```

use crate::{DEFAULT_OUTPUT_LIMIT, OpenRuntime, Provider, ProviderConfig, ServiceError};
use berth_core::spec::{deserialize_bytes, parse_bytes};
use berth_core::{ResourceDefaults, Runtime};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The configuration file's name in berth's home.
pub const CONFIG_FILE: &str = "config.toml";

/// The runtimes [`Config::open`] builds, by name.
pub const RUNTIMES: [&str; 3] = ["docker", "local", "sandbox"];

/// The first argument that makes the agent the sandbox's stage-1 init.
pub const SANDBOX_INIT: &str = "sandbox-init";

/// Why a provider could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no home for berth: set BERTH_HOME (or HOME)")]
    NoHome,
    #[error("{}: {}{message}", path.display(), field_prefix(field))]
    File {
        path: PathBuf,
        /// The setting, as a dotted path (`sandbox.standby`); empty when
        /// the file as a whole is wrong.
        field: String,
        message: String,
    },
    #[error("{name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("cannot open berth's state in {}: {source}", home.display())]
    Open {
        home: PathBuf,
        #[source]
        source: Box<ServiceError>,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// The settings a provider is built from, each resolved from (in order)
/// its environment variable, the configuration file, the default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// berth's state directory, where the configuration file is read.
    pub home: PathBuf,
    /// The runtime for specs and requests that name none.
    pub runtime: Option<String>,
    /// Bytes kept per output stream of a command that sets no limit.
    pub output_limit: u64,
    /// The memory limit and `/dev/shm` and `/tmp` sizes of isolated
    /// workspaces whose spec sets none.
    pub defaults: ResourceDefaults,
    /// The Docker (or Podman) Engine's address; `DOCKER_HOST`'s default
    /// when unset.
    pub docker_host: Option<String>,
    pub sandbox: SandboxSettings,
    /// Bytes the provisioning cache may hold before its least recently
    /// used entries that no workspace uses are evicted; no limit when unset.
    pub cache_budget: Option<u64>,
    /// The runtimes offered (a cluster node restricted to some); every
    /// one that works here when unset.
    pub offer: Option<Vec<String>>,
}

/// The sandbox runtime's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSettings {
    /// Keep a standby instance for workspaces once reset.
    pub standby: bool,
    /// Run with weaker isolation where a mechanism is missing.
    pub accept_weaker: bool,
    /// More host paths bound read-only into host-based workspaces.
    pub host_binds: Vec<PathBuf>,
}

/// The file as written: every setting optional, unknown ones refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    runtime: Option<String>,
    #[serde(default, deserialize_with = "deserialize_bytes")]
    output_limit: Option<u64>,
    #[serde(default, deserialize_with = "deserialize_bytes")]
    default_memory: Option<u64>,
    #[serde(default, deserialize_with = "deserialize_bytes")]
    shm_size: Option<u64>,
    #[serde(default, deserialize_with = "deserialize_bytes")]
    tmp_size: Option<u64>,
    #[serde(default, deserialize_with = "deserialize_bytes")]
    cache_budget: Option<u64>,
    #[serde(default)]
    docker: DockerFile,
    #[serde(default)]
    sandbox: SandboxFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerFile {
    host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxFile {
    standby: Option<bool>,
    accept_weaker: Option<bool>,
    host_binds: Option<Vec<PathBuf>>,
}

/// berth's home: `explicit` (`--home`), else `BERTH_HOME`, else
/// `$XDG_DATA_HOME/berth`, else `~/.local/share/berth`.
pub fn home_dir(explicit: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = explicit.or_else(|| var("BERTH_HOME").map(PathBuf::from)) {
        return Ok(home);
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return Ok(PathBuf::from(data).join("berth"));
    }
    let home = var("HOME").ok_or(ConfigError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/berth"))
}

impl Config {
    /// The configuration of `home`: its `config.toml` (none is all
    /// defaults) under the process's environment.
    pub fn load(home: PathBuf) -> Result<Config, ConfigError> {
        Self::load_with(home, |name| std::env::var(name).ok())
    }

    /// The configuration of `home` under the environment `env` gives,
    /// where an empty value counts as unset.
    pub fn load_with(
        home: PathBuf,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = read_file(&home.join(CONFIG_FILE))?;
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let size = |name: &'static str| -> Result<Option<u64>, ConfigError> {
            env(name)
                .map(|text| {
                    parse_bytes(&text).ok_or_else(|| ConfigError::Env {
                        name,
                        message: format!(
                            "`{text}` is not a size: expected bytes or a number with k, m, g or t"
                        ),
                    })
                })
                .transpose()
        };
        let flag = |name: &'static str| -> Result<Option<bool>, ConfigError> {
            env(name)
                .map(|text| match text.as_str() {
                    "1" | "true" => Ok(true),
                    "0" | "false" => Ok(false),
                    _ => Err(ConfigError::Env {
                        name,
                        message: format!("`{text}` is not a switch: expected 1 or 0"),
                    }),
                })
                .transpose()
        };

        let runtime = match env("BERTH_RUNTIME") {
            Some(name) => Some(known_runtime(name, |message| ConfigError::Env {
                name: "BERTH_RUNTIME",
                message,
            })?),
            None => file
                .runtime
                .map(|name| known_runtime(name, |message| in_file(&home, "runtime", message)))
                .transpose()?,
        };
        let mut defaults = ResourceDefaults::for_this_host();
        for (var, field, from_file, value) in [
            (
                "BERTH_DEFAULT_MEMORY",
                "default_memory",
                file.default_memory,
                &mut defaults.memory,
            ),
            (
                "BERTH_SHM_SIZE",
                "shm_size",
                file.shm_size,
                &mut defaults.shm,
            ),
            (
                "BERTH_TMP_SIZE",
                "tmp_size",
                file.tmp_size,
                &mut defaults.tmp,
            ),
        ] {
            match (size(var)?, from_file) {
                (Some(0), _) => {
                    return Err(ConfigError::Env {
                        name: var,
                        message: "expected more than 0 bytes".into(),
                    });
                }
                (Some(size), _) => *value = size,
                (None, Some(0)) => {
                    return Err(in_file(&home, field, "expected more than 0 bytes".into()));
                }
                (None, Some(size)) => *value = size,
                (None, None) => {}
            }
        }
        let host_binds = match env("BERTH_SANDBOX_HOST_BINDS") {
            Some(list) => list
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => file.sandbox.host_binds.unwrap_or_default(),
        };
        Ok(Config {
            runtime,
            output_limit: size("BERTH_OUTPUT_LIMIT")?
                .or(file.output_limit)
                .unwrap_or(DEFAULT_OUTPUT_LIMIT),
            defaults,
            docker_host: env("DOCKER_HOST").or(file.docker.host),
            sandbox: SandboxSettings {
                standby: flag("BERTH_SANDBOX_STANDBY")?
                    .or(file.sandbox.standby)
                    .unwrap_or(true),
                accept_weaker: flag("BERTH_SANDBOX_ACCEPT_WEAKER")?
                    .or(file.sandbox.accept_weaker)
                    .unwrap_or(false),
                host_binds,
            },
            cache_budget: size("BERTH_CACHE_BUDGET")?.or(file.cache_budget),
            offer: None,
            home,
        })
    }

    /// Builds the runtimes and opens the provider. A sandbox that cannot
    /// be set up here is left out with a warning: the other runtimes
    /// still work, and asking for it says why not.
    pub async fn open(self) -> Result<Provider, ConfigError> {
        let home = self.home.clone();
        let mut config = ProviderConfig::new(&home);
        config.default_runtime = self.runtime.clone();
        config.output_limit = self.output_limit;
        config.cache_budget = self.cache_budget;
        let this = Arc::new(self);
        // Each runtime is made when first used: `berth exec` in a sandbox
        // workspace never sets up the docker runtime, and the other way
        // round.
        for name in RUNTIMES {
            if this
                .offer
                .as_ref()
                .is_some_and(|offer| !offer.iter().any(|o| o == name))
            {
                continue;
            }
            let this = this.clone();
            let open: OpenRuntime = Box::new(move || this.runtime(name));
            config.lazy_runtimes.push((name, open));
        }
        Provider::open(config)
            .await
            .map_err(|source| ConfigError::Open {
                home,
                source: Box::new(source),
            })
    }

    /// The runtime called `name`, one of [`RUNTIMES`].
    fn runtime(&self, name: &str) -> Result<Arc<dyn Runtime>, String> {
        Ok(match name {
            "docker" => {
                let docker = match &self.docker_host {
                    Some(host) => berth_runtime_docker::DockerRuntime::with_host(&self.home, host),
                    None => berth_runtime_docker::DockerRuntime::new(&self.home),
                };
                Arc::new(docker.with_defaults(self.defaults))
            }
            "local" => Arc::new(berth_runtime_local::LocalRuntime::new(&self.home)),
            "sandbox" => Arc::new(self.sandbox_runtime()?),
            other => return Err(format!("no runtime `{other}`")),
        })
    }

    /// The sandbox runtime, with the static agent (installed from this
    /// binary into `$BERTH_HOME/bin`) as both its stage-1 init and each
    /// workspace's PID 1.
    fn sandbox_runtime(&self) -> Result<berth_runtime_sandbox::SandboxRuntime, String> {
        let mut config = berth_runtime_sandbox::SandboxConfig::from_env(&self.home);
        config.defaults = self.defaults;
        config.standby = self.sandbox.standby;
        config.accept_weaker = self.sandbox.accept_weaker;
        config.host_binds = self.sandbox.host_binds.clone();
        let agent = berth_agent_bin::install(&self.home.join("bin")).map_err(|e| e.to_string())?;
        if std::env::var_os("BERTH_SANDBOX_INIT").is_none() {
            config.init_program = agent.clone();
            config.init_args = vec![SANDBOX_INIT.into()];
        }
        if config.agent_program.is_none() {
            config.agent_program = Some(agent);
        }
        // `docker:NAME` images come from the engine the docker runtime uses.
        let exporter = match &self.docker_host {
            Some(host) => berth_runtime_sandbox::EngineExporter::new(host),
            None => berth_runtime_sandbox::EngineExporter::from_env(),
        };
        berth_runtime_sandbox::SandboxRuntime::with_exporter(config, Some(Arc::new(exporter)))
            .map_err(|e| e.to_string())
    }
}

fn read_file(path: &Path) -> Result<File, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(File::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.to_path_buf(),
                field: String::new(),
                message: format!("cannot read: {e}"),
            });
        }
    };
    let error = |field: String, message: String| ConfigError::File {
        path: path.to_path_buf(),
        field,
        message,
    };
    let de = toml::Deserializer::parse(&text).map_err(|e| error(String::new(), e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        error(field, e.into_inner().message().trim_end().to_string())
    })
}

fn in_file(home: &Path, field: &str, message: String) -> ConfigError {
    ConfigError::File {
        path: home.join(CONFIG_FILE),
        field: field.into(),
        message,
    }
}

/// `name` if [`Config::open`] builds a runtime of that name.
fn known_runtime(
    name: String,
    error: impl FnOnce(String) -> ConfigError,
) -> Result<String, ConfigError> {
    if RUNTIMES.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(error(format!(
            "no runtime `{name}`; expected one of {}",
            RUNTIMES.join(", ")
        )))
    }
}
