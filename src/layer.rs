//! One layer directory, reached only through a directory handle: every path below is
//! resolved relative to it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so
//! nothing a layer contains can lead the daemon outside it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::sys::{self, Stat};

pub struct Layer {
    /// Where the user said the layer is (for messages).
    pub path: PathBuf,
    root: OwnedFd,
    pub dev: u64,
}

impl Layer {
    pub fn open(path: &Path) -> Result<Layer> {
        let root = std::fs::File::open(path)
            .map(OwnedFd::from)
            .context(format!("layer {}", path.display()))?;
        let st = sys::fstat(root.as_fd()).context(format!("layer {}", path.display()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Error::new(
                libc::ENOTDIR,
                format!("layer {}", path.display()),
            ));
        }
        Ok(Layer {
            path: path.to_path_buf(),
            root,
            dev: st.st_dev,
        })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// An `O_PATH` handle on the directory `rel` (empty: the layer root).
    pub fn dir(&self, rel: &Path) -> Result<OwnedFd> {
        sys::openat_beneath(self.root(), rel, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| Error::from(e).context(self.describe(rel)))
    }

    /// `lstat` of `rel`, without following a final symlink.
    pub fn stat(&self, rel: &Path) -> Result<Stat> {
        let (parent, name) = split(rel);
        match name {
            None => sys::fstat(self.root()).map_err(|e| Error::from(e).context(self.describe(rel))),
            Some(name) => {
                let dir = self.dir(parent)?;
                sys::fstatat(dir.as_fd(), name)
                    .map_err(|e| Error::from(e).context(self.describe(rel)))
            }
        }
    }

    /// Opens `rel` (not following a final symlink) with `flags`.
    pub fn open_file(&self, rel: &Path, flags: i32) -> Result<OwnedFd> {
        sys::openat_beneath(self.root(), rel, flags | libc::O_NOFOLLOW, 0)
            .map_err(|e| Error::from(e).context(self.describe(rel)))
    }

    /// "layer PATH: REL" for error messages.
    pub fn describe(&self, rel: &Path) -> String {
        format!("{}/{}", self.path.display(), rel.display())
    }
}

/// Splits a layer-relative path into its parent and final name; the root has no name.
pub fn split(rel: &Path) -> (&Path, Option<&OsStr>) {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => (parent, Some(name)),
        _ => (Path::new(""), None),
    }
}

pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}
