//! The embedded agent is the static, small executable the runtimes need.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

/// The design's bound on the agent's size.
const MAX_SIZE: usize = 5 * 1024 * 1024;

#[test]
fn the_agent_is_static_small_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = berth_agent_bin::install(dir.path()).unwrap();
    let size = berth_agent_bin::agent_binary().len();
    println!("agent: {size} bytes, built for {}", berth_agent_bin::TARGET);
    assert!(
        size <= MAX_SIZE,
        "the agent is {size} bytes, over {MAX_SIZE}"
    );

    let ldd = Command::new("ldd").arg(&path).output().unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable"),
        "ldd says: {said}"
    );
    assert!(
        !has_interpreter(berth_agent_bin::agent_binary()),
        "the agent has an ELF interpreter"
    );

    let version = Command::new(&path).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("berth-agent "));
}

#[test]
fn install_is_idempotent_and_names_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let first = berth_agent_bin::install(dir.path()).unwrap();
    let second = berth_agent_bin::install(dir.path()).unwrap();
    assert_eq!(first, second);
    assert!(
        first
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(&berth_agent_bin::SHA256[..16])
    );
    let mode = std::fs::metadata(&first).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    // The agent and the stamp of its last check, no temporary left.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let agent = first.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(names, [format!(".{agent}.checked"), agent]);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        berth_agent_bin::agent_binary()
    );

    assert!(berth_agent_bin::binary_for_arch("x86_64").is_some());
    assert!(berth_agent_bin::binary_for_arch("riscv64").is_none());
}

/// Whether an ELF executable asks for a dynamic loader (a PT_INTERP
/// program header).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let header = phoff + i * phentsize;
        u32::from_le_bytes(elf[header..header + 4].try_into().unwrap()) == 3
    })
}
