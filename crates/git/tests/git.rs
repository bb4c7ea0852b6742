//! berth-git against real git: repositories made by the tests, served over
//! `file://`, `git daemon` and smart HTTP behind a server that demands a
//! token.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::WorkspacePath;
use berth_core::spec::Repository;
use berth_git::{Credential, Credentials, FetchOutcome, Git, GitError, UrlPrefix};
use berth_testkit::{self as kit, GitDaemon, GitHttpServer};
use std::path::{Path, PathBuf};

const TOKEN: &str = "berth-test-token-5f3a9c71";
const CREDENTIAL: &str = "test-server";

/// A directory of repositories with one, `project`, holding two files.
struct Upstream {
    dir: tempfile::TempDir,
    first: String,
}

impl Upstream {
    fn new() -> Upstream {
        let dir = kit::temp_dir();
        let first = kit::make_repo(
            &dir.path().join("project"),
            &[("README", "hello\n"), ("src/lib.txt", "one\n")],
        );
        Upstream { dir, first }
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.repo().display())
    }

    /// Moves upstream's current branch on by one commit.
    fn commit(&self, files: &[(&str, &str)]) -> String {
        kit::commit_files(&self.repo(), files, "upstream moves")
    }
}

fn spec(url: &str, reference: Option<&str>, credential: Option<&str>) -> Repository {
    Repository {
        url: url.to_owned(),
        path: WorkspacePath::parse("project").unwrap(),
        reference: reference.map(str::to_owned),
        credential: credential.map(str::to_owned),
    }
}

fn with_credential(credential: Credential) -> Git {
    let mut credentials = Credentials::new();
    credentials.insert(CREDENTIAL, credential);
    Git::new(credentials)
}

/// The URL prefix of everything `server` serves.
fn on(server: &GitHttpServer) -> [UrlPrefix; 1] {
    [server.url().parse().unwrap()]
}

/// The test's token as a bearer credential for `server`.
fn with_token(server: &GitHttpServer) -> Git {
    with_credential(Credential::bearer(TOKEN, on(server)))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Clones, checks what landed, moves upstream, fetches twice.
async fn clone_then_follow_upstream(git: &Git, upstream: &Upstream, repo: &Repository) {
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    let commit = git.clone(repo, &dest).await.unwrap();
    assert_eq!(commit, upstream.first);
    assert_eq!(read(&dest.join("README")), "hello\n");
    assert_eq!(kit::git(&dest, &["config", "remote.origin.url"]), repo.url);
    assert_eq!(
        kit::git(&dest, &["symbolic-ref", "--short", "HEAD"]),
        "main"
    );

    let second = upstream.commit(&[("README", "hello again\n")]);
    let outcome = git.fetch(repo, &dest).await.unwrap();
    assert_eq!(
        outcome,
        FetchOutcome {
            commit: second.clone(),
            previous: upstream.first.clone(),
            updated: true
        }
    );
    assert_eq!(read(&dest.join("README")), "hello again\n");
    assert_eq!(git.head(&dest).await.unwrap(), second);

    let outcome = git.fetch(repo, &dest).await.unwrap();
    assert!(!outcome.updated);
    assert_eq!(outcome.commit, second);
}

#[test]
fn debug_output_holds_no_secret() {
    let git = with_credential(Credential::basic(
        "u",
        TOKEN,
        ["https://git.example.com/".parse().unwrap()],
    ));
    let text = format!("{git:?}");
    assert!(text.contains(CREDENTIAL), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains(&base64_of(&format!("u:{TOKEN}"))), "{text}");
}

#[tokio::test]
async fn clone_and_fetch_over_file_urls() {
    let upstream = Upstream::new();
    let repo = spec(&upstream.file_url(), None, None);
    clone_then_follow_upstream(&Git::new(Credentials::new()), &upstream, &repo).await;
}

#[tokio::test]
async fn clone_and_fetch_over_git_daemon() {
    let upstream = Upstream::new();
    let daemon = GitDaemon::start(upstream.base());
    let repo = spec(&format!("{}project", daemon.url()), None, None);
    clone_then_follow_upstream(&Git::new(Credentials::new()), &upstream, &repo).await;
}

#[tokio::test]
async fn clone_and_fetch_over_http_with_a_token_leave_it_nowhere() {
    for basic in [false, true] {
        let upstream = Upstream::new();
        let server = GitHttpServer::start(upstream.base(), TOKEN);
        let credential = match basic {
            false => Credential::bearer(TOKEN, on(&server)),
            true => Credential::basic("x-access-token", TOKEN, on(&server)),
        };
        let repo = spec(&format!("{}project", server.url()), None, Some(CREDENTIAL));
        let git = with_credential(credential);
        let workspace = kit::temp_dir();
        let dest = workspace.path().join("project");
        git.clone(&repo, &dest).await.unwrap();
        let second = upstream.commit(&[("src/lib.txt", "two\n")]);
        assert!(git.fetch(&repo, &dest).await.unwrap().updated);
        assert_eq!(git.head(&dest).await.unwrap(), second);

        assert!(server.served() > 0);
        assert_eq!(server.refused(), 0, "every request carried the token");
        let basic = base64_of(&format!("x-access-token:{TOKEN}"));
        for secret in [TOKEN, &basic] {
            let found = kit::files_containing(workspace.path(), secret.as_bytes());
            assert!(found.is_empty(), "{secret} found in {found:?}");
        }
    }
}

#[tokio::test]
async fn each_installed_git_clones_and_fetches_over_http() {
    let programs: Vec<&str> = ["/usr/bin/git", "/usr/local/bin/git"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(!programs.is_empty(), "no git in /usr/bin or /usr/local/bin");
    for program in programs {
        let upstream = Upstream::new();
        let server = GitHttpServer::start(upstream.base(), TOKEN);
        let repo = spec(&format!("{}project", server.url()), None, Some(CREDENTIAL));
        clone_then_follow_upstream(&with_token(&server).with_program(program), &upstream, &repo)
            .await;
    }
}

#[tokio::test]
async fn http_clone_without_the_token_is_refused_clearly() {
    let upstream = Upstream::new();
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let url = format!("{}project", server.url());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");

    let err = Git::new(Credentials::new())
        .clone(&spec(&url, None, None), &dest)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GitError::Authentication { .. }), "{text}");
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("names no credential"), "{text}");
    assert!(server.refused() > 0);
    assert_eq!(server.served(), 0);
    assert!(!dest.exists(), "a failed clone leaves nothing behind");

    let wrong = "wrong-token-0a1b2c3d";
    let err = with_credential(Credential::bearer(wrong, on(&server)))
        .clone(&spec(&url, None, Some(CREDENTIAL)), &dest)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GitError::Authentication { .. }), "{text}");
    assert!(
        text.contains(&format!("credential `{CREDENTIAL}`")),
        "{text}"
    );
    assert!(!text.contains(wrong), "{text}");
    assert_eq!(server.served(), 0);
}

#[tokio::test]
async fn an_authenticated_failure_is_redacted() {
    let upstream = Upstream::new();
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let workspace = kit::temp_dir();

    // A real failure with the right token: the repository does not exist.
    let missing = spec(&format!("{}absent", server.url()), None, Some(CREDENTIAL));
    let err = with_token(&server)
        .clone(&missing, &workspace.path().join("a"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");

    // A git that prints everything it was configured with, the header
    // included, and fails: what reaches the error is redacted.
    let shim = workspace.path().join("echoing-git");
    write_script(
        &shim,
        "#!/bin/sh\nenv | grep '^GIT_CONFIG_VALUE' >&2\necho \"fatal: args $*\" >&2\nexit 128\n",
    );
    for git in [
        with_token(&server).with_program(&shim),
        with_credential(Credential::basic("u", TOKEN, on(&server))).with_program(&shim),
    ] {
        let repo = spec(&format!("{}project", server.url()), None, Some(CREDENTIAL));
        let err = git
            .clone(&repo, &workspace.path().join("b"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Authorization: "),
            "the shim echoed the header: {text}"
        );
        assert!(text.contains("***"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
        assert!(!text.contains(&base64_of(&format!("u:{TOKEN}"))), "{text}");
    }
}

#[tokio::test]
async fn git_never_gets_the_token_in_argv_nor_the_providers_environment() {
    let upstream = Upstream::new();
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let workspace = kit::temp_dir();
    let logs = kit::temp_dir();
    let argv_log = logs.path().join("argv");
    let env_log = logs.path().join("env-keys");
    // A git that records its argv and the names of its environment
    // variables, then runs the real git.
    let shim = logs.path().join("git");
    write_script(
        &shim,
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nenv | sed 's/=.*//' >> '{}'\nexec git \"$@\"\n",
            argv_log.display(),
            env_log.display()
        ),
    );
    let git = with_token(&server).with_program(&shim);
    let repo = spec(&format!("{}project", server.url()), None, Some(CREDENTIAL));
    let dest = workspace.path().join("project");
    git.clone(&repo, &dest).await.unwrap();
    upstream.commit(&[("README", "moved\n")]);
    assert!(git.fetch(&repo, &dest).await.unwrap().updated);

    let argv = read(&argv_log);
    assert!(argv.contains("clone"), "{argv}");
    assert!(argv.contains("fetch"), "{argv}");
    assert!(!argv.contains(TOKEN), "{argv}");
    assert!(!argv.contains("Authorization"), "{argv}");

    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "http_proxy",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "SSH_AUTH_SOCK",
        "LC_ALL",
        "GIT_TERMINAL_PROMPT",
        "GIT_ASKPASS",
        "GIT_SSH_COMMAND",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_COUNT",
        // Set by the shell running the shim.
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    let keys = read(&env_log);
    assert!(keys.lines().any(|k| k == "GIT_CONFIG_COUNT"), "{keys}");
    for key in keys.lines() {
        assert!(
            allowed.contains(&key)
                || key.starts_with("GIT_CONFIG_KEY_")
                || key.starts_with("GIT_CONFIG_VALUE_"),
            "git inherited {key} from the provider"
        );
    }
}

#[tokio::test]
async fn workspace_git_config_cannot_reach_the_token() {
    let upstream = Upstream::new();
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let url = format!("{}project", server.url());
    let repo = spec(&url, None, Some(CREDENTIAL));
    let git = with_token(&server);
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    git.clone(&repo, &dest).await.unwrap();

    // Whoever uses the workspace points git at a "proxy" they listen on,
    // and adds hooks that dump the environment.
    let trap = Trap::start();
    kit::git(&dest, &["config", "http.proxy", &trap.url()]);
    kit::git(
        &dest,
        &["config", &format!("http.{url}.proxy"), &trap.url()],
    );
    kit::git(
        &dest,
        &[
            "config",
            "remote.origin.url",
            "http://127.0.0.1:9/elsewhere",
        ],
    );
    let dump = workspace.path().join("dumped-env");
    for hook in ["reference-transaction", "post-merge", "post-checkout"] {
        write_script(
            &dest.join(".git/hooks").join(hook),
            &format!("#!/bin/sh\nenv >> '{}'\n", dump.display()),
        );
    }

    let second = upstream.commit(&[("README", "moved\n")]);
    let outcome = git.fetch(&repo, &dest).await;
    let seen = trap.stop();
    assert!(
        seen.is_empty(),
        "git used the proxy from the workspace's config: {seen}"
    );
    assert_eq!(outcome.unwrap().commit, second);
    assert!(!dump.exists(), "a hook from the workspace ran");
    assert!(kit::files_containing(workspace.path(), TOKEN.as_bytes()).is_empty());
}

#[tokio::test]
async fn a_sha256_repository_is_cloned_and_fetched() {
    let base = kit::temp_dir();
    let upstream = base.path().join("project");
    std::fs::create_dir(&upstream).unwrap();
    kit::git(
        &upstream,
        &[
            "init",
            "--quiet",
            "--object-format=sha256",
            "--initial-branch=main",
        ],
    );
    let first = kit::commit_files(&upstream, &[("README", "one\n")], "first");
    assert_eq!(first.len(), 64);
    let repo = spec(&format!("file://{}", upstream.display()), None, None);
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    assert_eq!(git.clone(&repo, &dest).await.unwrap(), first);
    let second = kit::commit_files(&upstream, &[("README", "two\n")], "second");
    assert_eq!(git.fetch(&repo, &dest).await.unwrap().commit, second);
    assert_eq!(read(&dest.join("README")), "two\n");
}

#[tokio::test]
async fn a_cancelled_clone_leaves_no_git_process_behind() {
    // A server that accepts and never answers: git waits forever.
    let silent = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let url = format!(
        "http://{}/stuck-{}",
        silent.local_addr().unwrap(),
        std::process::id()
    );
    let workspace = kit::temp_dir();
    let git = Git::new(Credentials::new());
    let (repo, dest) = (spec(&url, None, None), workspace.path().join("p"));
    let clone = git.clone(&repo, &dest);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(500), clone).await;
    assert!(waited.is_err(), "the clone should still be waiting");
    // Ending the group is asynchronous; it must happen soon, and for every
    // process, including the helper git started for http.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&url);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The command lines of live processes that contain `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

#[tokio::test]
async fn a_conflicting_uncommitted_change_stops_the_fetch_and_survives() {
    let upstream = Upstream::new();
    let repo = spec(&upstream.file_url(), None, None);
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    git.clone(&repo, &dest).await.unwrap();

    std::fs::write(dest.join("README"), "my local edit\n").unwrap();
    upstream.commit(&[("README", "upstream edit\n")]);
    let err = git.fetch(&repo, &dest).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GitError::CannotFastForward { .. }), "{text}");
    assert!(text.contains(&dest.display().to_string()), "{text}");
    assert!(
        text.contains("README"),
        "git's reason names the file: {text}"
    );
    assert_eq!(read(&dest.join("README")), "my local edit\n");
    assert_eq!(git.head(&dest).await.unwrap(), upstream.first);
}

#[tokio::test]
async fn an_unrelated_uncommitted_change_is_carried_over() {
    let upstream = Upstream::new();
    let repo = spec(&upstream.file_url(), None, None);
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    git.clone(&repo, &dest).await.unwrap();

    std::fs::write(dest.join("src/lib.txt"), "local work\n").unwrap();
    std::fs::write(dest.join("untracked"), "new file\n").unwrap();
    let second = upstream.commit(&[("README", "upstream edit\n")]);
    let outcome = git.fetch(&repo, &dest).await.unwrap();
    assert_eq!(outcome.commit, second);
    assert_eq!(read(&dest.join("README")), "upstream edit\n");
    assert_eq!(read(&dest.join("src/lib.txt")), "local work\n");
    assert_eq!(read(&dest.join("untracked")), "new file\n");
}

#[tokio::test]
async fn a_diverged_branch_is_not_touched() {
    let upstream = Upstream::new();
    let repo = spec(&upstream.file_url(), None, None);
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    git.clone(&repo, &dest).await.unwrap();

    let local = kit::commit_files(&dest, &[("local.txt", "mine\n")], "local work");
    upstream.commit(&[("README", "theirs\n")]);
    let err = git.fetch(&repo, &dest).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GitError::CannotFastForward { .. }), "{text}");
    assert!(text.contains("diverged"), "{text}");
    assert!(text.contains(&dest.display().to_string()), "{text}");
    assert_eq!(git.head(&dest).await.unwrap(), local);
    assert_eq!(read(&dest.join("README")), "hello\n");
    // The upstream commit was fetched all the same, for a merge by hand.
    kit::git(
        &dest,
        &[
            "merge-base",
            "--is-ancestor",
            &upstream.first,
            "origin/main",
        ],
    );
    assert_ne!(
        kit::git(&dest, &["rev-parse", "origin/main"]),
        upstream.first
    );
}

#[tokio::test]
async fn local_commits_on_top_of_upstream_are_not_an_update() {
    let upstream = Upstream::new();
    let repo = spec(&upstream.file_url(), None, None);
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    git.clone(&repo, &dest).await.unwrap();
    let local = kit::commit_files(&dest, &[("local.txt", "mine\n")], "local work");
    let outcome = git.fetch(&repo, &dest).await.unwrap();
    assert_eq!(
        outcome,
        FetchOutcome {
            commit: local.clone(),
            previous: local,
            updated: false
        }
    );
}

#[tokio::test]
async fn tags_and_commits_are_checked_out_detached_and_stay_put() {
    let upstream = Upstream::new();
    kit::tag(&upstream.repo(), "v1");
    let second = upstream.commit(&[("README", "second\n")]);
    let url = upstream.file_url();
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();

    let short = &upstream.first[..8];
    for (i, reference) in ["v1", "refs/tags/v1", upstream.first.as_str(), short]
        .into_iter()
        .enumerate()
    {
        let dest = workspace.path().join(format!("c{i}"));
        let repo = spec(&url, Some(reference), None);
        let commit = git.clone(&repo, &dest).await.unwrap();
        assert_eq!(commit, upstream.first, "ref {reference}");
        assert_eq!(read(&dest.join("README")), "hello\n", "ref {reference}");
        let detached = kit::git(&dest, &["rev-parse", "--abbrev-ref", "HEAD"]);
        assert_eq!(detached, "HEAD", "ref {reference} is checked out detached");

        upstream.commit(&[("README", &format!("moved {i}\n"))]);
        let outcome = git.fetch(&repo, &dest).await.unwrap();
        assert!(!outcome.updated, "ref {reference}");
        assert_eq!(outcome.commit, upstream.first, "ref {reference}");
    }
    // A commit that is not the tip of anything upstream.
    let dest = workspace.path().join("second");
    let commit = git
        .clone(&spec(&url, Some(&second), None), &dest)
        .await
        .unwrap();
    assert_eq!(commit, second);
}

#[tokio::test]
async fn a_commit_no_branch_reaches_is_fetched_by_hash() {
    let upstream = Upstream::new();
    kit::git(&upstream.repo(), &["checkout", "--quiet", "-b", "doomed"]);
    let orphan = upstream.commit(&[("doomed.txt", "soon unreachable\n")]);
    kit::checkout(&upstream.repo(), "main");
    kit::git(&upstream.repo(), &["branch", "--quiet", "-D", "doomed"]);

    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let repo = spec(
        &format!("{}project", server.url()),
        Some(&orphan),
        Some(CREDENTIAL),
    );
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    assert_eq!(
        with_token(&server).clone(&repo, &dest).await.unwrap(),
        orphan
    );
    assert_eq!(read(&dest.join("doomed.txt")), "soon unreachable\n");
}

#[tokio::test]
async fn a_branch_ref_follows_that_branch() {
    let upstream = Upstream::new();
    kit::create_branch(&upstream.repo(), "dev");
    kit::checkout(&upstream.repo(), "dev");
    let dev = upstream.commit(&[("dev.txt", "dev work\n")]);
    kit::checkout(&upstream.repo(), "main");
    upstream.commit(&[("README", "main moves\n")]);

    let daemon = GitDaemon::start(upstream.base());
    let repo = spec(&format!("{}project", daemon.url()), Some("dev"), None);
    let git = Git::new(Credentials::new());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    assert_eq!(git.clone(&repo, &dest).await.unwrap(), dev);
    assert_eq!(kit::git(&dest, &["symbolic-ref", "--short", "HEAD"]), "dev");
    assert_eq!(read(&dest.join("README")), "hello\n");

    kit::checkout(&upstream.repo(), "dev");
    let dev2 = upstream.commit(&[("dev.txt", "more dev work\n")]);
    let outcome = git.fetch(&repo, &dest).await.unwrap();
    assert_eq!(outcome.commit, dev2);
    assert!(outcome.updated);
    assert_eq!(read(&dest.join("dev.txt")), "more dev work\n");
}

/// An upstream whose first commit is also the annotated tag `v1`, the
/// lightweight tag `light` and the branch `dev`.
fn upstream_with_refs() -> Upstream {
    let upstream = Upstream::new();
    kit::tag(&upstream.repo(), "v1");
    kit::git(&upstream.repo(), &["tag", "light"]);
    kit::create_branch(&upstream.repo(), "dev");
    upstream
}

#[tokio::test]
async fn upstream_commit_tells_whether_a_fetch_is_needed() {
    let upstream = upstream_with_refs();
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let url = format!("{}project", server.url());
    let git = with_token(&server);
    let ask = |reference: Option<&str>| {
        let repo = spec(&url, reference, Some(CREDENTIAL));
        let git = &git;
        async move { git.upstream_commit(&repo).await }
    };
    let first = Some(upstream.first.clone());
    for reference in [
        None,
        Some("main"),
        Some("refs/heads/main"),
        Some("v1"),
        Some("light"),
    ] {
        assert_eq!(ask(reference).await.unwrap(), first, "{reference:?}");
    }
    assert_eq!(ask(Some("refs/tags/v1")).await.unwrap(), first);

    let second = Some(upstream.commit(&[("README", "moved\n")]));
    assert_eq!(ask(None).await.unwrap(), second);
    assert_eq!(ask(Some("main")).await.unwrap(), second);
    assert_eq!(ask(Some("v1")).await.unwrap(), first, "tags stay");
    assert_eq!(
        ask(Some("dev")).await.unwrap(),
        first,
        "other branches stay"
    );
    assert_eq!(ask(Some(&upstream.first[..10])).await.unwrap(), None);

    let err = ask(Some("no-such-branch")).await.unwrap_err();
    assert!(matches!(err, GitError::MissingRef { .. }), "{err}");
    let err = Git::new(Credentials::new())
        .upstream_commit(&spec(&url, None, None))
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Authentication { .. }), "{err}");
}

/// A repository on this host is asked through its upload-pack alone: the
/// same answers as over a transport, and a path that is no repository
/// still gets git's own words.
#[tokio::test]
async fn upstream_commit_of_a_repository_on_this_host_reads_its_refs() {
    let upstream = upstream_with_refs();
    let url = upstream.repo().to_str().unwrap().to_owned();
    let git = Git::new(Credentials::new());
    let ask = |reference: Option<&str>| {
        let repo = spec(&url, reference, None);
        let git = &git;
        async move { git.upstream_commit(&repo).await }
    };
    let first = Some(upstream.first.clone());
    for reference in [
        None,
        Some("main"),
        Some("v1"),
        Some("refs/tags/v1"),
        Some("light"),
    ] {
        assert_eq!(ask(reference).await.unwrap(), first, "{reference:?}");
    }
    let second = Some(upstream.commit(&[("README", "moved\n")]));
    assert_eq!(ask(None).await.unwrap(), second);
    assert_eq!(ask(Some("main")).await.unwrap(), second);
    assert_eq!(ask(Some("v1")).await.unwrap(), first, "tags stay");
    assert_eq!(
        ask(Some("dev")).await.unwrap(),
        first,
        "other branches stay"
    );

    let err = ask(Some("no-such-branch")).await.unwrap_err();
    assert!(matches!(err, GitError::MissingRef { .. }), "{err}");
    let nowhere = upstream.base().join("no-such-repository");
    let err = git
        .upstream_commit(&spec(nowhere.to_str().unwrap(), None, None))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("does not appear to be a git repository"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_ref_is_named_with_its_url() {
    let upstream = Upstream::new();
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let url = format!("{}project", server.url());
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    std::fs::create_dir(&dest).unwrap();
    for reference in ["no-such-branch", "refs/tags/v9", "deadbeef"] {
        let err = with_token(&server)
            .clone(&spec(&url, Some(reference), Some(CREDENTIAL)), &dest)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, GitError::MissingRef { .. }), "{text}");
        assert!(text.contains(&format!("`{reference}`")), "{text}");
        assert!(text.contains(&url), "{text}");
        assert!(dest.is_dir(), "an existing empty destination is kept");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "and emptied");
    }
}

#[tokio::test]
async fn a_spec_cannot_send_a_credential_to_a_server_it_controls() {
    let upstream = Upstream::new();
    let forge = GitHttpServer::start(upstream.base(), TOKEN);
    // The spec author's server: it would accept anything worth recording.
    let theirs = GitHttpServer::start(upstream.base(), TOKEN);
    let git = with_token(&forge);
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    let ours = spec(&format!("{}project", forge.url()), None, Some(CREDENTIAL));
    git.clone(&ours, &dest).await.unwrap();

    let stolen = spec(&format!("{}project", theirs.url()), None, Some(CREDENTIAL));
    let mirrors = berth_git::Mirrors::new(workspace.path().join("mirrors"));
    let refusals = [
        git.clone(&stolen, &workspace.path().join("a"))
            .await
            .map(drop),
        git.clone_with_mirror(&stolen, &mirrors, &workspace.path().join("b"))
            .await
            .map(drop),
        git.mirror(&stolen, &mirrors).await.map(drop),
        git.upstream_commit(&stolen).await.map(drop),
        // Into a checkout made from the credential's own server.
        git.fetch(&stolen, &dest).await.map(drop),
    ];
    for refused in refusals {
        let err = refused.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, GitError::CredentialNotForUrl { .. }),
            "{text}"
        );
        assert!(text.contains(&format!("`{CREDENTIAL}`")), "{text}");
        assert!(text.contains(&stolen.url), "{text}");
        assert!(text.contains(&forge.url()), "names where it may go: {text}");
    }
    assert_eq!(theirs.requests(), 0, "the spec's server heard nothing");
    assert!(theirs.authorizations().is_empty());
    assert!(!workspace.path().join("a").exists());
    assert!(!workspace.path().join("b").exists());
    assert!(!workspace.path().join("mirrors").exists());

    // Bound to both, the same requests go through, with the token.
    let both = with_credential(Credential::bearer(
        TOKEN,
        [forge.url().parse().unwrap(), theirs.url().parse().unwrap()],
    ));
    both.clone(&stolen, &workspace.path().join("a"))
        .await
        .unwrap();
    assert!(
        theirs.authorizations().contains(&format!("Bearer {TOKEN}")),
        "{:?}",
        theirs.authorizations()
    );
}

#[tokio::test]
async fn bad_repositories_are_refused_before_running_git() {
    let upstream = Upstream::new();
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    let git = with_credential(Credential::bearer(
        TOKEN,
        ["https://git.example.com/".parse().unwrap()],
    ));

    let err = git
        .clone(&spec(&upstream.file_url(), None, Some("nope")), &dest)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`nope`"), "{text}");
    assert!(text.contains(&upstream.file_url()), "{text}");
    assert!(
        text.contains(CREDENTIAL),
        "lists the known credentials: {text}"
    );

    let err = git
        .clone(&spec(&upstream.file_url(), None, Some(CREDENTIAL)), &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::CredentialNeedsHttp { .. }), "{err}");

    let err = git
        .clone(
            &spec(
                &format!("https://user:{TOKEN}@example.com/r.git"),
                None,
                None,
            ),
            &dest,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GitError::UrlHasCredentials { .. }), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("example.com/r.git"), "{text}");

    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), "precious").unwrap();
    let err = git
        .clone(&spec(&upstream.file_url(), None, None), &dest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(read(&dest.join("keep")), "precious");

    let err = git
        .fetch(&spec(&upstream.file_url(), None, None), workspace.path())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::NotACheckout { .. }), "{err}");
}

#[tokio::test]
async fn large_requests_arrive_gzipped_and_are_served() {
    let upstream = Upstream::new();
    // Enough branches that the list of wants exceeds what git sends plain.
    for n in 0..60 {
        kit::create_branch(&upstream.repo(), &format!("feature/branch-number-{n:03}"));
        upstream.commit(&[("count", &n.to_string())]);
    }
    let server = GitHttpServer::start(upstream.base(), TOKEN);
    let repo = spec(&format!("{}project", server.url()), None, Some(CREDENTIAL));
    let workspace = kit::temp_dir();
    let dest = workspace.path().join("project");
    with_token(&server).clone(&repo, &dest).await.unwrap();
    assert!(server.gzipped() > 0, "git sent no gzip'd request");
    let branches = kit::git(&dest, &["branch", "--remotes"]);
    assert_eq!(
        branches.lines().filter(|l| l.contains("feature/")).count(),
        60
    );
}

/// A listener that records what connects to it and hangs up at once.
struct Trap {
    addr: std::net::SocketAddr,
    thread: std::thread::JoinHandle<String>,
}

impl Trap {
    const STOP: &[u8] = b"stop the trap";

    fn start() -> Trap {
        use std::io::Read;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut seen = String::new();
            for stream in listener.incoming() {
                let mut buf = vec![0; 4096];
                let n = stream.unwrap().read(&mut buf).unwrap_or(0);
                if &buf[..n] == Trap::STOP {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            seen
        });
        Trap { addr, thread }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything that connected before, as text.
    fn stop(self) -> String {
        use std::io::Write;
        std::net::TcpStream::connect(self.addr)
            .unwrap()
            .write_all(Trap::STOP)
            .unwrap();
        self.thread.join().unwrap()
    }
}

/// Writes an executable script. A child process writes it: were this
/// process to hold it open for writing while another test forks, running
/// the script could fail with "text file busy".
fn write_script(path: &Path, text: &str) {
    use std::io::Write;
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writer
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(writer.wait().unwrap().success());
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
