//! `berth --server`: every command run against a running `berth serve`,
//! over TCP with a token, over a unix socket and through its NATS API,
//! gives what it gives on the local provider: the same output, progress,
//! errors and exit codes.

use super::{Env, stderr};
use berth_testkit::{NatsServer, free_port, make_repo};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `berth serve` of its own home, ended when dropped.
pub(crate) struct Server {
    env: Env,
    child: Child,
    pub(crate) url: String,
    /// A node of its cluster, which runs its job tasks.
    node: Option<Child>,
    /// The NATS server it serves through, for a NATS API.
    _nats: Option<NatsServer>,
}

impl Server {
    pub(crate) fn tcp() -> Server {
        let env = Env::new();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = serve(&env, &["--listen", &addr]);
        let server = Server {
            env,
            child,
            url: format!("http://{addr}"),
            node: None,
            _nats: None,
        };
        server.wait_until(|| std::net::TcpStream::connect(&addr).is_ok());
        server
    }

    pub(crate) fn unix() -> Server {
        let env = Env::new();
        let socket = env.dir.path().join("berth.sock");
        let child = serve(&env, &["--socket", socket.to_str().unwrap()]);
        let server = Server {
            env,
            child,
            url: format!("unix://{}", socket.display()),
            node: None,
            _nats: None,
        };
        server.wait_until(|| std::os::unix::net::UnixStream::connect(&socket).is_ok());
        server
    }

    /// `berth serve -s nats --nats URL`: the NATS API alone, through a NATS server
    /// of its own.
    fn nats() -> Server {
        let nats = NatsServer::start();
        let env = Env::new();
        let child = serve(&env, &["-s", "nats", "--nats", &nats.url()]);
        let server = Server {
            env,
            child,
            url: nats.url(),
            node: None,
            _nats: Some(nats),
        };
        // Answered once the service's endpoints are registered.
        let probe = Env::new();
        server.wait_until(|| probe.run(&["--server", &server.url, "ls"]).status.success());
        server
    }

    /// [`Server::nats`] with a node of its cluster (`berth node`, a home of
    /// its own), on which its job tasks run.
    pub(crate) fn nats_with_node() -> Server {
        let mut server = Server::nats();
        let node = server
            .env
            .berth()
            .env("BERTH_HOME", server.env.dir.path().join("node"))
            .env("BERTH_JOB_HEARTBEAT", "0.2")
            .args(["node", "--nats", &server.url, "--name", "n1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        server.node = Some(node);
        let probe = Env::new();
        server.wait_until(|| {
            let out = probe.run(&["--server", &server.url, "nodes", "--json"]);
            String::from_utf8_lossy(&out.stdout).contains("\"n1\"")
        });
        server
    }

    fn wait_until(&self, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            assert!(Instant::now() < deadline, "berth serve never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn token_file(&self) -> String {
        self.env.home.join("server-token").display().to_string()
    }
}

fn serve(env: &Env, args: &[&str]) -> Child {
    env.berth()
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.node.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How the CLI is pointed at its workspaces.
pub(crate) enum Target<'a> {
    Local(&'a Env),
    Server { server: &'a Server, client: &'a Env },
}

impl Target<'_> {
    pub(crate) fn berth(&self) -> Command {
        match self {
            Target::Local(env) => env.berth(),
            Target::Server { server, client } => {
                // The client's own home stays empty: nothing runs here.
                let mut command = client.berth();
                command.args(["--server", &server.url]);
                if server.url.starts_with("http") {
                    command.args(["--token-file", &server.token_file()]);
                }
                command
            }
        }
    }

    pub(crate) fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = self.berth();
        command.args(args);
        let Some(text) = stdin else {
            return command.output().unwrap();
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Text with what differs between two homes and two runs masked: ids
/// (26 characters), hashes, and times (`3s ago`, `after 301 ms`).
fn masked(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let mut rest = text.chars().peekable();
    loop {
        let next = rest.peek().copied();
        if let Some(c) = next.filter(char::is_ascii_alphanumeric) {
            run.push(c);
            rest.next();
            continue;
        }
        let tail: String = rest.clone().take(4).collect();
        let digits = is_number(&run);
        if run.len() == 26 {
            out.push_str("<id>");
        } else if run.len() >= 12 && run.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<hash>");
        } else if digits && tail.starts_with(" ms") {
            out.push('N');
        } else if tail.starts_with(" ago") && run.strip_suffix('s').is_some_and(is_number) {
            out.push_str("Ns");
        } else {
            out.push_str(&run);
        }
        run.clear();
        match next {
            Some(c) => {
                out.push(c);
                rest.next();
            }
            None => return out,
        }
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit())
}

/// What a user sees of one command: exit code, stdout, stderr.
type Seen = (Option<i32>, String, String);

fn seen(out: &Output) -> Seen {
    (
        out.status.code(),
        masked(&String::from_utf8_lossy(&out.stdout)),
        masked(&stderr(out)),
    )
}

/// Every command a user runs on a workspace, in order, as they see it.
fn session(target: &Target, spec: &Path, export: &Path) -> Vec<(String, Seen)> {
    let spec = spec.to_str().unwrap();
    let archive = format!("{}.tar.zst", export.display());
    let export = export.to_str().unwrap();
    let up = ["up", spec, "--name", "w", "--label", "team=a"];
    let export = ["export", "w", "-o", export];
    let export_archive = ["export", "w", "-o", &archive];
    let steps: Vec<(&[&str], Option<&str>)> = vec![
        (&up, None),
        (&["ls", "--label", "team=a"], None),
        (&["show", "w"], None),
        (
            &[
                "exec",
                "w",
                "--",
                "sh",
                "-c",
                "echo out; sleep 0.1; echo err >&2; exit 3",
            ],
            None,
        ),
        (
            &[
                "exec",
                "w",
                "-e",
                "X=1",
                "--cwd",
                "app",
                "--",
                "sh",
                "-c",
                "echo $X; cat edit.txt",
            ],
            None,
        ),
        (
            &[
                "exec",
                "w",
                "--timeout",
                "0.3",
                "--",
                "sh",
                "-c",
                "echo before; sleep 5",
            ],
            None,
        ),
        (&["exec", "w", "--", "no-such-program"], None),
        (&["exec", "no-such-workspace", "--", "true"], None),
        (&["exec", "w", "-i", "--", "cat"], Some("piped in\n")),
        (&["write", "w", "app/new.txt"], Some("written\n")),
        (&["read", "w", "app/new.txt"], None),
        (&["read", "w", "app/missing.txt"], None),
        (&["files", "w", "app"], None),
        (
            &[
                "exec",
                "w",
                "--",
                "sh",
                "-c",
                "echo changed > app/edit.txt; rm app/keep.txt",
            ],
            None,
        ),
        (&["changes", "w"], None),
        (&["diff", "w"], None),
        (&export, None),
        (&export_archive, None),
        (&["snapshot", "w"], None),
        (&["fork", "w", "--count", "2"], None),
        (&["reset", "w"], None),
        (&["changes", "w"], None),
        (&["stop", "w"], None),
        (&["exec", "w", "--", "true"], None),
        (&["start", "w"], None),
        (&["fetch", "w"], None),
        (&["runtimes"], None),
        (&["rm", "--label", "team=a"], None),
        (&["ls", "--all", "--label", "team=a"], None),
    ];
    let mut seen: Vec<(String, Seen)> = steps
        .into_iter()
        .map(|(args, stdin)| (args.join(" "), seen(&target.run(args, stdin))))
        .collect();
    // The forks go too.
    let listed = target.run(&["ls", "--json"], None);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    for ws in listed.as_array().unwrap() {
        let out = target.run(&["rm", ws["id"].as_str().unwrap()], None);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Then nothing uses the spec's cache entry. What follows the cache's
    // line is `gc`'s report, whose git line only a local provider gives.
    let gc = ["gc", "--cache", "0"];
    let (code, out, err) = self::seen(&target.run(&gc, None));
    let cache = out.lines().next().unwrap_or_default().to_owned();
    seen.push((gc.join(" "), (code, cache, err)));
    seen
}

/// The paths an exported archive holds, and each file's bytes.
fn archived(archive: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read as _;
    let tar = zstd::Decoder::new(std::fs::File::open(archive).unwrap()).unwrap();
    let mut entries: Vec<(String, Vec<u8>)> = tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (path, bytes)
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn every_command_over_tcp_a_unix_socket_and_nats_gives_what_it_gives_locally() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    make_repo(&repo, &[("keep.txt", "k\n"), ("edit.txt", "old\n")]);
    let spec = env.file(
        "spec.toml",
        &format!(
            "runtime = \"sandbox\"\nimage = \"host\"\nsetup_script = \"echo set up\"\n\
             [[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
            repo.display()
        ),
    );
    let local = session(
        &Target::Local(&env),
        &spec,
        &env.dir.path().join("local-export"),
    );
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("local-export/app/edit.txt")).unwrap(),
        "changed\n",
        "the local export holds the change"
    );
    // Sanity: the session exercised what it claims.
    let codes: Vec<Option<i32>> = local.iter().map(|(_, (code, _, _))| *code).collect();
    assert_eq!(
        &codes[3..9],
        [Some(3), Some(0), Some(124), Some(127), Some(125), Some(0)],
        "{local:#?}"
    );
    let (_, (_, gc, _)) = local.last().unwrap();
    assert!(gc.starts_with("cache: 1 entries evicted ("), "{gc}");
    assert!(gc.contains(", 0 bytes kept)"), "{gc}");

    for server in [Server::tcp(), Server::unix(), Server::nats()] {
        let client = Env::new();
        let target = Target::Server {
            server: &server,
            client: &client,
        };
        let out_dir = client.dir.path().join("export");
        let remote = session(&target, &spec, &out_dir);
        for ((step, here), (_, there)) in local.iter().zip(&remote) {
            if step == "runtimes" {
                // The server's host is this one: the same runtimes.
                assert_eq!(here.0, there.0);
                continue;
            }
            let step = masked(step);
            assert_eq!(here, there, "`berth {step}` over {}", server.url);
        }
        assert_eq!(
            std::fs::read_to_string(out_dir.join("app/edit.txt")).unwrap(),
            "changed\n",
            "exported over {}",
            server.url
        );
        assert_eq!(
            archived(&out_dir.with_extension("tar.zst")),
            archived(&env.dir.path().join("local-export.tar.zst")),
            "the archive exported over {}",
            server.url
        );
        assert!(
            !client.home.join("registry.db").exists(),
            "the client opened no state of its own"
        );
    }
}

#[test]
fn a_wrong_token_a_missing_one_and_an_unreachable_server_get_clear_errors() {
    let server = Server::tcp();
    let client = Env::new();
    let run = |extra: &[&str], token: Option<&str>| {
        let mut command = client.berth();
        command
            .args(["--server", &server.url])
            .args(extra)
            .arg("ls");
        if let Some(token) = token {
            command.env("BERTH_TOKEN", token);
        } else {
            command.env_remove("BERTH_TOKEN");
        }
        let out = command.output().unwrap();
        (out.status.code(), stderr(&out))
    };
    let (code, message) = run(&[], Some("wrong"));
    assert_eq!(code, Some(1));
    assert_eq!(message, "berth: wrong bearer token\n");
    let (code, message) = run(&[], None);
    assert_eq!(code, Some(1));
    assert!(
        message.starts_with("berth: missing bearer token"),
        "{message}"
    );
    let token = std::fs::read_to_string(server.token_file()).unwrap();
    assert_eq!(
        run(&[], Some(token.trim())).0,
        Some(0),
        "BERTH_TOKEN is sent"
    );
    let (code, message) = run(&["--token-file", "/nonexistent/token"], None);
    assert_eq!(code, Some(1));
    assert!(
        message.contains("--token-file: cannot read /nonexistent/token"),
        "{message}"
    );

    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = client
        .berth()
        .args(["--server", &closed, "exec", "w", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "exec: berth failed around the command"
    );
    assert!(
        stderr(&out).contains(&format!("cannot reach the berth server at {closed}")),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
    let socket = client.dir.path().join("none.sock");
    let out = client
        .berth()
        .args(["--server", &format!("unix://{}", socket.display()), "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No such file or directory"),
        "{}",
        stderr(&out)
    );
    let out = client
        .berth()
        .args(["--server", "127.0.0.1:7433", "ls"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("expected http://HOST:PORT or unix:///PATH"),
        "{}",
        stderr(&out)
    );
}

/// A workspace names files with bytes that are not UTF-8, two of them
/// differing only in such bytes: `berth files` lists each exactly, on the
/// host and over HTTP, in `--json` (`path_bytes` beside a display `path`)
/// and in text (the raw bytes quoted in octal, never U+FFFD).
#[test]
fn a_name_that_is_not_utf8_is_listed_exactly_by_files_here_and_over_http() {
    use base64::Engine as _;
    let env = Env::new();
    let server = Server::tcp();
    let client = Env::new();
    for (runtime, spec) in [
        ("sandbox", "runtime = \"sandbox\"\nimage = \"host\"\n"),
        ("local", "runtime = \"local\"\n"),
    ] {
        let spec = env.file(&format!("{runtime}.toml"), spec);
        let script = "mkdir names && cd names\n\
                      printf 1 > \"$(printf 'a\\377.txt')\"\n\
                      printf 2 > \"$(printf 'a\\376.txt')\"\n\
                      mkdir \"$(printf 'd\\300')\"\n\
                      printf 4 > plain.txt\n";
        for target in [
            Target::Local(&env),
            Target::Server {
                server: &server,
                client: &client,
            },
        ] {
            let out = target.run(&["up", spec.to_str().unwrap()], None);
            assert!(out.status.success(), "{runtime}: {}", stderr(&out));
            let id = super::workspace_id(&String::from_utf8(out.stdout).unwrap());
            let out = target.run(&["exec", &id, "--", "sh", "-c", script], None);
            assert!(out.status.success(), "{runtime}: {}", stderr(&out));

            let out = target.run(&["files", &id, "names", "--json"], None);
            assert!(out.status.success(), "{runtime}: {}", stderr(&out));
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let exact: Vec<(Vec<u8>, String)> = listed
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| {
                    let path = entry["path"].as_str().unwrap().to_string();
                    let raw = match entry.get("path_bytes") {
                        Some(bytes) => base64::engine::general_purpose::STANDARD
                            .decode(bytes.as_str().unwrap())
                            .unwrap(),
                        None => path.clone().into_bytes(),
                    };
                    (raw, path)
                })
                .collect();
            let expected: Vec<(Vec<u8>, String)> = [
                &b"names/a\xfe.txt"[..],
                b"names/a\xff.txt",
                b"names/d\xc0",
                b"names/plain.txt",
            ]
            .iter()
            .map(|raw| (raw.to_vec(), String::from_utf8_lossy(raw).into_owned()))
            .collect();
            assert_eq!(exact, expected, "{runtime}: {listed}");
            let plain = &listed[3];
            assert!(plain.get("path_bytes").is_none(), "{runtime}: {listed}");

            let out = target.run(&["files", &id, "names"], None);
            assert!(out.status.success(), "{runtime}: {}", stderr(&out));
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                "\"names/a\\376.txt\"\n\"names/a\\377.txt\"\n\"names/d\\300\"/\nnames/plain.txt\n",
                "{runtime}"
            );
            let out = target.run(&["rm", &id], None);
            assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        }
    }
}

/// `berth --server nats://...` killed (SIGKILL, no goodbye) while its
/// command runs: the server stops hearing its keepalives and ends the
/// command's whole process tree.
#[test]
fn a_killed_nats_client_has_its_exec_ended() {
    use std::io::BufRead as _;
    let server = Server::nats();
    let client = Env::new();
    let spec = client.file("spec.toml", "runtime = \"local\"\n");
    let nats = |args: &[&str]| {
        let mut command = client.berth();
        command.args(["--server", &server.url]).args(args);
        command
    };
    let up = nats(&["up", spec.to_str().unwrap(), "--name", "w"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", stderr(&up));
    let mut exec = nats(&["exec", "w", "--", "sh", "-c", "sleep 300 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(exec.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let sleeper: u32 = first.trim().parse().unwrap();
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(sleeper));
    exec.kill().unwrap();
    exec.wait().unwrap();
    server.wait_until(|| !alive(sleeper));
    // The workspace is still usable.
    let out = nats(&["exec", "w", "--", "echo", "ok"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn an_unreachable_nats_server_and_one_without_berth_get_clear_errors() {
    let client = Env::new();
    let closed = format!("nats://127.0.0.1:{}", free_port());
    let out = client.run(&["--server", &closed, "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot connect to NATS at {closed}")),
        "{}",
        stderr(&out)
    );
    let bare = NatsServer::start();
    let out = client.run(&["--server", &bare.url(), "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no berth service answers on berth.v1.list"),
        "{}",
        stderr(&out)
    );
    let out = client.run(&["serve", "-s", "nats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--nats nats://HOST:PORT"),
        "{}",
        stderr(&out)
    );
}

/// A job's output with what differs between two runs masked as well: times
/// of day (`10:03:04.567`), durations (`1.2s`), and the spaces that align
/// them in columns.
fn masked_job(text: &str, dir: &Path) -> String {
    let text = masked(&text.replace(&dir.display().to_string(), "<dir>"));
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            && (i == 0 || !chars[i - 1].is_ascii_alphanumeric() && chars[i - 1] != '.');
        if starts_number {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || matches!(chars[j], ':' | '.')) {
                j += 1;
            }
            let token: String = chars[i..j].iter().collect();
            if token.contains(':') && token.contains('.') {
                out.push_str("<time>");
            } else if token.contains('.') && chars.get(j) == Some(&'s') {
                out.push_str("<secs>");
            } else {
                out.push_str(&token);
            }
            i = j;
            continue;
        }
        if chars[i] == ' ' && out.ends_with(' ') {
            i += 1;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Every job command a user runs, in order, as they see it, over a job of
/// two repositories in `dir` (one whose step fails), named relative to
/// the job file.
fn job_session(target: &Target, dir: &Path) -> Vec<(String, Seen)> {
    for (i, name) in ["ok", "bad"].iter().enumerate() {
        make_repo(
            &dir.join("repos").join(name),
            &[("version.txt", &format!("repo {i}\n"))],
        );
    }
    let file = dir.join("job.toml");
    std::fs::write(
        &file,
        "name = \"edit\"\nruntime = \"local\"\n\
         repositories = [{ url = \"./repos/ok\" }, { url = \"./repos/bad\" }]\n\
         [[steps]]\nname = \"bump\"\nrun = '''\necho bumped >> version.txt; echo edited\n\
         if grep -q 'repo 1' version.txt; then echo 'no luck' >&2; exit 7; fi\n'''\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = target.run(args, None);
        let (code, stdout, stderr) = seen(&out);
        (
            out,
            (code, masked_job(&stdout, dir), masked_job(&stderr, dir)),
        )
    };
    let mut seen_all = Vec::new();
    let (out, first) = run(&["job", "run", file.to_str().unwrap(), "--wait"]);
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    seen_all.push(("job run --wait".to_string(), first));
    let steps: Vec<Vec<&str>> = vec![
        vec!["job", "ls"],
        vec!["job", "runs", "edit"],
        vec!["job", "show", &id],
        vec!["job", "logs", &id, "ok"],
        vec!["job", "logs", &id, "bad", "-f"],
        vec!["job", "logs", &id],
        vec!["job", "patch", &id],
        vec!["job", "patch", &id, "bad"],
        vec!["job", "show", "no-such-run"],
        vec!["job", "logs", &id, "no-such-task"],
        vec!["job", "runs", "no-such-job"],
        vec!["job", "publish", &id, "--branch", "berth/edit"],
        vec!["job", "publish", &id, "--branch", "bad..name"],
        vec!["job", "schedule", "edit", "--cron", "0 3 * * *"],
        vec!["job", "schedule", "edit", "--cron", "every day"],
        vec!["job", "schedule", "edit", "--off"],
        vec!["job", "cancel", &id],
        vec!["job", "retry", &id, "ok"],
    ];
    for args in steps {
        let (_, what) = run(&args);
        seen_all.push((masked(&args.join(" ")), what));
    }
    seen_all
}

#[test]
fn every_job_command_over_tcp_a_unix_socket_and_nats_gives_what_it_gives_locally() {
    let env = Env::new();
    let here = env.dir.path().join("jobs");
    let local = job_session(&Target::Local(&env), &here);
    // Sanity: the session exercised what it claims.
    let code = |step: &str| {
        local
            .iter()
            .find(|(s, _)| s.starts_with(step))
            .map(|(_, seen)| seen.0)
    };
    assert_eq!(code("job run --wait"), Some(Some(1)), "{local:#?}");
    let (_, (_, waited, _)) = &local[0];
    assert!(
        waited.contains("run <id>: partial") && waited.contains("step bump"),
        "{waited}"
    );
    let (_, (_, followed, _)) = local.iter().find(|(s, _)| s.ends_with("bad -f")).unwrap();
    assert!(
        followed.contains("no luck") && followed.contains("==> step 1: bump"),
        "{followed}"
    );
    let (_, (_, patch, _)) = local.iter().find(|(s, _)| s == "job patch <id>").unwrap();
    assert!(patch.contains("+bumped"), "{patch}");
    let (_, published) = local
        .iter()
        .find(|(s, _)| s.ends_with("--branch berth/edit"))
        .unwrap();
    assert_eq!(published.0, Some(0), "{published:?}");
    assert!(
        published.1.contains("<dir>/repos/ok berth/edit <hash>"),
        "{published:?}"
    );

    for server in [Server::tcp(), Server::unix(), Server::nats_with_node()] {
        let client = Env::new();
        let target = Target::Server {
            server: &server,
            client: &client,
        };
        let there = client.dir.path().join("jobs");
        let remote = job_session(&target, &there);
        assert_eq!(local.len(), remote.len());
        for ((step, here), (_, there)) in local.iter().zip(&remote) {
            assert_eq!(here, there, "`berth {step}` over {}", server.url);
        }
        assert!(
            !client.home.join("registry.db").exists(),
            "the client opened no state of its own"
        );
    }
}

/// The JSON of `berth job show RUN --json` through `target`.
fn run_details(target: &Target, run: &str) -> serde_json::Value {
    let out = target.run(&["job", "show", run, "--json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the run's first task is `state`, at most two minutes.
fn until_task(target: &Target, run: &str, state: &str) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let details = run_details(target, run);
        if details["tasks"][0]["state"] == state {
            return;
        }
        assert!(Instant::now() < until, "never {state}: {details:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job of one repository in `dir` running `step` on the local runtime;
/// the run's id.
fn start_job(target: &Target, dir: &Path, name: &str, step: &str) -> String {
    let repo = dir.join(name);
    make_repo(&repo, &[("version.txt", "one\n")]);
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nruntime = \"local\"\nrepositories = [{{ url = \"{}\" }}]\n\
             [[steps]]\nrun = \"{step}\"\n",
            repo.display()
        ),
    )
    .unwrap();
    let out = target.run(&["job", "run", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Through `berth --server nats://…`: a task's log followed from while it
/// runs to its end, as it reads once ended; a running run cancelled, its
/// task ended on the node; and the cluster's nodes listed.
#[test]
fn over_nats_a_log_is_followed_live_a_running_run_is_cancelled_and_nodes_are_listed() {
    let server = Server::nats_with_node();
    let client = Env::new();
    let target = Target::Server {
        server: &server,
        client: &client,
    };
    let dir = client.dir.path();

    let run = start_job(
        &target,
        dir,
        "slow",
        "echo started; sleep 1; echo edited >> version.txt; echo done",
    );
    until_task(&target, &run, "running");
    let followed = target.run(&["job", "logs", &run, "slow", "-f"], None);
    assert!(followed.status.success(), "{}", stderr(&followed));
    let followed = String::from_utf8(followed.stdout).unwrap();
    // Written after the follow began: it was followed live, to the end.
    assert!(followed.contains("started\n"), "{followed}");
    assert!(followed.contains("done\n"), "{followed}");
    assert!(followed.contains("<== step 1 exited with 0"), "{followed}");
    assert_eq!(run_details(&target, &run)["tasks"][0]["state"], "completed");
    let read = target.run(&["job", "logs", &run, "slow"], None);
    assert_eq!(String::from_utf8(read.stdout).unwrap(), followed);
    let patch = target.run(&["job", "patch", &run], None);
    assert!(
        String::from_utf8_lossy(&patch.stdout).contains("+edited"),
        "{}",
        stderr(&patch)
    );

    let run = start_job(&target, dir, "stuck", "echo waiting; sleep 300");
    until_task(&target, &run, "running");
    let out = target.run(&["job", "cancel", &run], None);
    assert!(out.status.success(), "{}", stderr(&out));
    // Asked, not yet done: the node ends the task's command.
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.starts_with(&format!("{run}: ")), "{said}");
    until_task(&target, &run, "cancelled");
    let until = Instant::now() + Duration::from_secs(60);
    while run_details(&target, &run)["state"] != "cancelled" {
        assert!(Instant::now() < until, "the run never ended cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = target.run(&["nodes", "--json"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes[0]["name"], "n1", "{nodes}");
    let table = target.run(&["nodes"], None);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.starts_with("NODE") && table.contains("\nn1 "),
        "{table}"
    );
}

/// A persistent shell session through the NATS API, on a sandbox
/// workspace made with `berth --server nats://… up`: its working directory
/// and variables carry from one command to the next; closed, it is gone.
#[test]
fn a_session_over_nats_keeps_its_shell_state_until_closed() {
    let server = Server::nats();
    let client = Env::new();
    let target = Target::Server {
        server: &server,
        client: &client,
    };
    let spec = client.file("sandbox.toml", "runtime = \"sandbox\"\nimage = \"host\"\n");
    let out = target.run(&["up", spec.to_str().unwrap(), "--name", "s"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let nats = berth_nats::async_nats::connect(server.url.as_str())
            .await
            .unwrap();
        let api =
            berth_nats_api::NatsClient::new(nats, berth_nats_api::DEFAULT_PREFIX, &server.url);
        let session = api.open_session("s", &Default::default()).await.unwrap();
        let run = |command: &str| {
            let command: berth_provider::SessionCommand =
                serde_json::from_value(serde_json::json!({ "command": command })).unwrap();
            let api = api.clone();
            let session = session.id.clone();
            async move {
                let mut events = api
                    .session_exec("s", &session, &command, Default::default())
                    .await?;
                let (mut stdout, mut code) = (Vec::new(), None);
                while let Some(event) = events.recv().await {
                    match event {
                        berth_core::ExecEvent::Stdout { data } => stdout.extend(data.0),
                        berth_core::ExecEvent::Stderr { .. } => {}
                        berth_core::ExecEvent::Exit(exit) => code = exit.code,
                    }
                }
                Ok::<_, berth_client::ClientError>((String::from_utf8(stdout).unwrap(), code))
            }
        };
        run("mkdir -p deep/er && cd deep/er && export GREETING=hi")
            .await
            .unwrap();
        let (out, code) = run("echo \"$(basename \"$PWD\") $GREETING\"")
            .await
            .unwrap();
        assert_eq!((out.as_str(), code), ("er hi\n", Some(0)));
        assert!(!api.interrupt_session("s", &session.id).await.unwrap());
        api.close_session("s", &session.id).await.unwrap();
        match run("true").await {
            Err(berth_client::ClientError::Api { code, .. }) => assert_eq!(code, "not_found"),
            other => panic!("a closed session runs nothing: {other:?}"),
        }
    });
    let out = target.run(&["rm", "s"], None);
    assert!(out.status.success(), "{}", stderr(&out));
}
