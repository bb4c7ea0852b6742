//! What a workspace's layers make possible: snapshots, reset, forks, the
//! list of changes, a patch of them, their export, and garbage collection.

use crate::{CreateOptions, Provider, ServiceError};
use berth_core::events::ProvisionStep;
use berth_core::{
    Change, ExecRequest, ExportSummary, ExportTarget, GcReport, ReadSender, ReadStream, Runtime,
    RuntimeError, Snapshot, Workspace, WorkspacePath, WorkspaceState,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The most forks one request makes: each is a running workspace, and a
/// typo'd count must not fill the host.
pub const MAX_FORKS: usize = 64;

/// A workspace's changes exported as an archive, its file open and
/// already unlinked.
#[derive(Debug)]
pub struct ExportedArchive {
    /// The workspace's id.
    pub workspace: String,
    pub summary: ExportSummary,
    pub file: tokio::fs::File,
    /// The archive's size in bytes.
    pub length: u64,
}

/// What garbage collection removed in one runtime.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuntimeGc {
    pub runtime: String,
    #[serde(flatten)]
    pub report: GcReport,
}

/// What garbage collection removed.
#[derive(Debug, Clone)]
pub struct Gc {
    /// One report per runtime that keeps layers.
    pub runtimes: Vec<RuntimeGc>,
    /// What interrupted git processes left in the mirrors: partial clones,
    /// bundles, lock files.
    pub git: Vec<std::path::PathBuf>,
}

/// Writes the patch of one repository (`$1`) against the commit it was
/// provisioned at (`refs/berth/base`, else HEAD) into the file `$3` of the
/// repository: a scratch index gets every file of the working tree
/// (untracked ones too, ignored ones not). Reading writes nothing else in
/// the workspace: the scratch index and the objects `git add` makes go to
/// a temporary directory outside the tree, the repository's own objects
/// read through it as alternates, so `changes` lists the same before and
/// after. Paths are prefixed with `$2`, the repository's path, so the
/// patch applies from the workspace root. A failed run leaves no file.
///
/// The repository's own index, when it can be read, lends its stat data to
/// the files unchanged since, so that `add` reads only the changed ones.
/// When the runtime's layers tell what changed since provisioning, the
/// files they name (`$4` is `listed`, the paths on stdin, NUL-separated;
/// `layers` when they name none) lose their stat data and are always read,
/// and the rest are judged without their ctime: moving a clone into a
/// workspace changes every file's ctime, which would make `add` read them
/// all. Without the layers' word (`$4` is `stat`) every stat field counts,
/// as in git.
const DIFF_SCRIPT: &str = r#"set -e
cd "$1"
where=$(git rev-parse --absolute-git-dir --git-common-dir --verify -q 'refs/berth/base^{commit}') ||
  where=$(git rev-parse --absolute-git-dir --git-common-dir --verify 'HEAD^{commit}')
{ read -r gitdir; read -r common; read -r base; } <<EOF
$where
EOF
objects=$(cd "$common/objects" && pwd -P)
# What a diff killed before its patch was read left behind: a patch is
# read at once once written, so one an hour old is no other diff's.
for old in "$gitdir"/berth-diff-*.patch; do
  if [ -e "$old" ]; then
    find "$gitdir" -maxdepth 1 -name 'berth-diff-*.patch' -mmin +60 -exec rm -f {} + 2>/dev/null || true
  fi
  break
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"; [ "$written" = 1 ] || rm -f "$3"' EXIT
trap 'exit 1' HUP INT TERM
export GIT_INDEX_FILE="$scratch/index" GIT_OBJECT_DIRECTORY="$scratch"
export GIT_ALTERNATE_OBJECT_DIRECTORIES="$objects"
trustctime=true
forget() { :; }
case $4 in
  listed)
    trustctime=false
    forget() { GIT_LITERAL_PATHSPECS=1 git rm -q -f --cached --ignore-unmatch --pathspec-from-file=- --pathspec-file-nul; } ;;
  layers) trustctime=false ;;
esac
# Any index that does not do (missing, corrupt, mid-merge) gives way to
# none, and every file is read.
if ! { cp -p "$gitdir/index" "$scratch/index" 2>/dev/null && forget && git read-tree -m "$base" 2>/dev/null; }; then
  rm -f "$scratch/index"
  git read-tree "$base"
fi
git -c core.trustctime=$trustctime add -A .
git -c core.quotepath=off diff --cached --no-color --binary --src-prefix="a/$2" --dst-prefix="b/$2" "$base" >"$3"
written=1
"#;

impl Provider {
    async fn settled(&self, id: &str) -> Result<Workspace, ServiceError> {
        let ws = self.touched(id).await?;
        match ws.state {
            WorkspaceState::Running | WorkspaceState::Stopped => {
                self.used(&ws);
                Ok(ws)
            }
            state => Err(ServiceError::WrongState {
                id: ws.id.to_string(),
                state,
                hint: "only a running or stopped workspace has layers to work on",
            }),
        }
    }

    /// Freezes the workspace's current files into a snapshot.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, ServiceError> {
        let ws = self.settled(id).await?;
        self.runtime_of(&ws)?
            .snapshot(&ws)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))
    }

    /// Returns the workspace to its provisioned state, or to a snapshot.
    pub async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace, ServiceError> {
        if let Some(snapshot) = to {
            check_snapshot_id(snapshot)?;
        }
        let ws = self.settled(id).await?;
        // Its repositories may be elsewhere now (a snapshot's state, or
        // their cached state without what provisioning fetched).
        self.set_provisioned(&ws.id, None);
        self.runtime_of(&ws)?
            .reset(&ws, to)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))?;
        // A new instance, with a new agent, serves the workspace now.
        self.end_instance(&ws.id);
        self.get(ws.id.as_str())
    }

    /// The paths added, modified and deleted since the state the workspace
    /// was made from or last reset to: its provisioned state, a fork's
    /// origin at the fork, or the snapshot `reset` was given. A patch file
    /// a killed diff left in a repository's git directory is none of them.
    pub async fn changes(&self, id: &str) -> Result<Vec<Change>, ServiceError> {
        let ws = self.settled(id).await?;
        let mut changes = self
            .runtime_of(&ws)?
            .changes(&ws)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))?;
        changes.retain(|change| !is_diff_patch(&change.path));
        Ok(changes)
    }

    /// Writes the changed files to a host archive or directory.
    pub async fn export(
        &self,
        id: &str,
        target: &ExportTarget,
    ) -> Result<ExportSummary, ServiceError> {
        let ws = self.settled(id).await?;
        self.runtime_of(&ws)?
            .export_changes(&ws, target)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))
    }

    /// The changed files as a `.tar.zst` archive, open for reading, for a
    /// front end to send. The archive is written in a private directory
    /// under the home's `tmp` that the provider alone names (a client never
    /// chooses a host path written to), and unlinked before it is handed
    /// back: nothing is left behind whether or not the reader reads it all.
    pub async fn export_archive(&self, id: &str) -> Result<ExportedArchive, ServiceError> {
        let ws = self.get(id)?;
        let scratch = self.home().join("tmp");
        let local = |what: &'static str| {
            let (id, dir) = (ws.id.to_string(), scratch.clone());
            move |source| ServiceError::Scratch {
                id,
                what,
                dir,
                source,
            }
        };
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(local("make the export directory"))?;
        // Made here, private (0700).
        let dir = tempfile::Builder::new()
            .prefix("export-")
            .tempdir_in(&scratch)
            .map_err(local("make a private export directory"))?;
        let path = dir.path().join("changes.tar.zst");
        let summary = self
            .export(
                ws.id.as_str(),
                &ExportTarget::Archive { path: path.clone() },
            )
            .await?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(local("open the exported archive"))?;
        let length = file
            .metadata()
            .await
            .map_err(local("read the exported archive"))?
            .len();
        // Unlinked now: the open file stays readable.
        drop(dir);
        Ok(ExportedArchive {
            workspace: ws.id.to_string(),
            summary,
            file,
            length,
        })
    }

    /// A git-style patch of the changes in each of the workspace's
    /// repositories since they were provisioned, committed or not, streamed.
    /// A repository whose changes the host can show exactly is diffed on
    /// the host, in bounded memory (see [`crate::patch`]). For any other,
    /// git writes the patch into a file in its own git directory inside
    /// the workspace; the patches are opened, removed, and read as the
    /// stream is consumed, so a patch of any size passes through bounded
    /// memory, no output bound can cut it, and a berth killed while
    /// streaming leaves nothing behind. A failure once streaming has begun
    /// ends the stream with an error.
    pub async fn diff(&self, id: &str) -> Result<ReadStream, ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        let name = format!(
            ".git/berth-diff-{}.patch",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        // What the layers say changed, where their list names every
        // changed file; the diff judges every file by its stat data
        // otherwise.
        let changes = if runtime.changes_name_every_edit() {
            runtime.changes(&ws).await.ok()
        } else {
            None
        };
        // In the spec's order: each repository's patch, made on the host
        // or written by the script.
        let mut parts = Vec::new();
        let mut patches = Vec::new();
        for (index, repo) in ws.spec.repositories.iter().enumerate() {
            let prefix = if repo.path.is_root() {
                String::new()
            } else {
                format!("{}/", repo.path)
            };
            if let Some(changes) = changes.as_deref()
                && runtime.host_path(&ws).is_none()
                && let Some(patch) = self
                    .host_patch(&ws, runtime.as_ref(), (index, repo), &prefix, changes)
                    .await
            {
                parts.push(Part::Made(patch));
                continue;
            }
            let listed = changes
                .as_deref()
                .and_then(|c| changed_files(&repo.path, c));
            let mode = match &listed {
                None => "stat",
                Some(list) if list.is_empty() => "layers",
                Some(_) => "listed",
            };
            let mut request = ExecRequest::argv([
                "/bin/sh",
                "-c",
                DIFF_SCRIPT,
                "berth-diff",
                repo.path.to_string().as_str(),
                prefix.as_str(),
                name.as_str(),
                mode,
            ]);
            request.stdin = listed.filter(|list| !list.is_empty());
            if let Err(e) = self.run_diff(&ws, &repo.path, request).await {
                remove_all(runtime.as_ref(), &ws, &patches).await;
                return Err(e);
            }
            let patch = repo.path.join(&WorkspacePath::parse(&name)?);
            patches.push(patch.clone());
            parts.push(Part::Written(patch));
        }
        let mut files = Vec::new();
        for part in parts {
            match part {
                Part::Made(patch) => files.push(ReadStream::new(std::io::Cursor::new(patch))),
                Part::Written(patch) => match runtime.read_file(&ws, &patch).await {
                    Ok(file) => files.push(file),
                    Err(e) => {
                        remove_all(runtime.as_ref(), &ws, &patches).await;
                        return Err(ServiceError::runtime(&ws.id, e));
                    }
                },
            }
        }
        // Open, their contents stay readable.
        remove_all(runtime.as_ref(), &ws, &patches).await;
        let (sender, stream) = ReadStream::channel();
        tokio::spawn(async move {
            let mut sent = Ok(());
            for file in files {
                if sent.is_ok() {
                    sent = send_file(file, &sender).await;
                }
            }
            match sent {
                Ok(()) => sender.finish().await,
                Err(err) => sender.fail(err).await,
            }
        });
        Ok(stream)
    }

    /// Runs the diff script of the repository at `repo`.
    async fn run_diff(
        &self,
        ws: &Workspace,
        repo: &WorkspacePath,
        request: ExecRequest,
    ) -> Result<(), ServiceError> {
        let (_, mut events) = self
            .exec(ws.id.as_str(), request, CancellationToken::new())
            .await?;
        let done = berth_core::output::collect(&mut events)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e.into()))?;
        let failure = match done.exit.shell_code() {
            0 => return Ok(()),
            127 => "git is not available in the workspace".to_string(),
            _ => format!(
                "cannot diff repository `{repo}`: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            ),
        };
        Err(ServiceError::runtime(&ws.id, RuntimeError::Other(failure)))
    }

    /// Makes `count` new running workspaces from a workspace's current
    /// state; each is independent of the origin and of the others.
    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>, ServiceError> {
        let origin = self.settled(id).await?;
        let runtime = self.runtime_of(&origin)?;
        if count == 0 || count > MAX_FORKS {
            return Err(ServiceError::InvalidRequest {
                field: "count".into(),
                message: format!("expected 1 to {MAX_FORKS} forks at once, not {count}"),
            });
        }
        let mut forks = Vec::with_capacity(count);
        for _ in 0..count {
            let mut ws = self.register(
                origin.spec.clone(),
                &CreateOptions::default(),
                Some(format!("{}-fork", origin.name)),
                runtime.name(),
            )?;
            let made = async {
                ws.runtime_info = runtime
                    .fork(&origin, &ws)
                    .await
                    .map_err(|e| (ProvisionStep::Create, e))?;
                self.store()
                    .set_runtime_info(&ws.id, &ws.runtime_info)
                    .map_err(|e| (ProvisionStep::Create, RuntimeError::Other(e.to_string())))?;
                let info = runtime
                    .start(&ws)
                    .await
                    .map_err(|e| (ProvisionStep::Start, e))?;
                self.store()
                    .set_runtime_info(&ws.id, &info)
                    .map_err(|e| (ProvisionStep::Start, RuntimeError::Other(e.to_string())))?;
                Ok::<_, (ProvisionStep, RuntimeError)>(())
            }
            .await;
            if let Err((_, error @ RuntimeError::Unsupported { .. })) = made {
                // Nothing was made: the record goes, and the caller learns
                // that this runtime cannot fork.
                self.store().set_state(
                    &ws.id,
                    WorkspaceState::Removed,
                    Some(&error.to_string()),
                )?;
                return Err(ServiceError::runtime(&origin.id, error));
            }
            if let Err((step, error)) = made {
                self.store().set_state(
                    &ws.id,
                    WorkspaceState::Failed,
                    Some(&format!("forking {}: {error}", origin.id)),
                )?;
                return Err(ServiceError::ProvisionFailed {
                    id: ws.id.to_string(),
                    step: crate::error::step_name(step),
                    message: error.to_string(),
                });
            }
            self.store()
                .set_cache_key(&ws.id, origin.cache_key.as_deref())?;
            forks.push(
                self.store()
                    .set_state(&ws.id, WorkspaceState::Running, None)?,
            );
        }
        Ok(forks)
    }

    /// Removes a snapshot from whichever runtime holds it.
    pub async fn remove_snapshot(&self, snapshot: &str) -> Result<(), ServiceError> {
        check_snapshot_id(snapshot)?;
        let mut last = None;
        for runtime in self.runtime_list() {
            match runtime.remove_snapshot(snapshot).await {
                Ok(()) => return Ok(()),
                Err(RuntimeError::Unsupported { .. }) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(RuntimeError::SnapshotNotFound(_)) | None => {
                ServiceError::SnapshotNotFound(snapshot.to_string())
            }
            Some(source) => ServiceError::Snapshot {
                id: snapshot.to_string(),
                source,
            },
        })
    }

    /// Removes what no workspace, cache entry or snapshot uses, in every
    /// runtime that collects (layers, what gone workspaces left), and what
    /// interrupted clones left in the mirrors nobody is using.
    pub async fn gc(&self) -> Result<Gc, ServiceError> {
        let git = crate::provision::mirrors(self.home())
            .gc()
            .await
            .map_err(ServiceError::Mirrors)?;
        let live = self
            .list_labelled(false, &berth_core::Labels::new())
            .await?;
        let mut reports = Vec::new();
        for runtime in self.runtime_list() {
            let theirs: Vec<Workspace> = live
                .iter()
                .filter(|ws| ws.runtime == runtime.name())
                .cloned()
                .collect();
            match runtime.gc(&theirs).await {
                Ok(report) => reports.push(RuntimeGc {
                    runtime: runtime.name().into(),
                    report,
                }),
                Err(RuntimeError::Unsupported { .. }) => {}
                Err(source) => {
                    return Err(ServiceError::RuntimeFailed {
                        name: runtime.name().into(),
                        source,
                    });
                }
            }
        }
        Ok(Gc {
            runtimes: reports,
            git,
        })
    }
}

/// Refuses what can be no runtime's snapshot id, before any runtime is
/// asked about it.
fn check_snapshot_id(id: &str) -> Result<(), ServiceError> {
    if berth_core::layers::is_snapshot_id(id) {
        Ok(())
    } else {
        Err(ServiceError::InvalidId {
            kind: "snapshot",
            id: id.to_string(),
            expected: "1-128 lowercase letters and digits",
        })
    }
}

/// One repository's patch.
enum Part {
    /// Made on the host.
    Made(Vec<u8>),
    /// Written by the diff script into this file of the workspace.
    Written(WorkspacePath),
}

/// Copies a workspace file into `sender`, chunk by chunk as the reader
/// takes them.
async fn send_file(mut file: ReadStream, sender: &ReadSender) -> std::io::Result<()> {
    loop {
        let mut chunk = vec![0; 64 * 1024];
        let n = file.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        chunk.truncate(n);
        if !sender.send(chunk).await {
            return Err(std::io::Error::other("the reader of the patch went away"));
        }
    }
}

/// The most changed files a diff names to git one by one; beyond, it
/// judges every file by its stat data.
const MAX_LISTED: usize = 4096;

/// The files (not directories) the layers' `changes` name inside the
/// repository at `repo`, outside its git directory: their paths relative
/// to the repository, NUL-separated. `None` when there are more than
/// [`MAX_LISTED`].
fn changed_files(repo: &WorkspacePath, changes: &[Change]) -> Option<Vec<u8>> {
    let prefix = if repo.is_root() {
        Vec::new()
    } else {
        format!("{repo}/").into_bytes()
    };
    let mut listed = Vec::new();
    let mut count = 0;
    for change in changes {
        if change.file_kind == berth_core::FileKind::Dir {
            continue;
        }
        let raw = change.raw_path();
        let Some(path) = raw.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        if path.is_empty() || path == b".git" || path.starts_with(b".git/") {
            continue;
        }
        count += 1;
        if count > MAX_LISTED {
            return None;
        }
        listed.extend_from_slice(path);
        listed.push(0);
    }
    Some(listed)
}

/// Whether `path` is a patch file a diff writes in a repository's git
/// directory.
fn is_diff_patch(path: &str) -> bool {
    let path = std::path::Path::new(path);
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("berth-diff-") && n.ends_with(".patch"));
    named
        && path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == ".git")
}

/// Removes the patch files a diff wrote; the workspace's own error is of
/// no use to the diff's reader, who has the patch or its failure already.
async fn remove_all(runtime: &dyn Runtime, ws: &Workspace, patches: &[WorkspacePath]) {
    for patch in patches {
        if let Err(e) = runtime.remove_file(ws, patch).await {
            tracing::warn!("workspace {}: cannot remove `{patch}`: {e}", ws.id);
        }
    }
}
