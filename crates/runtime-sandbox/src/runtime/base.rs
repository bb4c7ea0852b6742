//! Where a workspace's base filesystem comes from ([`Base`]): the host's
//! system directories through a skeleton layer, a tarball, a directory, or
//! a container image exported once through an [`ImageExporter`].

use super::{Inner, NAME, other};
use crate::plan::{self, BERTH_DIR};
use berth_core::RuntimeError;
use berth_core::spec::DEFAULT_ROOT;
use berth_layers::{LayerId, LayerKind};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Exports a local container image's root filesystem: the seam through
/// which a container engine's client (the docker runtime's) provides
/// bases, exported once per image and kept as a layer.
pub trait ImageExporter: Send + Sync {
    /// The image's content id (such as `sha256:...`), which names its
    /// layer: the same id is never exported twice.
    fn image_id(&self, image: &str) -> Result<String, String>;
    /// Writes the image's root filesystem as a tar archive at `into`.
    fn export(&self, image: &str, into: &Path) -> Result<(), String>;
}

/// Where a workspace's base filesystem comes from (`spec.image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The host's system directories, read-only (no image, or `host`).
    Host,
    /// A root filesystem tarball (`.tar`, `.tar.zst`).
    Tarball(PathBuf),
    /// A root filesystem directory.
    Directory(PathBuf),
    /// A local Docker image, exported once into a layer.
    Docker(String),
}

impl Base {
    /// Reads `spec.image`: `host`, `docker:NAME`, or a host path.
    pub fn parse(image: Option<&str>) -> Base {
        match image {
            None | Some("host") | Some("") => Base::Host,
            Some(name) => match name.strip_prefix("docker:") {
                Some(image) => Base::Docker(image.to_string()),
                None => {
                    let path = PathBuf::from(name.strip_prefix("dir:").unwrap_or(name));
                    if path.is_dir() {
                        Base::Directory(path)
                    } else {
                        Base::Tarball(PathBuf::from(name.strip_prefix("tar:").unwrap_or(name)))
                    }
                }
            },
        }
    }
}

/// Makes `tree/rel` and the missing directories above it with mode 0755,
/// whatever the umask: they belong to host root, and the workspace's root
/// passes through them as any other user.
fn passable_dir(tree: &Path, rel: &Path) -> io::Result<()> {
    let mut path = tree.to_path_buf();
    for component in rel.components() {
        path.push(component);
        match fs::create_dir(&path) {
            Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Inner {
    /// The bottom of a new workspace's stack for `base`.
    pub(super) fn base_stack(&self, base: &Base) -> Result<(Vec<LayerId>, bool), RuntimeError> {
        let (shift, range) = self.shift();
        let layer = match base {
            Base::Host => self.host_skeleton()?,
            Base::Tarball(path) => self
                .store
                .import_tarball(path, shift, range)
                .map_err(other)?,
            Base::Directory(path) => self.store.import_dir(path, shift, range).map_err(other)?,
            Base::Docker(image) => {
                let Some(exporter) = &self.exporter else {
                    return Err(RuntimeError::Unavailable {
                        runtime: NAME.into(),
                        reason: format!(
                            "image `{image}` needs a container engine to export it, and none is configured; \
                             `docker export` a container of it and give the tarball's path as the image"
                        ),
                    });
                };
                let image_id = exporter
                    .image_id(image)
                    .map_err(|e| RuntimeError::Unavailable {
                        runtime: NAME.into(),
                        reason: format!("cannot find image `{image}`: {e}"),
                    })?;
                let shift_text = format!("{shift}:{range}");
                let source = format!("image {image} {image_id}");
                self.store
                    .get_or_build(
                        LayerKind::Base,
                        &[b"image", image_id.as_bytes(), shift_text.as_bytes()],
                        &source,
                        |tree| {
                            let archive = tree.with_file_name("image.tar");
                            exporter.export(image, &archive).map_err(io::Error::other)?;
                            let file = io::BufReader::new(fs::File::open(&archive)?);
                            berth_layers::unpack_tarball(file, tree, shift, range)?;
                            fs::remove_file(&archive)
                        },
                    )
                    .map_err(other)?
            }
        };
        Ok((layer.stack(), base == &Base::Host))
    }

    /// The layer holding the mount points of the host base, and the
    /// workspace's own top-level directories owned by its root.
    fn host_skeleton(&self) -> Result<berth_layers::Layer, RuntimeError> {
        let (shift, _) = self.shift();
        let mut entries = Vec::new();
        for dir in plan::HOST_DIRS {
            let path = Path::new("/").join(dir);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&path).unwrap_or_default();
                    entries.push(format!("link {dir} {}", target.display()));
                }
                Ok(m) if m.is_dir() => entries.push(format!("dir {dir}")),
                _ => {}
            }
        }
        for bind in &self.host.binds {
            let rel = bind.strip_prefix("/").unwrap_or(bind).display().to_string();
            if bind.is_dir() {
                entries.push(format!("dir {rel}"));
            } else {
                entries.push(format!("file {rel}"));
            }
        }
        entries.sort();
        entries.dedup();
        // The version names what `make` does beyond the entries.
        let key = format!("{shift}\nv2\n{}", entries.join("\n"));
        let make = |tree: &Path| -> io::Result<()> {
            for dir in ["proc", "dev", "tmp", "sys", "etc", "run", BERTH_DIR] {
                passable_dir(tree, Path::new(dir))?;
            }
            passable_dir(tree, &Path::new(BERTH_DIR).join("run"))?;
            for entry in &entries {
                let parts: Vec<&str> = entry.splitn(3, ' ').collect();
                match parts.as_slice() {
                    ["link", name, target] => std::os::unix::fs::symlink(target, tree.join(name))?,
                    ["dir", rel] => passable_dir(tree, Path::new(rel))?,
                    ["file", rel] => {
                        if let Some(parent) = Path::new(rel).parent() {
                            passable_dir(tree, parent)?;
                        }
                        fs::File::create(tree.join(rel))?;
                    }
                    _ => {}
                }
            }
            // The workspace's root owns its home, the default workspace
            // root and the temporary directories.
            for (dir, mode) in [
                (DEFAULT_ROOT.trim_start_matches('/'), 0o755),
                ("root", 0o700),
                ("home", 0o755),
                ("tmp", 0o1777),
                ("var/tmp", 0o1777),
            ] {
                let path = tree.join(dir);
                fs::create_dir_all(&path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                std::os::unix::fs::lchown(&path, Some(shift), Some(shift))?;
            }
            Ok(())
        };
        self.store
            .get_or_build(
                LayerKind::HostSkeleton,
                &[b"host-skeleton", key.as_bytes()],
                "host",
                make,
            )
            .map_err(other)
    }
}
