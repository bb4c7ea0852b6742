//! The environment commands get: the agent's own (which is the image's,
//! as the agent is the container's entrypoint), with defaults for what an
//! image may lack, plus what each request adds.

use std::collections::BTreeMap;

/// The search path given when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables whose name starts with this configure the agent itself and
/// are not passed on.
const AGENT_PREFIX: &str = "BERTH_AGENT_";

/// The base environment of every command.
#[derive(Debug, Clone)]
pub struct BaseEnv {
    vars: BTreeMap<String, String>,
}

impl BaseEnv {
    /// The agent's environment with defaults filled in. `HOME` defaults to
    /// `/root` for root and the workspace root otherwise: there is no user
    /// database lookup, as the image may have none.
    pub fn from_process(root: &str) -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::with_defaults(vars, rustix::process::getuid().is_root(), root)
    }

    fn with_defaults(mut vars: BTreeMap<String, String>, is_root: bool, root: &str) -> Self {
        vars.retain(|k, _| !k.starts_with(AGENT_PREFIX));
        vars.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        vars.entry("HOME".into())
            .or_insert_with(|| if is_root { "/root".into() } else { root.into() });
        BaseEnv { vars }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The complete environment of a command: the base, then `extra`.
    pub fn compose(&self, extra: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut vars = self.vars.clone();
        vars.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        vars.into_iter().collect()
    }

    /// The minimal environment for probing interpreters: nothing that might
    /// be secret, only what finding and starting a program needs.
    pub fn minimal(&self) -> Vec<(String, String)> {
        ["PATH", "HOME"]
            .iter()
            .filter_map(|k| Some((k.to_string(), self.get(k)?.to_string())))
            .chain([("LANG".to_string(), "C".to_string())])
            .collect()
    }

    /// The search path as directories.
    pub fn path_dirs(&self) -> Vec<std::path::PathBuf> {
        self.get("PATH")
            .unwrap_or(DEFAULT_PATH)
            .split(':')
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .collect()
    }

    /// The first executable called `program` on the search path.
    pub fn which(&self, program: &str) -> Option<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        self.path_dirs()
            .into_iter()
            .map(|d| d.join(program))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_path_and_home_and_hides_agent_settings() {
        let vars = BTreeMap::from([
            ("BERTH_AGENT_DEBUG".to_string(), "1".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ]);
        let env = BaseEnv::with_defaults(vars, false, "/workspace");
        assert_eq!(env.get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(env.get("HOME"), Some("/workspace"));
        assert_eq!(env.get("BERTH_AGENT_DEBUG"), None);
        let extra = BTreeMap::from([("LANG".to_string(), "C".to_string())]);
        assert!(env.compose(&extra).contains(&("LANG".into(), "C".into())));
        assert!(!env.minimal().iter().any(|(k, _)| k == "BERTH_AGENT_DEBUG"));
    }

    #[test]
    fn keeps_the_images_path() {
        let vars = BTreeMap::from([("PATH".to_string(), "/opt/bin".to_string())]);
        let env = BaseEnv::with_defaults(vars, true, "/w");
        assert_eq!(env.get("PATH"), Some("/opt/bin"));
        assert_eq!(env.get("HOME"), Some("/root"));
    }
}
