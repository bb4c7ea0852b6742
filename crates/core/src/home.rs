//! A berth home's own id, kept in `$BERTH_HOME/home-id`. Homes share
//! what lies outside them (a Docker Engine, the host's cgroups), so
//! runtimes name and label what they make there with this id, and look
//! up, list and collect only what carries it: one home never serves
//! another's cache or removes another's containers.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file in a home that holds its id.
pub const HOME_ID_FILE: &str = "home-id";

/// A home's id: 16 lowercase hex digits, made at random once per home.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HomeId(String);

#[derive(Debug, thiserror::Error)]
pub enum HomeIdError {
    #[error("cannot {action} the home id `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the home id `{path}` holds `{found}`, not 16 lowercase hex digits; \
         remove the file to give the home a new id"
    )]
    Malformed { path: PathBuf, found: String },
}

impl HomeId {
    /// The id of the home at `home`, made (with the home) on first use.
    /// Processes opening a new home at once agree on one id: the first to
    /// link its file in place wins.
    pub fn load_or_create(home: &Path) -> Result<HomeId, HomeIdError> {
        let path = home.join(HOME_ID_FILE);
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| HomeIdError::Io {
                action,
                path,
                source,
            }
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => return Self::parse(&path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &path)(e)),
        }
        std::fs::create_dir_all(home).map_err(io_err("create the home of", &path))?;
        let id = format!("{:016x}", ulid::Ulid::generate().random() as u64);
        let staged = home.join(format!(".{HOME_ID_FILE}.{id}"));
        let written = std::fs::File::create(&staged)
            .and_then(|mut file| writeln!(file, "{id}").and_then(|()| file.sync_all()));
        let linked = written.and_then(|()| match std::fs::hard_link(&staged, &path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            linked => linked,
        });
        let _ = std::fs::remove_file(&staged);
        linked.map_err(io_err("write", &path))?;
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        Self::parse(&path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<HomeId, HomeIdError> {
        let id = text.trim();
        Self::from_text(id).ok_or_else(|| HomeIdError::Malformed {
            path: path.to_path_buf(),
            found: id.chars().take(40).collect(),
        })
    }

    /// `text` as a home id, if it is one.
    pub fn from_text(text: &str) -> Option<HomeId> {
        (text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| HomeId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HomeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_keeps_its_id_and_two_homes_differ() {
        let root = std::env::temp_dir().join(format!("berth-home-id-{}", ulid::Ulid::generate()));
        let (a, b) = (root.join("a"), root.join("b"));
        let first = HomeId::load_or_create(&a).unwrap();
        assert_eq!(HomeId::load_or_create(&a).unwrap(), first);
        assert_ne!(HomeId::load_or_create(&b).unwrap(), first);
        assert_eq!(first.as_str().len(), 16);
        let names: Vec<_> = std::fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [HOME_ID_FILE], "nothing staged is left");

        std::fs::write(a.join(HOME_ID_FILE), "../../etc\n").unwrap();
        let error = HomeId::load_or_create(&a).unwrap_err().to_string();
        assert!(error.contains("not 16 lowercase hex digits"), "{error}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn homes_opened_at_once_agree_on_one_id() {
        let home = std::env::temp_dir().join(format!("berth-home-id-{}", ulid::Ulid::generate()));
        let ids: Vec<HomeId> = std::thread::scope(|s| {
            let opened: Vec<_> = (0..8)
                .map(|_| s.spawn(|| HomeId::load_or_create(&home).unwrap()))
                .collect();
            opened.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        std::fs::remove_dir_all(home).unwrap();
    }
}
