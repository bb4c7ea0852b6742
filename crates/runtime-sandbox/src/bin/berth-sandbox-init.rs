//! The sandbox's stage-1 init: sets up a workspace's namespaces and
//! mounts before anything else runs in the process, then becomes (or
//! waits for) the workspace's PID 1. See `berth_runtime_sandbox::stage1`.

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(berth_runtime_sandbox::stage1::main(&args));
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("berth-sandbox-init: the sandbox runtime needs Linux");
    std::process::exit(125);
}
