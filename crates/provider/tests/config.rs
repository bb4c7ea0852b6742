//! The provider's configuration: `$BERTH_HOME/config.toml` under the
//! environment, as every front end reads it.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::ResourceDefaults;
use berth_provider::config::{CONFIG_FILE, Config, ConfigError};
use std::collections::HashMap;
use std::path::PathBuf;

fn home_with(file: Option<&str>) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    if let Some(text) = file {
        std::fs::write(home.path().join(CONFIG_FILE), text).unwrap();
    }
    home
}

fn load(home: &tempfile::TempDir, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with(home.path().to_path_buf(), |name| env.get(name).cloned())
}

#[test]
fn without_a_file_or_variables_every_setting_is_its_default() {
    let home = home_with(None);
    let config = load(&home, &[]).unwrap();
    assert_eq!(config.runtime, None);
    assert_eq!(config.output_limit, berth_provider::DEFAULT_OUTPUT_LIMIT);
    assert_eq!(config.defaults, ResourceDefaults::for_this_host());
    assert_eq!(config.docker_host, None);
    assert!(config.sandbox.standby);
    assert!(!config.sandbox.accept_weaker);
    assert!(config.sandbox.host_binds.is_empty());
    assert_eq!(
        config.cache_budget, None,
        "the cache has no budget by default"
    );
}

const FULL: &str = r#"
runtime = "local"
output_limit = "1m"
default_memory = "512MiB"
shm_size = 8388608
tmp_size = "256m"
cache_budget = "20GiB"

[docker]
host = "unix:///run/podman/podman.sock"

[sandbox]
standby = false
accept_weaker = true
host_binds = ["/opt/a", "/opt/b"]
"#;

#[test]
fn the_file_sets_every_setting() {
    let home = home_with(Some(FULL));
    let config = load(&home, &[]).unwrap();
    assert_eq!(config.runtime.as_deref(), Some("local"));
    assert_eq!(config.output_limit, 1 << 20);
    assert_eq!(
        config.defaults,
        ResourceDefaults {
            memory: 512 << 20,
            shm: 8 << 20,
            tmp: 256 << 20,
        }
    );
    assert_eq!(
        config.docker_host.as_deref(),
        Some("unix:///run/podman/podman.sock")
    );
    assert!(!config.sandbox.standby);
    assert!(config.sandbox.accept_weaker);
    assert_eq!(
        config.sandbox.host_binds,
        [PathBuf::from("/opt/a"), PathBuf::from("/opt/b")]
    );
    assert_eq!(config.cache_budget, Some(20 << 30));
}

#[test]
fn environment_variables_override_the_file() {
    let home = home_with(Some(FULL));
    let config = load(
        &home,
        &[
            ("BERTH_RUNTIME", "docker"),
            ("BERTH_OUTPUT_LIMIT", "2k"),
            ("BERTH_DEFAULT_MEMORY", "1g"),
            ("BERTH_SHM_SIZE", "16m"),
            ("BERTH_TMP_SIZE", "100m"),
            ("DOCKER_HOST", "tcp://127.0.0.1:2375"),
            ("BERTH_SANDBOX_STANDBY", "1"),
            ("BERTH_SANDBOX_ACCEPT_WEAKER", "0"),
            ("BERTH_SANDBOX_HOST_BINDS", "/x::/y"),
            ("BERTH_CACHE_BUDGET", "10G"),
        ],
    )
    .unwrap();
    assert_eq!(config.cache_budget, Some(10 << 30));
    assert_eq!(config.runtime.as_deref(), Some("docker"));
    assert_eq!(config.output_limit, 2048);
    assert_eq!(
        config.defaults,
        ResourceDefaults {
            memory: 1 << 30,
            shm: 16 << 20,
            tmp: 100 << 20,
        }
    );
    assert_eq!(config.docker_host.as_deref(), Some("tcp://127.0.0.1:2375"));
    assert!(config.sandbox.standby);
    assert!(!config.sandbox.accept_weaker);
    assert_eq!(
        config.sandbox.host_binds,
        [PathBuf::from("/x"), PathBuf::from("/y")]
    );
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let home = home_with(Some("runtime = \"local\"\n"));
    let config = load(&home, &[("BERTH_RUNTIME", ""), ("BERTH_SHM_SIZE", "")]).unwrap();
    assert_eq!(config.runtime.as_deref(), Some("local"));
    assert_eq!(config.defaults.shm, ResourceDefaults::SHM);
}

/// The message of a configuration error, which must name where it is.
fn error(file: Option<&str>, env: &[(&str, &str)]) -> (String, PathBuf) {
    let home = home_with(file);
    let path = home.path().join(CONFIG_FILE);
    let message = load(&home, env).unwrap_err().to_string();
    (message, path)
}

#[test]
fn a_bad_setting_in_the_file_is_named_with_the_file() {
    for (text, field, says) in [
        ("shm_size = \"lots\"\n", "shm_size", "`lots` is not a size"),
        (
            "default_memory = 0\n",
            "default_memory",
            "more than 0 bytes",
        ),
        ("shm_size = true\n", "shm_size", "expected a size"),
        ("tmp_size = 0\n", "tmp_size", "more than 0 bytes"),
        (
            "[sandbox]\nstandby = \"yes\"\n",
            "sandbox.standby",
            "boolean",
        ),
        ("runtime = \"nope\"\n", "runtime", "no runtime `nope`"),
        (
            "[docker]\nsocket = \"/x\"\n",
            "docker",
            "unknown field `socket`",
        ),
        (
            "output_limt = \"1m\"\n",
            "output_limt",
            "unknown field `output_limt`",
        ),
    ] {
        let (message, path) = error(Some(text), &[]);
        let expected = format!("{}: {field}", path.display());
        assert!(message.starts_with(&expected), "{expected}: {message}");
        assert!(message.contains(says), "{says}: {message}");
    }
    let (message, path) = error(Some("runtime = \n"), &[]);
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
}

#[test]
fn a_bad_variable_is_named() {
    for (name, value, says) in [
        ("BERTH_SHM_SIZE", "lots", "`lots` is not a size"),
        ("BERTH_DEFAULT_MEMORY", "0", "more than 0 bytes"),
        ("BERTH_TMP_SIZE", "big", "`big` is not a size"),
        ("BERTH_OUTPUT_LIMIT", "12 parsecs", "is not a size"),
        ("BERTH_SANDBOX_STANDBY", "maybe", "expected 1 or 0"),
        ("BERTH_RUNTIME", "nope", "no runtime `nope`"),
    ] {
        let (message, _) = error(Some(FULL), &[(name, value)]);
        assert!(
            message.starts_with(&format!("{name}: ")),
            "{name}: {message}"
        );
        assert!(message.contains(says), "{says}: {message}");
    }
}

#[test]
fn an_unreadable_file_is_an_error_not_the_defaults() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(CONFIG_FILE)).unwrap();
    let message = load(&home, &[]).unwrap_err().to_string();
    assert!(message.contains("cannot read"), "{message}");
}

#[tokio::test]
async fn open_builds_every_runtime_with_the_configured_default() {
    let home = home_with(Some("runtime = \"local\"\n"));
    let provider = load(&home, &[]).unwrap().open().await.unwrap();
    let names: Vec<String> = provider
        .runtimes()
        .await
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(names.contains(&"local".to_string()), "{names:?}");
    assert!(names.contains(&"docker".to_string()), "{names:?}");
    let spec = berth_core::Spec::parse("{}", berth_core::spec::Format::Json).unwrap();
    let ws = provider
        .create(
            spec,
            berth_provider::CreateOptions::default(),
            berth_provider::Progress::none(),
        )
        .await
        .unwrap();
    assert_eq!(ws.runtime, "local", "the configured default is used");
    provider.remove(ws.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn a_command_sets_up_only_the_runtime_its_workspace_uses() {
    let home = home_with(Some("runtime = \"local\"\n"));
    let provider = load(&home, &[]).unwrap().open().await.unwrap();
    let spec = berth_core::Spec::parse("{}", berth_core::spec::Format::Json).unwrap();
    let ws = provider
        .create(
            spec,
            berth_provider::CreateOptions::default(),
            berth_provider::Progress::none(),
        )
        .await
        .unwrap();
    drop(provider);

    let provider = load(&home, &[]).unwrap().open().await.unwrap();
    let (_, mut events) = provider
        .exec(
            ws.id.as_str(),
            berth_core::ExecRequest::shell("true"),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    while events.recv().await.is_some() {}
    // The sandbox installs its agent and makes its directories when it is
    // set up: a local workspace's command did neither.
    let made = |name: &str| home.path().join(name).exists();
    assert!(!made("sandbox") && !made("bin"), "the sandbox was set up");
    // Listing the runtimes sets up each one.
    let names: Vec<String> = provider
        .runtimes()
        .await
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["docker", "local", "sandbox"]);
    assert!(made("bin"), "the sandbox's agent is installed");
}
