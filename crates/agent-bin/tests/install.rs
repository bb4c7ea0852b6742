//! Installing the embedded agent where runtimes mount it from: checked
//! once, then recognised by its stamp, and put back whenever the file
//! changed since.

use std::io::Write as _;

#[test]
fn an_installed_agent_swapped_or_cut_after_its_check_is_put_back() {
    if std::env::var_os(berth_agent_bin::OVERRIDE_VAR).is_some() {
        panic!("unset {} to test installing", berth_agent_bin::OVERRIDE_VAR);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = berth_agent_bin::install(dir.path()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        berth_agent_bin::agent_binary()
    );
    assert_eq!(
        berth_agent_bin::install(dir.path()).unwrap(),
        path,
        "reused"
    );

    // A file of the same size swapped in under the agent's name.
    let forged = dir.path().join("forged");
    std::fs::write(&forged, vec![b'x'; berth_agent_bin::agent_binary().len()]).unwrap();
    std::fs::rename(&forged, &path).unwrap();
    berth_agent_bin::install(dir.path()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        berth_agent_bin::agent_binary()
    );

    // The agent cut short in place.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1024).unwrap();
    drop(file);
    berth_agent_bin::install(dir.path()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        berth_agent_bin::agent_binary()
    );

    // Appended to in place.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b"#!").unwrap();
    drop(file);
    berth_agent_bin::install(dir.path()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        berth_agent_bin::agent_binary()
    );
}
