//! A workspace attacking the host through berth's own hands, from inside a
//! real sandbox, as the user's commands meet it: links swapped in while
//! `berth export` and `berth changes` run, links left in an export's
//! target, files far larger than memory, patches larger than an output
//! limit.

use super::{Env, stderr, workspace_id};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// What only the host has, named by the workspace's links.
const SECRET: &str = "host-only-secret-bytes-5d1f";
const SECRET_NAME: &str = "host-only-entry-5d1f";
const SUBDIRS: usize = 32;

/// Runs of each racing command: on the code before export and changes
/// walked through descriptors, the leaks came within a few dozen.
const ROUNDS: usize = 100;

/// A running sandbox workspace (no repositories) in `env`.
fn sandbox(env: &Env) -> String {
    let spec = env.file(
        "hostile.toml",
        "runtime = \"sandbox\"\nimage = \"host\"\nsetup_script = \"true\"\n",
    );
    let out = env.run(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    workspace_id(&String::from_utf8(out.stdout).unwrap())
}

/// A host file and a host directory shaped like the workspace's `d`.
fn host_secrets(env: &Env) -> (PathBuf, PathBuf) {
    let secret = env.dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let dir = env.dir.path().join("secret-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inner"), SECRET).unwrap();
    for i in 0..SUBDIRS {
        let sub = dir.join(format!("sub{i}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(SECRET_NAME), SECRET).unwrap();
    }
    (secret, dir)
}

/// Every regular file under `dir`, read without following a link.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files_under(&entry.path()));
        } else if kind.is_file() {
            out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    out
}

fn holds_secret(bytes: &[u8]) -> bool {
    bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
}

/// The loops a hostile workspace runs until `stop` exists: `leak` turns
/// from a file into a link to the host's secret and back (`mv -T`), and
/// the directory `d` trades places with a link to the host's directory
/// (`renameat2(RENAME_EXCHANGE)`, syscall 316).
const RACE: &str = r#"
perl -e 'my ($a, $b) = ("d", "dlink");
         until (-e "stop") { syscall(316, -100, $a, -100, $b, 2) == 0 or die "renameat2: $!" }' &
until [ -e stop ]; do
    echo workspace > .leak.file && mv -T .leak.file leak
    ln -sfn "$1" .leak.link && mv -T .leak.link leak
done
wait
"#;

#[test]
fn export_and_changes_do_not_follow_links_swapped_in_while_they_run() {
    let env = Env::new();
    let (secret, secret_dir) = host_secrets(&env);
    let id = sandbox(&env);
    let layout = format!(
        "mkdir -p d && echo workspace > d/inner && \
         for i in $(seq 0 {last}); do mkdir d/sub$i && echo workspace > d/sub$i/file; done && \
         ln -s {dir} dlink && echo workspace > leak",
        last = SUBDIRS - 1,
        dir = secret_dir.display()
    );
    env.ok(&["exec", &id, "--", "sh", "-c", &layout]);
    let mut race = env
        .berth()
        .args(["exec", &id, "--", "sh", "-c", RACE, "race"])
        .arg(&secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let (mut exported, mut archived, mut listed) = (0, 0, 0);
    for round in 0..ROUNDS {
        let out = env.dir.path().join(format!("out-{round}"));
        if env
            .run(&["export", &id, "-o", out.to_str().unwrap()])
            .status
            .success()
        {
            exported += 1;
        }
        for (path, bytes) in files_under(&out) {
            assert!(
                !holds_secret(&bytes),
                "berth export wrote the host's secret into {}",
                path.display()
            );
        }
        let archive = env.dir.path().join(format!("out-{round}.tar.zst"));
        if env
            .run(&["export", &id, "-o", archive.to_str().unwrap()])
            .status
            .success()
        {
            archived += 1;
            let mut tar = Vec::new();
            zstd::Decoder::new(std::fs::File::open(&archive).unwrap())
                .unwrap()
                .read_to_end(&mut tar)
                .unwrap();
            assert!(!holds_secret(&tar), "the archive carries the host's secret");
        }
        let changes = env.run(&["changes", &id]);
        if changes.status.success() {
            listed += 1;
            let text = String::from_utf8_lossy(&changes.stdout);
            assert!(
                !text.contains(SECRET_NAME),
                "berth changes listed the host directory: {text}"
            );
        }
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(&archive);
    }
    env.ok(&["exec", &id, "--", "touch", "stop"]);
    let status = race.wait().unwrap();
    let mut race_err = String::new();
    race.stderr
        .take()
        .unwrap()
        .read_to_string(&mut race_err)
        .unwrap();
    assert!(status.success(), "the racing loops failed: {race_err}");
    assert!(
        exported > ROUNDS / 2 && archived > ROUNDS / 2 && listed > ROUNDS / 2,
        "too few runs ended: {exported} exports, {archived} archives, {listed} listings of {ROUNDS}"
    );
    env.ok(&["rm", &id]);
}

#[test]
fn export_into_an_existing_directory_does_not_write_through_links_it_left() {
    let env = Env::new();
    let (_, secret_dir) = host_secrets(&env);
    let id = sandbox(&env);
    let target = env.dir.path().join("target");
    let link = format!("ln -s {} d2", secret_dir.display());
    env.ok(&["exec", &id, "--", "sh", "-c", &link]);
    env.ok(&["export", &id, "-o", target.to_str().unwrap()]);
    assert_eq!(std::fs::read_link(target.join("d2")).unwrap(), secret_dir);

    env.ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "rm d2 && mkdir d2 && echo planted > d2/planted",
    ]);
    let again = env.run(&["export", &id, "-o", target.to_str().unwrap()]);
    assert!(
        !secret_dir.join("planted").exists(),
        "the second export wrote into the host directory"
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        std::fs::symlink_metadata(target.join("d2"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_to_string(target.join("d2/planted")).unwrap(),
        "planted\n"
    );
    env.ok(&["rm", &id]);
}

/// The peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Reads `child`'s standard output to the end and returns how many bytes
/// came and the child's peak memory, taken when all but the last few MiB
/// were in: the child is then blocked writing the rest, still alive.
fn drain_measuring(child: &mut Child, size: u64) -> (u64, u64) {
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut received, mut peak) = (0u64, None);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        received += n as u64;
        if peak.is_none() && received + (8 << 20) >= size {
            peak = Some(peak_rss(child.id()));
        }
    }
    (received, peak.unwrap())
}

#[test]
fn read_of_a_huge_sparse_file_streams_in_bounded_memory() {
    let env = Env::new();
    let id = sandbox(&env);
    let size: u64 = 1 << 30;
    env.ok(&["exec", &id, "--", "truncate", "-s", "1G", "huge.bin"]);
    let mut read = env
        .berth()
        .args(["read", &id, "huge.bin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (received, peak) = drain_measuring(&mut read, size);
    let status = read.wait().unwrap();
    assert!(status.success());
    assert_eq!(received, size, "every byte of the file");
    assert!(
        peak < 128 << 20,
        "berth read of a {size}-byte file peaked at {peak} bytes"
    );
    // The agent inside streamed it too.
    let agent = env.ok(&["exec", &id, "--", "grep", "VmHWM", "/proc/1/status"]);
    let kb: u64 = agent
        .trim()
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    assert!(kb < 64 << 10, "the agent peaked at {kb} kB: {agent}");
    env.ok(&["rm", &id]);
}

#[test]
fn diff_of_a_patch_larger_than_the_output_limit_comes_whole() {
    let env = Env::new();
    let repo = env.dir.path().join("upstream");
    berth_testkit::make_repo(&repo, &[("big.txt", "start\n")]);
    let spec = env.file(
        "diff.toml",
        &format!(
            "runtime = \"local\"\n[[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
            repo.display()
        ),
    );
    let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap()]));
    // About 30 MB of patch, past the 16 MiB a command's output keeps.
    env.ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "seq 1 700000 | sed 's/$/ of the lines a long patch carries/' > app/big.txt",
    ]);
    let diff = env.berth().args(["diff", &id]).output().unwrap();
    assert!(diff.status.success(), "{}", stderr(&diff));
    let patch = diff.stdout;
    assert!(
        patch.len() > 28_000_000,
        "the patch is {} bytes",
        patch.len()
    );
    assert!(
        patch.ends_with(b"+700000 of the lines a long patch carries\n"),
        "the patch ends with the last line: {:?}",
        String::from_utf8_lossy(&patch[patch.len().saturating_sub(200)..])
    );
    env.ok(&["rm", &id]);
}

#[test]
fn exec_whose_output_was_cut_says_so_and_does_not_exit_0() {
    let env = Env::new();
    let spec = env.file("cut.toml", "runtime = \"local\"\n");
    let id = workspace_id(&env.ok(&["up", spec.to_str().unwrap()]));
    let out = env
        .berth()
        .env("BERTH_OUTPUT_LIMIT", "1k")
        .args(["exec", &id, "--", "sh", "-c", "head -c 5000 /dev/zero"])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 1024, "the output limit kept");
    assert!(
        stderr(&out).contains("3976 bytes of stdout dropped"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(125), "a cut result is no success");
    env.ok(&["rm", &id]);
}
