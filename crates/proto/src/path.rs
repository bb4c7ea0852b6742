//! Paths inside a workspace, checked before anything touches a filesystem.
//!
//! A [`WorkspacePath`] is relative to the workspace root, has no `..`
//! component and is not absolute. Symlinks are a filesystem matter and are
//! checked where the filesystem is (see `berth-files`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Absolute(String),
    ParentComponent(String),
    NulByte(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Absolute(p) => write!(
                f,
                "path `{p}` is absolute; paths are relative to the workspace root"
            ),
            PathError::ParentComponent(p) => {
                write!(
                    f,
                    "path `{p}` contains `..`, which could leave the workspace"
                )
            }
            PathError::NulByte(p) => write!(f, "path `{}` contains a NUL byte", p.escape_debug()),
        }
    }
}

impl std::error::Error for PathError {}

/// A normalised path relative to a workspace root; empty means the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    pub fn root() -> Self {
        WorkspacePath(String::new())
    }

    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.contains('\0') {
            return Err(PathError::NulByte(raw.into()));
        }
        let mut parts = Vec::new();
        for component in Path::new(raw).components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::CurDir => {}
                Component::ParentDir => return Err(PathError::ParentComponent(raw.into())),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(PathError::Absolute(raw.into()));
                }
            }
        }
        Ok(WorkspacePath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|part| !part.is_empty())
    }

    /// This path under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        self.components().fold(root.to_path_buf(), |p, c| p.join(c))
    }

    pub fn join(&self, child: &WorkspacePath) -> WorkspacePath {
        match (self.is_root(), child.is_root()) {
            (true, _) => child.clone(),
            (_, true) => self.clone(),
            _ => WorkspacePath(format!("{}/{}", self.0, child.0)),
        }
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &WorkspacePath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for WorkspacePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        WorkspacePath::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses_escapes() {
        assert_eq!(WorkspacePath::parse("./a//b/").unwrap().as_str(), "a/b");
        assert!(WorkspacePath::parse("").unwrap().is_root());
        assert!(WorkspacePath::parse(".").unwrap().is_root());
        assert!(matches!(
            WorkspacePath::parse("a/../../etc"),
            Err(PathError::ParentComponent(_))
        ));
        assert!(matches!(
            WorkspacePath::parse("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            WorkspacePath::parse("a\0b"),
            Err(PathError::NulByte(_))
        ));
    }

    #[test]
    fn starts_with_respects_component_boundaries() {
        let p = |s| WorkspacePath::parse(s).unwrap();
        assert!(p("src/main.rs").starts_with(&p("src")));
        assert!(!p("srcx/main.rs").starts_with(&p("src")));
        assert!(p("anything").starts_with(&WorkspacePath::root()));
    }
}
