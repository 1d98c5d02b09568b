//! The overlay: every operation on the merged tree, in terms of layers, whiteouts and
//! copy-up. It owns the node table and the namespace lock; it calls down into `layers`,
//! `stack` and `sys` and is called by `ops` (never by the FUSE transport directly).
//!
//! One file per concern, as the kernel's fs/overlayfs: `namei` (lookup), `copy_up`
//! (policy, index and data), `dir` (create, link, unlink, rmdir, rename, whiteouts),
//! `attr` (what is reported, setattr), `xattr`, `file` (open handles), `readdir` (with
//! `readahead`), `nodes` (the node table) and `mount` (set-up, statfs). This file holds the
//! `Overlay` value and how a node's object is reached (`Loc`).
//!
//! Locking: one namespace lock. Lookups and reads of the tree take it shared; anything that
//! changes names or moves objects between layers (create, unlink, rename, copy-up) takes it
//! exclusive, so a copy-up and a rename can never interleave. Data reads and writes on open
//! handles take no lock at all.

mod attr;
pub mod copy_up;
mod dir;
mod file;
pub mod handles;
mod mount;
mod namei;
pub mod nodes;
pub mod readahead;
pub mod readdir;
mod xattr;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use self::copy_up::Prepared;
use self::handles::Handles;
use self::nodes::{Tree, ROOT};
use self::readahead::ReadAhead;
use self::readdir::Listings;
use crate::error::{Error, Result};
use crate::layers::layer::{split, Layer};
use crate::layers::stack::Stack;
use crate::layers::workdir::WorkDir;
use crate::sys::{self, Stat};

/// Who asks: the caller's ids, the owner of the objects it creates (its umask comes with
/// each `create`).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What to create.
pub enum NewKind<'a> {
    Dir,
    File { flags: i32 },
    Special { rdev: u64 },
    Symlink { target: &'a OsStr },
}

/// Attribute changes of a setattr; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<sys::Timespec>,
    pub mtime: Option<sys::Timespec>,
    pub fh: Option<u64>,
}

/// Where an object's content is.
enum Loc {
    Upper(PathBuf),
    /// In the workdir index: the shared copy of a hard-linked lower inode.
    Index(OsString),
    Lower(usize, PathBuf),
    /// Unlinked while open.
    Pinned(Arc<OwnedFd>),
}

pub struct Overlay {
    pub stack: Stack,
    work: Option<WorkDir>,
    tree: RwLock<Tree>,
    pub handles: Handles,
    listings: Listings,
    readahead: ReadAhead,
    /// Counts copy-ups, so a read handle opened on a lower file notices cheaply that it
    /// may have to move on to the upper copy.
    copyups: AtomicU64,
    /// Counts changes of the namespace, so a lookup resolved under the shared lock knows
    /// whether it may still trust its answer once it holds the exclusive one.
    changes: AtomicU64,
    /// Copies of lower files' data made in the workdir before taking the namespace lock
    /// (see `prepare_copy_up`), by node, waiting for their copy-up to install them.
    prepared: parking_lot::Mutex<HashMap<u64, Prepared>>,
    /// Most nodes known since the heap was last trimmed.
    nodes_peak: std::sync::atomic::AtomicUsize,
    redirect_dir: bool,
    read_only: bool,
    volatile: bool,
    /// The daemon's effective user and group: the owner of what it creates. It never
    /// changes its credentials, so they are read once.
    own_ids: (u32, u32),
    /// Whether any layer keeps owners and modes in an override_stat xattr.
    any_override: bool,
    /// `xattr_permissions=`: the override_stat xattr owners and modes written through the
    /// mount go to, instead of the upper files' own.
    write_override: Option<&'static str>,
}

/// How many nodes must have gone since the last trim before the heap is trimmed again.
const TRIM_AFTER_FORGETTING: usize = 50_000;

fn errno(e: i32) -> Error {
    Error::from_errno(e)
}

impl Overlay {
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The exclusive namespace lock, for an operation that may change names or layers.
    fn change_tree(&self) -> parking_lot::RwLockWriteGuard<'_, Tree> {
        let guard = self.tree.write();
        self.changes.fetch_add(1, Ordering::AcqRel);
        guard
    }

    fn upper(&self) -> Result<&Layer> {
        match (&self.stack.upper, self.read_only) {
            (Some(u), false) => Ok(u),
            _ => Err(errno(libc::EROFS)),
        }
    }

    fn work(&self) -> Result<&WorkDir> {
        self.work.as_ref().ok_or_else(|| errno(libc::EROFS))
    }

    // ----- lookup and attributes -----

    fn loc(&self, tree: &Tree, id: u64) -> Result<Loc> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if let Some(idx) = node.index() {
            return Ok(Loc::Index(idx));
        }
        if node.aliases().is_empty() && id != ROOT {
            return node
                .pinned
                .clone()
                .map(Loc::Pinned)
                .ok_or_else(|| errno(libc::ENOENT));
        }
        if node.upper {
            return Ok(Loc::Upper(self.path(tree, id)?));
        }
        let lower = tree.lower_of(id).ok_or_else(|| errno(libc::ENOENT))?;
        Ok(Loc::Lower(lower.layer, lower.path))
    }

    /// Runs `f` with the directory handle and name that reach `loc` (empty name: the
    /// handle itself is the object).
    fn at_loc<T>(
        &self,
        loc: &Loc,
        f: impl FnOnce(BorrowedFd, &OsStr) -> std::io::Result<T>,
    ) -> Result<T> {
        let (layer, path) = match loc {
            Loc::Upper(p) => (
                self.stack
                    .upper
                    .as_ref()
                    .ok_or_else(|| errno(libc::EROFS))?,
                p,
            ),
            Loc::Lower(i, p) => (&*self.stack.lowers[*i], p),
            Loc::Index(idx) => return f(self.work()?.index.as_fd(), idx).map_err(Error::from),
            // An O_PATH handle cannot be chmod-ed or chown-ed: reopen the (regular, open)
            // file for real through /proc.
            Loc::Pinned(fd) => {
                let real = sys::reopen(fd.as_fd(), libc::O_RDONLY)?;
                return f(real.as_fd(), OsStr::new("")).map_err(Error::from);
            }
        };
        // "No such xattr" and "buffer too small" answer what was asked; they are not
        // failures to explain, and building the context would cost every such answer.
        let located = |e: std::io::Error| match e.raw_os_error() {
            Some(libc::ENODATA | libc::ERANGE) => Error::from(e),
            _ => Error::from(e).context(layer.describe(path)),
        };
        match split(path) {
            (_, None) => f(layer.root(), OsStr::new("")).map_err(located),
            (parent, Some(name)) => {
                let dir = layer.dir(parent)?;
                f(dir.as_fd(), name).map_err(located)
            }
        }
    }

    fn open_loc(&self, loc: &Loc, flags: i32) -> Result<OwnedFd> {
        match loc {
            Loc::Pinned(fd) => sys::reopen(fd.as_fd(), flags).map_err(Error::from),
            _ => self.at_loc(loc, |dir, name| {
                if name.is_empty() {
                    sys::reopen(dir, flags)
                } else {
                    sys::openat(dir, name, flags | libc::O_NOFOLLOW, 0)
                }
            }),
        }
    }

    fn stat_loc(&self, loc: &Loc) -> Result<Stat> {
        self.at_loc(loc, |dir, name| {
            if name.is_empty() {
                sys::fstat(dir)
            } else {
                sys::fstatat(dir, name)
            }
        })
    }

    // ----- copy-up -----

    // ----- creating -----

    // ----- removing -----

    // ----- rename -----

    // ----- attributes -----

    // ----- xattrs -----

    // ----- files -----

    // ----- directories -----

    /// Nodes currently known (for tests and memory accounting).
    pub fn node_count(&self) -> usize {
        self.tree.read().len()
    }
}
