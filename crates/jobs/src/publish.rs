//! Publishing: each succeeded task's patch committed on the commit its
//! workspace was provisioned at and pushed as a branch, provider-side.

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
