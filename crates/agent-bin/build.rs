//! Builds `berth-agent` as a fully static executable and leaves it in
//! `OUT_DIR` for the library to embed.
//!
//! The agent is built by a nested `cargo build -p berth-agent --profile
//! agent` with a target directory of its own (next to the outer one), so it
//! never waits on the outer build's lock and is reused across the outer
//! build's profiles. The target is `x86_64-unknown-linux-musl` when that
//! standard library is installed, else the host's glibc target with
//! `+crt-static`. `BERTH_AGENT_BINARY=/path` skips the build and embeds that
//! file instead.

#![expect(
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use sha2::{Digest, Sha256};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MUSL: &str = "x86_64-unknown-linux-musl";

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_AGENT_BINARY");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/agent-bin lies two levels below the workspace root")
        .to_path_buf();

    let (binary, target) = match env::var_os("BERTH_AGENT_BINARY") {
        Some(path) => (PathBuf::from(path), "prebuilt".to_string()),
        None => build(&root, &out_dir),
    };
    let bytes = std::fs::read(&binary)
        .unwrap_or_else(|e| panic!("cannot read the agent at {}: {e}", binary.display()));
    let embedded = out_dir.join("berth-agent");
    std::fs::write(&embedded, &bytes).expect("cannot write the agent into OUT_DIR");
    println!(
        "cargo:rustc-env=BERTH_AGENT_SHA256={}",
        hex::encode(Sha256::digest(&bytes))
    );
    println!("cargo:rustc-env=BERTH_AGENT_TARGET={target}");
}

/// Runs the nested build; returns the binary and a description of its target.
fn build(root: &Path, out_dir: &Path) -> (PathBuf, String) {
    for dir in [
        "crates/agent",
        "crates/proto",
        "crates/exec",
        "crates/files",
        "crates/runtime-sandbox",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let musl = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib").join(MUSL).is_dir());
    let host = env::var("HOST").expect("cargo sets HOST");
    // Static and not position-independent: no loader of any kind is
    // needed, and `ldd` calls it "not a dynamic executable".
    let flags = ["-Ctarget-feature=+crt-static", "-Crelocation-model=static"].join("\x1f");
    let (target, description) = if musl {
        (MUSL.to_string(), MUSL.to_string())
    } else {
        println!(
            "cargo:warning=the {MUSL} target is not installed (`rustup target add {MUSL}`); \
             building the agent against glibc with +crt-static"
        );
        (host.clone(), format!("{host} +crt-static"))
    };

    let target_dir = agent_target_dir(out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "-p",
            "berth-agent",
            "--bin",
            "berth-agent",
            "--profile",
            "agent",
        ])
        .args(["--target", &target])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags for the target only: with an explicit --target they do not
        // reach build scripts and proc macros, which cannot be static.
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // Under `cargo clippy` the outer build's wrapper would lint the
        // agent again; it is linted as a workspace member already.
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the agent: {e}"));
    assert!(status.success(), "building berth-agent for {target} failed");
    (
        target_dir.join(&target).join("agent").join("berth-agent"),
        description,
    )
}

/// A directory beside the outer target directory (found by its
/// CACHEDIR.TAG), so every outer profile shares one agent build.
fn agent_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(|target| target.join("berth-agent"))
        .unwrap_or_else(|| out_dir.join("agent-target"))
}
