//! Each tenant's view of the node's artifacts: a directory per tenant holding hard links to
//! the compiled artifacts of the functions its cell has, and nothing else. The cell gets only
//! this directory (bind-mounted read-only at `/artifacts`), so it cannot open another
//! tenant's artifact even knowing its hash; hard links are the node's files themselves, so
//! their pages stay shared between the node and every cell that maps them.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tern_wire::ModuleHash;

/// One tenant's artifact directory.
#[derive(Debug)]
pub struct ArtifactView {
    /// The node's artifact directory.
    source: PathBuf,
    /// The tenant's.
    view: PathBuf,
    /// The engines' compatibility (part of artifact file names).
    compatibility: String,
    /// Which files a function has (compiled artifacts, or the baseline's module bytes).
    profile: tern_runtime::RuntimeProfile,
    /// The group of unprivileged cells: the view and its files are made readable by it (and
    /// by no one else but their owner).
    group: Option<u32>,
}

impl ArtifactView {
    /// An empty view at `view` (whatever was there goes), readable by `group` if given;
    /// removed when dropped.
    pub fn fresh(
        source: &Path,
        view: PathBuf,
        compatibility: &str,
        profile: tern_runtime::RuntimeProfile,
        group: Option<u32>,
    ) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&view) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&view)?;
        let this = Self {
            source: source.to_owned(),
            view,
            compatibility: compatibility.to_owned(),
            profile,
            group,
        };
        this.share(&this.view, 0o750)?;
        Ok(this)
    }

    /// Gives `path` to the cells' group with `mode` (nothing without a group).
    fn share(&self, path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(group) = self.group {
            std::os::unix::fs::chown(path, None, Some(group))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// The directory the cell gets.
    pub fn dir(&self) -> &Path {
        &self.view
    }

    /// The files of `hash`'s artifact: the compiled code and the digest written with it (or,
    /// under the baseline runtime profile, the module's bytes).
    fn names(&self, hash: &ModuleHash) -> Vec<String> {
        tern_runtime::function_files(hash, &self.compatibility, self.profile)
    }

    /// Puts `hash`'s artifact in the view: hard links to the node's files, or copies where
    /// the two directories are on different file systems.
    pub fn add(&self, hash: &ModuleHash) -> std::io::Result<()> {
        for name in self.names(hash) {
            let (from, to) = (self.source.join(&name), self.view.join(&name));
            match std::fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == ErrorKind::CrossesDevices => {
                    // Unique: two installs of the same version may copy at once.
                    static COPIES: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let partial = self.view.join(format!("{name}.{n}.partial"));
                    std::fs::copy(&from, &partial)?;
                    std::fs::rename(&partial, &to)?;
                }
                Err(e) => return Err(e),
            }
            // A link is the node's file itself: the node (its owner) still reads it.
            self.share(&to, 0o640)?;
        }
        Ok(())
    }

    /// Takes `hash`'s artifact out of the view (a cell that loaded it keeps its mapping).
    pub fn remove(&self, hash: &ModuleHash) {
        for name in self.names(hash) {
            let _ = std::fs::remove_file(self.view.join(name));
        }
    }
}

/// The view goes with its cell.
impl Drop for ArtifactView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.view);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_view_holds_links_to_the_artifacts_it_was_given_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("artifacts");
        std::fs::create_dir(&source).unwrap();
        let (a, b) = (ModuleHash([1; 32]), ModuleHash([2; 32]));
        let names = |h: &ModuleHash| {
            let code = tern_runtime::artifact_file_name(h, "c1");
            let digest = code.replace(".cwasm", ".sha256");
            (code, digest)
        };
        for h in [&a, &b] {
            let (code, digest) = names(h);
            std::fs::write(source.join(code), h.to_hex()).unwrap();
            std::fs::write(source.join(digest), "digest").unwrap();
        }
        let view_dir = dir.path().join("views/acme");
        std::fs::create_dir_all(&view_dir).unwrap();
        std::fs::write(view_dir.join("left-over"), "x").unwrap();
        let view = ArtifactView::fresh(
            &source,
            view_dir.clone(),
            "c1",
            tern_runtime::RuntimeProfile::Optimised,
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read_dir(&view_dir).unwrap().count(), 0);
        view.add(&a).unwrap();
        view.add(&a).unwrap();
        let (name, digest) = names(&a);
        let mut seen: Vec<_> = std::fs::read_dir(&view_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, vec![name.clone(), digest]);
        // The node's own file, not a copy: the same inode.
        assert_eq!(
            std::fs::metadata(view_dir.join(&name)).unwrap().ino(),
            std::fs::metadata(source.join(&name)).unwrap().ino()
        );
        assert!(view.add(&ModuleHash([3; 32])).is_err());
        view.remove(&a);
        assert_eq!(std::fs::read_dir(&view_dir).unwrap().count(), 0);
        drop(view);
        assert!(!view_dir.exists(), "the view goes with its cell");
    }
}
