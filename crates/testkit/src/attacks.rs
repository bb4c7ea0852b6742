//! Attacks a workspace makes on what berth runs, shared by the runtimes'
//! tests, and what the host sees of them.

/// What a workspace's root tries against its own agent (PID 1): trace it
/// (attach and seize), open its memory for writing, read its environment,
/// take its descriptors away with `prlimit`, stop it. Each line says what
/// the kernel answered. Needs `perl`, `prlimit` and `kill`.
pub const ON_THE_AGENT: &str = r#"
perl -e 'for my $req (16, 0x4206) { my $r = syscall(101, $req, 1, 0, 0); print $r == -1 ? "ptrace $req: $!\n" : "ptrace $req: attached\n" }'
perl -e 'print open(my $m, "+<", "/proc/1/mem") ? "mem: opened\n" : "mem: $!\n"'
perl -e 'print open(my $e, "<", "/proc/1/environ") ? "environ: opened\n" : "environ: $!\n"'
prlimit --pid 1 --nofile=0:0 >/dev/null 2>&1 && echo prlimit: done || echo prlimit: refused
kill -STOP 1; echo stop: sent
"#;

/// What [`ON_THE_AGENT`] prints when every attack fails.
pub const ON_THE_AGENT_REFUSED: &str = "ptrace 16: Operation not permitted
ptrace 16902: Operation not permitted
mem: Permission denied
environ: Permission denied
prlimit: refused
stop: sent
";

/// What a workspace's root sends its own agent (PID 1) to stop, pause or
/// interrupt it: every signal an agent might handle, and those that stop
/// a process. Needs a shell with `kill`.
pub const SIGNALS_TO_THE_AGENT: &str =
    "for s in TERM INT HUP QUIT USR1 USR2 STOP TSTP; do kill -s $s 1; done; echo sent";

/// The state letter of host process `pid` (`S`, `R`, `T` when stopped,
/// `t` when traced), or `None` when it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("State:"))?;
    line["State:".len()..].trim().chars().next()
}

/// Host processes whose command line contains `marker`, with that
/// command line (arguments joined by spaces).
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        line.contains(marker).then_some((pid, line))
    })
    .collect()
}

/// Waits until `count` host processes carry `marker`, polling for at most
/// ten seconds; panics if they do not.
pub fn wait_for(marker: &str, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = processes_with(marker);
        if found.len() >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {count} processes running `{marker}`, found {found:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until no host process carries `marker`, polling for at most
/// `limit`; returns those still there.
pub fn survivors(marker: &str, limit: std::time::Duration) -> Vec<(u32, String)> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A number of seconds no other test sleeps for, to find a test's
/// processes by their command line (`sleep MARKER`) from the host.
pub fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{}.{:06}",
        90_000 + std::process::id() % 9_999,
        nanos % 1_000_000
    )
}

/// A shell script whose processes leave the command every way a shell
/// can: a double fork into a new session, a new session that ignores
/// SIGTERM, a background child that ignores SIGTERM; then it waits in
/// the foreground. Every process it starts runs `sleep MARKER`.
pub fn detaching(marker: &str) -> String {
    format!(
        "(setsid sleep {marker} &); \
         setsid sh -c 'trap \"\" TERM; sleep {marker}' & \
         (trap '' TERM; sleep {marker}) & \
         echo started; sleep {marker}"
    )
}
