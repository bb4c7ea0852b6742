//! Publishing: each succeeded task's patch committed on the commit its
//! workspace was provisioned at and pushed as a branch, provider-side with
//! the repository's credential; force-with-lease against what berth pushed
//! to that branch before.

use crate::{JobError, Jobs};
use berth_core::WorkspacePath;
use berth_core::job::{Task, TaskState};
use berth_core::spec::Repository;
use berth_git::Publication;
use berth_provider::{Provider, ServiceError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Checks a branch name as `git check-ref-format --branch` would, without
/// a process: what a push would refuse is refused when the job is read.
pub(crate) fn check_branch(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name == "@"
        || name.starts_with(['-', '/', '.'])
        || name.ends_with(['/', '.'])
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("@{")
        || name.contains("//")
        || name.contains("/.")
        || name
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("`{name}` is not a valid branch name"))
    } else {
        Ok(())
    }
}

/// What publishing one task did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Published {
    pub task: String,
    pub url: String,
    pub branch: String,
    /// The commit pushed, when the push went through.
    pub commit: Option<String>,
    /// Why it did not, for this repository only.
    pub error: Option<String>,
}

impl Jobs {
    /// Pushes every succeeded task's change of `run` as `branch`; a push
    /// that fails is reported for its repository and the others go on.
    pub async fn publish(
        &self,
        provider: &Provider,
        run: &str,
        branch: &str,
        message: Option<&str>,
    ) -> Result<Vec<Published>, JobError> {
        check_branch(branch).map_err(|message| JobError::Invalid {
            field: "branch".into(),
            message,
        })?;
        let details = self.run(run)?;
        let message = message
            .map(str::to_owned)
            .unwrap_or_else(|| format!("berth job {}", details.run.job));
        let mut published = Vec::new();
        for task in details.tasks {
            if task.state == TaskState::Completed {
                published.push(self.publish_task(provider, &task, branch, &message).await?);
            }
        }
        Ok(published)
    }

    /// Pushes one completed task's change.
    pub(crate) async fn publish_task(
        &self,
        provider: &Provider,
        task: &Task,
        branch: &str,
        message: &str,
    ) -> Result<Published, JobError> {
        let mut result = Published {
            task: task.id.clone(),
            url: task.url.clone(),
            branch: branch.to_owned(),
            commit: None,
            error: None,
        };
        let patch = self.patch(&task.id)?;
        let Some(base) = &task.base_commit else {
            result.error = Some("the task recorded no base commit".into());
            return Ok(result);
        };
        if patch.is_empty() {
            result.error = Some("the task changed nothing: there is nothing to push".into());
            return Ok(result);
        }
        let previous = self.store.last_published(&task.url, branch)?;
        let repository = Repository {
            url: task.url.clone(),
            path: WorkspacePath::root(),
            reference: task.reference.clone(),
            credential: task.credential.clone(),
        };
        let publication = Publication {
            repository: &repository,
            base,
            patch: &patch,
            branch,
            message,
            previous: previous.as_deref(),
        };
        match provider.publish(&publication).await {
            Ok(commit) => {
                self.store.set_published(&task.id, branch, &commit)?;
                self.changes.runs.notify(&task.run_id);
                result.commit = Some(commit);
            }
            Err(ServiceError::Git { source, .. }) => result.error = Some(source.to_string()),
            Err(other) => result.error = Some(other.to_string()),
        }
        Ok(result)
    }
}
