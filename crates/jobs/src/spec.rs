//! The job spec: a script (steps) run over many repositories, each in a
//! workspace made from the job's workspace fields plus that repository.
//!
//! Read from TOML, JSON or YAML like a workspace spec, with errors naming
//! the file and the field; relative repository URLs and `repositories_file`
//! are taken relative to the job file, and the list the file names is
//! folded into `repositories` so a stored spec stands on its own.

use berth_core::spec::{
    Format, Limits, Network, Repository, SpecKind, is_relative_url, resolve_url,
};
use berth_core::{Spec, SpecError, WorkspacePath};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use utoipa::ToSchema;

/// A job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Run once per repository after cloning; cached like any spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_script: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "berth_core::object::from_object",
        skip_serializing_if = "Limits::is_empty"
    )]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(
        default,
        deserialize_with = "berth_core::object::from_objects",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub repositories: Vec<JobRepository>,
    /// A file of repositories, one `URL [REF]` a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories_file: Option<String>,
    #[serde(default, deserialize_with = "berth_core::object::from_objects")]
    pub steps: Vec<Step>,
    #[serde(default, deserialize_with = "berth_core::object::from_object")]
    pub run: RunOptions,
    #[serde(
        default,
        deserialize_with = "berth_core::object::from_optional_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub publish: Option<Publish>,
}

/// A repository a job runs over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRepository {
    pub url: String,
    #[serde(
        default,
        rename = "ref",
        alias = "reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// One step: a shell script run in the repository's checkout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub run: String,
}

/// Which finished workspaces stay for inspection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    #[default]
    None,
    Failed,
}

/// How a run goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Tasks of one run at once on this host.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Seconds per task, provisioning included.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// How often an errored task is tried again.
    #[serde(default)]
    pub retries: u32,
    /// A cron expression: the server starts a run at each of its times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default)]
    pub keep: Keep,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            retries: 0,
            schedule: None,
            keep: Keep::None,
        }
    }
}

fn default_concurrency() -> u32 {
    4
}

fn default_timeout() -> u64 {
    900
}

/// Pushing each task's change as a commit on a branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub branch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A job spec refused for its `field` (empty: the whole spec).
fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::new(SpecKind::Job, field, message)
}

impl JobSpec {
    /// Reads a job file; the format follows its extension.
    pub fn from_file(file: &Path) -> Result<JobSpec, SpecError> {
        let (format, text) = Format::read(file, SpecKind::Job)?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut spec = format
            .deserialize::<JobSpec>(&text, SpecKind::Job)
            .map_err(|e| e.in_file(file))?;
        if let Some(list) = spec.repositories_file.take() {
            let path = base.join(&list);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "repositories_file",
                    format!("cannot read {}: {e}", path.display()),
                )
                .in_file(file)
            })?;
            let listed = parse_repository_list(&text).map_err(|(line, message)| {
                invalid(
                    "repositories_file",
                    format!("{}, line {line}: {message}", path.display()),
                )
                .in_file(file)
            })?;
            spec.repositories.extend(listed);
        }
        for repo in &mut spec.repositories {
            repo.url = resolve_url(base, &repo.url);
        }
        spec.validate().map_err(|e| e.in_file(file))?;
        Ok(spec)
    }

    /// Parses and checks a job spec from text (relative URLs stay as written
    /// and `repositories_file` is refused: there is no file to be relative to).
    pub fn parse(text: &str, format: Format) -> Result<JobSpec, SpecError> {
        let spec = format.deserialize::<JobSpec>(text, SpecKind::Job)?;
        if spec.repositories_file.is_some() {
            return Err(invalid(
                "repositories_file",
                "only a job read from a file can name a repositories file; list `repositories`",
            ));
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Checks a spec sent whole (over the API) before it is registered: it
    /// must stand on its own, naming no file and no path relative to one,
    /// since whoever sent it resolved those where the files are.
    pub fn check_standalone(&self) -> Result<(), SpecError> {
        if self.repositories_file.is_some() {
            return Err(invalid(
                "repositories_file",
                "a job sent whole cannot name a repositories file; list its repositories in \
                 `repositories`",
            ));
        }
        if let Some(i) = self
            .repositories
            .iter()
            .position(|r| is_relative_url(&r.url))
        {
            return Err(invalid(
                format!("repositories[{i}].url"),
                format!(
                    "`{}` is relative; a job sent whole names repositories by absolute path or URL",
                    self.repositories[i].url
                ),
            ));
        }
        self.validate()
    }

    /// Checks what the types alone cannot, including that every
    /// repository's workspace spec is valid.
    pub fn validate(&self) -> Result<(), SpecError> {
        let named = Spec {
            name: Some(self.name.clone()),
            ..Spec::default()
        };
        named.validate().map_err(|e| invalid("name", e.message))?;
        if self.repositories.is_empty() {
            return Err(invalid(
                "repositories",
                "expected at least one repository (or a `repositories_file`)",
            ));
        }
        if self.steps.is_empty() {
            return Err(invalid("steps", "expected at least one step"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if step.run.trim().is_empty() {
                return Err(invalid(
                    format!("steps[{i}].run"),
                    "expected a script, found an empty string",
                ));
            }
        }
        if self.run.concurrency == 0 {
            return Err(invalid(
                "run.concurrency",
                "expected at least 1 task at once",
            ));
        }
        if self.run.timeout == 0 || self.run.timeout > u64::MAX / 1000 {
            return Err(invalid(
                "run.timeout",
                "expected a positive number of seconds",
            ));
        }
        if let Some(schedule) = &self.run.schedule {
            crate::schedule::parse(schedule).map_err(|message| invalid("run.schedule", message))?;
        }
        if let Some(publish) = &self.publish {
            crate::publish::check_branch(&publish.branch)
                .map_err(|message| invalid("publish.branch", message))?;
        }
        for i in 0..self.repositories.len() {
            self.workspace_spec(i)?.validate().map_err(|e| {
                let field = match e.field.strip_prefix("repositories[0]") {
                    Some(rest) => format!("repositories[{i}]{rest}"),
                    None => e.field,
                };
                invalid(field, e.message)
            })?;
        }
        Ok(())
    }

    /// The workspace spec of the job's `index`th repository: the job's
    /// workspace fields and that repository, checked out at the root.
    pub fn workspace_spec(&self, index: usize) -> Result<Spec, SpecError> {
        let repo = self
            .repositories
            .get(index)
            .ok_or_else(|| invalid(format!("repositories[{index}]"), "no such repository"))?;
        Ok(self.spec_for(&repo.url, repo.reference.clone(), repo.credential.clone()))
    }

    /// The workspace spec of one repository of this job.
    pub fn spec_for(
        &self,
        url: &str,
        reference: Option<String>,
        credential: Option<String>,
    ) -> Spec {
        Spec {
            name: Some(self.name.clone()),
            runtime: self.runtime.clone(),
            image: self.image.clone(),
            root: self.root.clone(),
            repositories: vec![Repository {
                url: url.to_owned(),
                path: WorkspacePath::root(),
                reference,
                credential,
            }],
            setup_script: self.setup_script.clone(),
            env: self.env.clone(),
            limits: self.limits.clone(),
            network: self.network,
            timeouts: Default::default(),
        }
    }
}

/// `URL [REF]` a line; blank lines and `#` comments are skipped. An error
/// says the line (from 1) and what is wrong.
fn parse_repository_list(text: &str) -> Result<Vec<JobRepository>, (usize, String)> {
    let mut repos = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let url = words.next().unwrap_or_default().to_owned();
        let reference = words.next().map(str::to_owned);
        if let Some(extra) = words.next() {
            return Err((
                i + 1,
                format!("expected `URL [REF]`, found an extra word `{extra}`"),
            ));
        }
        repos.push(JobRepository {
            url,
            reference,
            credential: None,
        });
    }
    Ok(repos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<JobSpec, SpecError> {
        JobSpec::parse(text, Format::Toml)
    }

    const MINIMAL: &str = r#"
name = "bump"
repositories = [{ url = "https://git.example.com/a.git" }]
[[steps]]
run = "true"
"#;

    #[test]
    fn the_three_formats_read_the_same_job() {
        let from_toml = toml(MINIMAL).unwrap();
        let json = r#"{"name":"bump","repositories":[{"url":"https://git.example.com/a.git"}],
                       "steps":[{"run":"true"}]}"#;
        let yaml = "name: bump\nrepositories:\n  - url: https://git.example.com/a.git\nsteps:\n  - run: \"true\"\n";
        assert_eq!(JobSpec::parse(json, Format::Json).unwrap(), from_toml);
        assert_eq!(JobSpec::parse(yaml, Format::Yaml).unwrap(), from_toml);
        assert_eq!(from_toml.run.concurrency, 4);
        assert_eq!(from_toml.run.timeout, 900);
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            (
                MINIMAL.replace("run = \"true\"", "run = \"\""),
                "steps[0].run",
            ),
            (
                format!("{MINIMAL}\n[run]\nconcurrency = 0\n"),
                "run.concurrency",
            ),
            (
                format!("{MINIMAL}\n[run]\nschedule = \"every day\"\n"),
                "run.schedule",
            ),
            (format!("{MINIMAL}\n[run]\nkeep = \"all\"\n"), "run.keep"),
            (
                format!("{MINIMAL}\n[publish]\nbranch = \"a..b\"\n"),
                "publish.branch",
            ),
            (MINIMAL.replace("name = \"bump\"", "name = \"a b\""), "name"),
            (
                MINIMAL.replace("a.git\" }", "a.git\", ref = \"-x\" }"),
                "repositories[0].ref",
            ),
            (MINIMAL.replace("[[steps]]\nrun = \"true\"\n", ""), "steps"),
            (format!("unknown = 1\n{MINIMAL}"), "unknown"),
        ] {
            let err = toml(&text).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
    }

    #[test]
    fn file_errors_name_the_file_and_lists_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.toml");
        std::fs::create_dir(dir.path().join("web")).unwrap();
        std::fs::write(
            dir.path().join("repos.txt"),
            "# the services\nhttps://git.example.com/api.git main\n\n./web\n",
        )
        .unwrap();
        std::fs::write(
            &file,
            "name = \"j\"\nrepositories_file = \"repos.txt\"\n[[steps]]\nrun = \"true\"\n",
        )
        .unwrap();
        let spec = JobSpec::from_file(&file).unwrap();
        assert_eq!(spec.repositories.len(), 2);
        assert_eq!(spec.repositories[0].reference.as_deref(), Some("main"));
        assert_eq!(
            Path::new(&spec.repositories[1].url),
            std::fs::canonicalize(dir.path().join("web")).unwrap()
        );
        assert_eq!(spec.repositories_file, None);

        std::fs::write(dir.path().join("repos.txt"), "u main extra\n").unwrap();
        let err = JobSpec::from_file(&file).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("job.toml"), "{text}");
        assert!(text.contains("line 1"), "{text}");
        assert_eq!(err.field, "repositories_file");
    }

    #[test]
    fn each_repository_gets_a_workspace_spec_checked_out_at_the_root() {
        let spec = toml(&MINIMAL.replace(
            "a.git\" }",
            "a.git\", ref = \"v1\", credential = \"forge\" }",
        ))
        .unwrap();
        let ws = spec.workspace_spec(0).unwrap();
        assert!(ws.repositories[0].path.is_root());
        assert_eq!(ws.repositories[0].reference.as_deref(), Some("v1"));
        assert_eq!(ws.repositories[0].credential.as_deref(), Some("forge"));
        assert_eq!(ws.name.as_deref(), Some("bump"));
    }
}
