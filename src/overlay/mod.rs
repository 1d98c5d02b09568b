//! The overlay: the stack of layers, the node table and every operation on the merged
//! tree, in terms of layers, whiteouts and copy-up. `fs.rs` only translates FUSE requests
//! onto these methods.
//!
//! Locking: one namespace lock. Lookups and reads of the tree take it shared; anything that
//! changes names or moves objects between layers (create, unlink, rename, copy-up) takes it
//! exclusive, so a copy-up and a rename can never interleave. Data reads and writes on open
//! handles take no lock at all.

pub mod copy_up;
pub mod handles;
pub mod nodes;
pub mod readahead;
pub mod readdir;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use self::copy_up::WorkDir;
use self::handles::{Handles, OpenFile};
use self::nodes::{
    index_name, LowerRef, Node, Tree, ROOT, XATTRS_NONE, XATTRS_SOME, XATTRS_UNKNOWN,
};
use self::readahead::ReadAhead;
use self::readdir::{DirEntry, Listing, Listings};
use crate::acl;
use crate::config::{Config, WhiteoutMode};
use crate::error::{Context, Error, Result};
use crate::layer::{split, Layer};
use crate::layers::redirect::{self, Redirect};
use crate::stack::{Found, Stack};
use crate::sys::{self, Stat};
use crate::whiteout::{self, Encoding, XattrNs};

/// Who asks: the caller's ids and umask, for objects it creates.
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

/// A lower file's copy in the workdir, made without the namespace lock.
struct Prepared {
    /// Its temporary name in the workdir.
    tmp: OsString,
    /// The lower file it copies: used only while the node still has that lower place.
    from: LowerRef,
}

/// Removes a prepared copy its operation did not use (it failed, or someone else copied
/// the node up first).
pub struct PreparedCopy<'a> {
    overlay: &'a Overlay,
    id: Option<u64>,
}

impl Drop for PreparedCopy<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let left = self.overlay.prepared.lock().remove(&id);
        if let (Some(p), Some(work)) = (left, self.overlay.work.as_ref()) {
            let _ = copy_up::remove_tree(work.temp(), &p.tmp);
        }
    }
}

impl Overlay {
    pub fn new(config: &Config) -> Result<Overlay> {
        let lowers = config
            .lowers
            .iter()
            .map(|p| Layer::open_immutable(p).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        if lowers.is_empty() {
            return Err(Error::usage(
                "no lowerdir given: pass -o lowerdir=DIR[:DIR...]",
            ));
        }
        let mut upper = config.upper.as_deref().map(Layer::open).transpose()?;
        let write_override = match config.xattr_permissions {
            1 => Some(whiteout::OVERRIDE_STAT_XATTRS[0]),
            2 => Some(whiteout::OVERRIDE_STAT_XATTRS[2]),
            _ => None,
        };
        if let (Some(u), Some(attr)) = (upper.as_mut(), write_override) {
            mark_override_layer(u, attr)?;
        }
        let work_layer = config.work.as_deref().map(Layer::open).transpose()?;
        let read_only = config.read_only || upper.is_none();
        let work = match (&upper, &work_layer) {
            (Some(_), Some(w)) => Some(WorkDir::open(w.root(), !config.volatile)?),
            (Some(_), None) => {
                return Err(Error::usage(
                    "upperdir needs a workdir: add -o workdir=DIR on the upper's filesystem",
                ))
            }
            _ => None,
        };
        let (whiteout, xattr_ns) = match &work {
            Some(w) => (probe_whiteout(w, config.whiteout)?, probe_xattr_ns(w)),
            None => (Encoding::File, XattrNs::User),
        };
        log::debug!("whiteouts as {whiteout:?}, overlay xattrs in {xattr_ns:?}");
        let shared_dev = shared_dev(upper.iter().chain(lowers.iter().map(|l| &**l)))?;
        let readahead = ReadAhead::start(if config.readahead {
            lowers.clone()
        } else {
            Vec::new()
        });
        let stack = Stack {
            upper,
            work: work_layer,
            lowers,
            xattr_ns,
            whiteout,
            shared_dev,
            refused: Default::default(),
        };
        let any_override = stack.upper.iter().any(|u| u.stat_override.is_some())
            || stack.lowers.iter().any(|l| l.stat_override.is_some());
        let mut root = Node::new(libc::S_IFDIR, ROOT);
        root.upper = stack.upper.is_some();
        root.lower_dirs = stack.root_lowers().into_boxed_slice();
        Ok(Overlay {
            stack,
            work,
            tree: RwLock::new(Tree::new(root)),
            handles: Handles::default(),
            listings: Listings::default(),
            readahead,
            copyups: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            prepared: parking_lot::Mutex::new(HashMap::new()),
            nodes_peak: std::sync::atomic::AtomicUsize::new(0),
            redirect_dir: config.redirect_dir,
            read_only,
            volatile: config.volatile,
            own_ids: (sys::process::geteuid(), sys::process::getegid()),
            any_override,
            write_override: write_override.filter(|_| !read_only),
        })
    }

    /// The attributes the mount reports for node `id` once its layer's override_stat
    /// xattr (fuse-overlayfs's, see `whiteout::OverrideStat`) has its say: only in a
    /// layer that keeps one, and, as in fuse-overlayfs, only for directories and regular
    /// files (the only objects `user.*` xattrs can be set on).
    fn overridden(&self, tree: &Tree, id: u64, mut st: Stat) -> Stat {
        let fmt = st.st_mode & libc::S_IFMT;
        if !self.any_override || (fmt != libc::S_IFREG && fmt != libc::S_IFDIR) {
            return st;
        }
        let Ok(loc) = self.loc(tree, id) else {
            return st;
        };
        let layer = match &loc {
            Loc::Lower(i, _) => Some(&*self.stack.lowers[*i]),
            _ => self.stack.upper.as_ref(),
        };
        let Some(attr) = layer.and_then(|l| l.stat_override) else {
            return st;
        };
        match self.at_loc(&loc, |dir, name| sys::getxattr(dir, name, OsStr::new(attr))) {
            Ok(v) => match whiteout::OverrideStat::parse(&v) {
                Some(o) => o.apply(&mut st),
                None => log::debug!(
                    "node {id}: malformed {attr} {:?}; reporting the file's own owner and mode",
                    String::from_utf8_lossy(&v)
                ),
            },
            Err(e) if e.errno() == libc::ENODATA => {}
            Err(e) => log::debug!("node {id}: {attr}: {e}"),
        }
        st
    }

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

    /// Looks `name` up in `parent` and counts a lookup of the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(u64, Stat)> {
        let (found, seen) = {
            let tree = self.tree.read();
            let seen = self.changes.load(Ordering::Acquire);
            if let Some(id) = tree.child(parent, name) {
                let st = self.stat_node(&tree, id)?;
                tree.count_lookup(id);
                return Ok((id, st));
            }
            (self.resolve_child(&tree, parent, name)?, seen)
        };
        let mut tree = self.tree.write();
        // The directory may have changed while no lock was held: trust only what is
        // looked up under the exclusive lock.
        let found = match tree.child(parent, name) {
            Some(id) => {
                let st = self.stat_node(&tree, id)?;
                tree.count_lookup(id);
                return Ok((id, st));
            }
            None if self.changes.load(Ordering::Acquire) == seen => found,
            None => self.resolve_child(&tree, parent, name)?,
        };
        let found = found.ok_or_else(|| errno(libc::ENOENT))?;
        let st = found.stat;
        let id = self.insert_found(&mut tree, parent, name, found, true);
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        // A fresh node's stat is the one lookup just took; a second name of a known inode
        // (or its index copy) is stated where its data is.
        let st = if node.aliases().len() == 1 && !node.indexed {
            let st = self.adjust_stat(node, st);
            self.overridden(&tree, id, st)
        } else {
            self.stat_node(&tree, id)?
        };
        Ok((id, st))
    }

    /// The node of `name` in `parent`, creating it (uncounted) if the kernel has not
    /// looked it up. `None` when the name does not exist.
    fn child(&self, tree: &mut Tree, parent: u64, name: &OsStr) -> Result<Option<u64>> {
        if let Some(id) = tree.child(parent, name) {
            return Ok(Some(id));
        }
        match self.resolve_child(tree, parent, name)? {
            Some(found) => Ok(Some(self.insert_found(tree, parent, name, found, false))),
            None => Ok(None),
        }
    }

    fn insert_found(
        &self,
        tree: &mut Tree,
        parent: u64,
        name: &OsStr,
        found: Found,
        counted: bool,
    ) -> u64 {
        let mut node = Node::new(found.kind(), found.st_ino);
        node.upper = found.upper;
        if node.kind != libc::S_IFDIR {
            node.lower_layer = found.lower.and_then(|l| u16::try_from(l.layer).ok());
            node.single_lower_link = !found.upper && found.stat.st_nlink == 1;
        }
        node.lower_dirs = found.lower_dirs.into_boxed_slice();
        // A name of a hard-linked lower inode, in either layer, shares the index entry once
        // one exists (the reported inode number names it).
        if let Some(work) = &self.work {
            if node.kind != libc::S_IFDIR && found.stat.st_nlink > 1 {
                let idx = index_name(found.st_ino);
                node.indexed = sys::fstatat(work.index.as_fd(), &idx).is_ok();
            }
        }
        tree.insert(parent, name, node, found.stat.st_nlink, counted)
    }

    fn resolve_child(&self, tree: &Tree, parent: u64, name: &OsStr) -> Result<Option<Found>> {
        let pnode = tree.get(parent).ok_or_else(|| errno(libc::ENOENT))?;
        if !pnode.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let upper_path = if pnode.upper {
            Some(self.path(tree, parent)?)
        } else {
            None
        };
        self.stack
            .resolve(upper_path.as_deref(), &pnode.lower_dirs, name)
    }

    /// Whether any lower layer below `parent` still shows `name` (so removing it from the
    /// upper layer needs a whiteout).
    fn lower_has(&self, tree: &Tree, parent: u64, name: &OsStr) -> Result<bool> {
        let pnode = tree.get(parent).ok_or_else(|| errno(libc::ENOENT))?;
        Ok(self.stack.resolve(None, &pnode.lower_dirs, name)?.is_some())
    }

    /// Whether the merged directory `id` lists no entry (rmdir's and rename's ENOTEMPTY).
    fn merged_dir_is_empty(&self, tree: &Tree, id: u64) -> Result<bool> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        let upath = if node.upper {
            Some(self.path(tree, id)?)
        } else {
            None
        };
        readdir::is_empty(&self.stack, upath.as_deref(), &node.lower_dirs)
    }

    fn path(&self, tree: &Tree, id: u64) -> Result<PathBuf> {
        tree.path(id).ok_or_else(|| errno(libc::ENOENT))
    }

    pub fn generation(&self, id: u64) -> u64 {
        self.tree
            .read()
            .get(id)
            .map_or(0, |n| u64::from(n.generation))
    }

    pub fn forget(&self, id: u64, n: u64) {
        let mut tree = self.tree.write();
        let gone = tree.forget(id, n);
        // After the kernel dropped many nodes, give their memory back.
        let len = tree.len();
        drop(tree);
        // Outside the lock: this may close the last handle of an unlinked file.
        drop(gone);
        let peak = self.nodes_peak.fetch_max(len, Ordering::Relaxed).max(len);
        if peak >= len + TRIM_AFTER_FORGETTING {
            self.nodes_peak.store(len, Ordering::Relaxed);
            self.tree.write().shrink();
            // Kept listings are only a cache (their positions are the same when retaken);
            // left in place, they pin the pages the forgotten nodes freed.
            self.listings.clear();
            sys::trim_heap();
        }
    }

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

    fn stat_node(&self, tree: &Tree, id: u64) -> Result<Stat> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        let st = self.stat_loc(&self.loc(tree, id)?)?;
        Ok(self.overridden(tree, id, self.adjust_stat(node, st)))
    }

    /// What the mount reports for `node` from the stat of its layer object.
    fn adjust_stat(&self, node: &Node, mut st: Stat) -> Stat {
        st.st_ino = node.st_ino;
        if node.is_dir() {
            // A merged directory's link count cannot be known without listing every layer;
            // 1 tells find and friends not to rely on it, as kernel overlayfs does.
            let merged = usize::from(node.upper) + node.lower_dirs.len() > 1;
            if merged {
                st.st_nlink = 1;
            }
        } else if let Some(idx) = node.index() {
            st.st_nlink = self
                .index_nlink(&idx)
                .map(u64::from)
                .unwrap_or(st.st_nlink.saturating_sub(1));
        }
        st
    }

    pub fn getattr(&self, id: u64, fh: Option<u64>) -> Result<Stat> {
        if let Some(f) = fh.and_then(|fh| self.handles.file(fh)) {
            if !f.on_lower {
                let mut st = sys::fstat(f.fd().as_fd())?;
                let tree = self.tree.read();
                if let Some(node) = tree.get(id) {
                    st.st_ino = node.st_ino;
                    if node.indexed {
                        return self.stat_node(&tree, id);
                    }
                }
                return Ok(st);
            }
        }
        let tree = self.tree.read();
        self.stat_node(&tree, id)
    }

    pub fn readlink(&self, id: u64) -> Result<OsString> {
        let tree = self.tree.read();
        self.at_loc(&self.loc(&tree, id)?, sys::readlinkat)
    }

    // ----- copy-up -----

    /// A lower place's directory, its name there, and what it is.
    fn lower_entry<'p>(&self, lower: &'p LowerRef) -> Result<(Arc<OwnedFd>, &'p OsStr, Stat)> {
        let layer = &self.stack.lowers[lower.layer];
        let (lparent, lname) = split(&lower.path);
        let lname = lname.ok_or_else(|| errno(libc::EINVAL))?;
        let ldir = layer.dir(lparent)?;
        let st = sys::fstatat(ldir.as_fd(), lname).context(layer.describe(&lower.path))?;
        Ok((ldir, lname, st))
    }

    /// Copies the lower entry `(dir, name, stat)` found at `lower` into `work/work`, as the
    /// object reported with inode number `st_ino`; returns its temporary name.
    fn copy_to_work(
        &self,
        work: &WorkDir,
        lower: &LowerRef,
        (dir, name, stat): &(Arc<OwnedFd>, &OsStr, Stat),
        st_ino: u64,
    ) -> Result<OsString> {
        let src = copy_up::Source {
            dir: dir.as_fd(),
            name,
            stat,
        };
        work.prepare(&src, Some((self.stack.xattr_ns.ino(), st_ino)))
            .map_err(|e| {
                let layer = &self.stack.lowers[lower.layer];
                e.context(format!("copy-up of {}", layer.describe(&lower.path)))
            })
    }

    /// Copies the data of `id`, a regular file still only in a lower layer, into the
    /// workdir before the caller takes the namespace lock, so the copy (seconds for a large
    /// file) holds up no other request; `copy_up` then only moves it into place. A file
    /// with several lower links, or anything else, is left to `copy_up`. Failures here are
    /// left to `copy_up` too, which tries again and reports them.
    fn prepare_copy_up(&self, id: u64) -> PreparedCopy<'_> {
        let mut guard = PreparedCopy {
            overlay: self,
            id: None,
        };
        let (Ok(_), Some(work)) = (self.upper(), self.work.as_ref()) else {
            return guard;
        };
        let (lower, st_ino) = {
            let tree = self.tree.read();
            let Some(node) = tree.get(id) else {
                return guard;
            };
            if node.is_dir() || node.upper || node.indexed || node.kind != libc::S_IFREG {
                return guard;
            }
            let Some(lower) = tree.lower_of(id) else {
                return guard;
            };
            (lower, node.st_ino)
        };
        if self.prepared.lock().contains_key(&id) {
            return guard;
        }
        let Ok(entry) = self.lower_entry(&lower) else {
            return guard;
        };
        if entry.2.st_mode & libc::S_IFMT != libc::S_IFREG || entry.2.st_nlink > 1 {
            return guard;
        }
        let Ok(tmp) = self.copy_to_work(work, &lower, &entry, st_ino) else {
            return guard;
        };
        let mut prepared = self.prepared.lock();
        if prepared.contains_key(&id) {
            // Another request prepared one meanwhile; it will be used.
            drop(prepared);
            let _ = copy_up::remove_tree(work.temp(), &tmp);
            return guard;
        }
        prepared.insert(id, Prepared { tmp, from: lower });
        guard.id = Some(id);
        guard
    }

    /// Makes `id` exist in the upper layer, copying its parents first, outermost first.
    /// A loop, not a recursion: the depth is the layers' (a lower file 3,000 directories
    /// deep once overflowed a worker's stack and aborted the daemon).
    fn copy_up(&self, tree: &mut Tree, id: u64) -> Result<()> {
        let mut missing = Vec::new();
        let mut cur = id;
        loop {
            let node = tree.get(cur).ok_or_else(|| errno(libc::ENOENT))?;
            if node.upper && !node.indexed {
                break;
            }
            missing.push(cur);
            match node.aliases().first() {
                Some(&(parent, _)) => cur = parent,
                None => break,
            }
        }
        for id in missing.into_iter().rev() {
            self.copy_up_one(tree, id)?;
        }
        Ok(())
    }

    /// Copies `id` itself up; its parent is already in the upper layer.
    fn copy_up_one(&self, tree: &mut Tree, id: u64) -> Result<()> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if node.upper && !node.indexed {
            return Ok(());
        }
        let named = !node.aliases().is_empty();
        let upper = self.upper()?;
        let work = self.work()?;
        if let Some(idx) = self.ensure_index(tree, id)? {
            // A hard-linked lower inode: its copy is the index entry, and every name of it
            // the kernel knows becomes a link to that in upper, so each name's change is
            // in the upper layer for tools that read it (layerctl commit).
            let aliases = tree
                .get(id)
                .map(|n| n.aliases().to_vec())
                .unwrap_or_default();
            for (parent, name) in aliases {
                let pdir = self.upper_dir(tree, parent)?;
                let present = matches!(sys::fstatat(pdir.as_fd(), &name), Ok(st) if !whiteout::is_chardev_whiteout(&st));
                if !present {
                    sys::linkat(work.index.as_fd(), &idx, pdir.as_fd(), &name).context(format!(
                        "linking {} from the workdir index",
                        name.to_string_lossy()
                    ))?;
                }
            }
            if let Some(n) = tree.get_mut(id) {
                n.upper = true;
            }
            self.copyups.fetch_add(1, Ordering::Release);
            return Ok(());
        }
        if !named {
            return Err(errno(libc::ENOENT));
        }
        let path = self.path(tree, id)?;
        let (ppath, name) = split(&path);
        let name = name.ok_or_else(|| errno(libc::EINVAL))?;
        let updir = upper.dir(ppath)?;
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        let lower = tree.lower_of(id).ok_or_else(|| errno(libc::ENOENT))?;
        let prepared = self.prepared.lock().remove(&id).filter(|p| p.from == lower);
        let tmp = match prepared {
            Some(p) => p.tmp,
            None => {
                let entry = self.lower_entry(&lower)?;
                self.copy_to_work(work, &lower, &entry, node.st_ino)?
            }
        };
        work.install(&tmp, updir.as_fd(), name)
            .context(format!("copy-up to {}", upper.describe(&path)))?;
        if let Some(n) = tree.get_mut(id) {
            n.upper = true;
        }
        self.copyups.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// For a file whose lower inode has several names: makes sure its copy exists in the
    /// workdir index (the one inode all its names share once copied up) and returns the
    /// index entry's name; `None` for anything else.
    fn ensure_index(&self, tree: &mut Tree, id: u64) -> Result<Option<OsString>> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if let Some(idx) = node.index() {
            return Ok(Some(idx));
        }
        if node.single_lower_link {
            return Ok(None);
        }
        let Some(lower) = tree.lower_of(id).filter(|_| !node.is_dir()) else {
            return Ok(None);
        };
        let entry = self.lower_entry(&lower)?;
        if entry.2.st_nlink <= 1 {
            return Ok(None);
        }
        let work = self.work()?;
        let tmp = self.copy_to_work(work, &lower, &entry, node.st_ino)?;
        let nlink = (entry.2.st_nlink as u32).to_le_bytes();
        sys::setxattr(
            work.temp(),
            &tmp,
            OsStr::new(self.stack.xattr_ns.nlink()),
            &nlink,
            0,
        )?;
        let idx = index_name(node.st_ino);
        sys::linkat(work.temp(), &tmp, work.index.as_fd(), &idx).context("workdir index")?;
        sys::unlinkat(work.temp(), &tmp, false)?;
        if let Some(n) = tree.get_mut(id) {
            n.indexed = true;
        }
        Ok(Some(idx))
    }

    /// The merged link count of an indexed hard link, as recorded on its index entry.
    fn index_nlink(&self, idx: &OsStr) -> Option<u32> {
        let v = sys::getxattr(
            self.work.as_ref()?.index.as_fd(),
            idx,
            OsStr::new(self.stack.xattr_ns.nlink()),
        )
        .ok()?;
        Some(u32::from_le_bytes(v.try_into().ok()?))
    }

    /// Adds `delta` to the recorded merged link count of node `id` if it is an indexed
    /// hard link.
    fn adjust_index_nlink(&self, tree: &Tree, id: u64, delta: i32) -> Result<()> {
        let Some(idx) = tree.get(id).and_then(|n| n.index()) else {
            return Ok(());
        };
        let work = self.work()?;
        let cur = self.index_nlink(&idx).unwrap_or(1);
        let new = (cur as i64 + delta as i64).max(0) as u32;
        sys::setxattr(
            work.index.as_fd(),
            &idx,
            OsStr::new(self.stack.xattr_ns.nlink()),
            &new.to_le_bytes(),
            0,
        )?;
        Ok(())
    }

    /// The upper directory handle of directory `id`, copying it up first.
    fn upper_dir(&self, tree: &mut Tree, id: u64) -> Result<Arc<OwnedFd>> {
        self.copy_up(tree, id)?;
        let path = self.path(tree, id)?;
        self.upper()?.dir(&path)
    }

    // ----- creating -----

    /// Creates `name` in `parent`; for files also returns the open fd.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        kind: NewKind,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(u64, Stat, Option<OwnedFd>)> {
        let upper = self.upper()?;
        let work = self.work()?;
        check_new_name(name)?;
        let mut tree = self.change_tree();
        if tree.child(parent, name).is_some() {
            return Err(errno(libc::EEXIST));
        }
        // The name is taken if the upper layer has it, or a lower layer does and no
        // whiteout in the upper layer deletes it. A lower layer is asked first (its cached
        // listing needs no syscall), so that a taken name never copies the parent up.
        let parent_in_upper = tree.get(parent).is_some_and(|p| p.upper);
        if !parent_in_upper && self.lower_has(&tree, parent, name)? {
            return Err(errno(libc::EEXIST));
        }
        let pdir = self.upper_dir(&mut tree, parent)?;
        let whiteout_here = match sys::fstatat(pdir.as_fd(), name) {
            Ok(st) if whiteout::is_chardev_whiteout(&st) => true,
            Ok(_) => return Err(errno(libc::EEXIST)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                whiteout::has_whiteout_file(pdir.as_fd(), name)
            }
            Err(e) => return Err(e.into()),
        };
        if parent_in_upper && !whiteout_here && self.lower_has(&tree, parent, name)? {
            return Err(errno(libc::EEXIST));
        }
        let pst = sys::fstat(pdir.as_fd())?;
        // New objects take the group of a setgid directory, and directories inherit the bit.
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            caller.gid
        };
        let is_link = matches!(kind, NewKind::Symlink { .. });
        let default_acl = if is_link {
            None
        } else {
            default_acl(pdir.as_fd())?
        };
        // Under a default ACL the umask does not apply: the ACL limits the mode instead
        // (the kernel leaves the umask to the filesystem once it handles ACLs).
        let mut perm = match default_acl
            .as_deref()
            .and_then(|a| acl::inherited_mode(a, mode))
        {
            Some(m) => m & 0o7777,
            None => mode & 0o7777 & !umask,
        };
        let fmt = match kind {
            NewKind::Dir => {
                if pst.st_mode & libc::S_ISGID != 0 {
                    perm |= libc::S_ISGID;
                }
                libc::S_IFDIR
            }
            NewKind::File { .. } => libc::S_IFREG,
            NewKind::Special { .. } => mode & libc::S_IFMT,
            NewKind::Symlink { .. } => libc::S_IFLNK,
        };
        let opaque =
            fmt == libc::S_IFDIR && whiteout_here && self.lower_has(&tree, parent, name)?;
        // Without a whiteout in the way the object is made in place; over one it is built
        // in the workdir and swapped in, so the deleted lower entry never shows through.
        let (dir, tmp) = if whiteout_here {
            (work.temp(), work.temp_name())
        } else {
            (pdir.as_fd(), name.to_os_string())
        };
        // The daemon makes the object as its own user, with its own group or a setgid
        // parent's. When that owner is already the caller's and nothing else is to be
        // applied, the object is made with its final mode (the daemon's umask is 0) and
        // needs no chown or chmod: two syscalls less per create. Otherwise it is made
        // private (0600/0700) and handed over after, so that nobody else can open it in
        // between.
        let (own_uid, own_gid) = self.own_ids;
        let made_gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            own_gid
        };
        let setid = if fmt == libc::S_IFDIR {
            0
        } else {
            perm & (libc::S_ISUID | libc::S_ISGID)
        };
        // Under xattr_permissions= a directory's or file's owner and mode go to its
        // override_stat xattr (fuse-overlayfs's way), and the object keeps the daemon's.
        let override_attr = self
            .write_override
            .filter(|_| fmt == libc::S_IFDIR || fmt == libc::S_IFREG);
        let at_once = !whiteout_here
            && override_attr.is_none()
            && default_acl.is_none()
            && setid == 0
            && caller.uid == own_uid
            && gid == made_gid;
        let fd = make_object(dir, &tmp, &kind, fmt, at_once.then_some(perm))?;
        let finish = || -> Result<()> {
            match override_attr {
                Some(attr) => {
                    let value = whiteout::OverrideStat::format(caller.uid, gid, fmt | perm);
                    sys::setxattr(dir, &tmp, OsStr::new(attr), value.as_bytes(), 0)?;
                }
                None => sys::fchownat(dir, &tmp, caller.uid, gid)?,
            }
            if let (Some(acl), true) = (&default_acl, whiteout_here) {
                // Made in the workdir, the object inherited nothing: give it what the
                // parent's default ACL passes on (the chmod below then narrows the access
                // ACL to the new mode, as creation would have).
                sys::setxattr(dir, &tmp, acl::access(), acl, 0)?;
                if fmt == libc::S_IFDIR {
                    sys::setxattr(dir, &tmp, acl::default(), acl, 0)?;
                }
            }
            if !is_link {
                // Made in place under a default ACL, the object inherited it narrowed to
                // the creation mode above; this chmod also sets its owner, mask and other
                // entries to what creating it with `mode` would have.
                sys::fchmodat(dir, &tmp, perm)?;
            }
            if opaque {
                whiteout::set_opaque(dir, &tmp, self.stack.xattr_ns)?;
            }
            if whiteout_here {
                replace_whiteout(work, &tmp, pdir.as_fd(), name, fmt == libc::S_IFDIR)?;
            }
            Ok(())
        };
        let made = (|| -> Result<Stat> {
            if at_once {
                // Made at once (in place: no whiteout), the object is still handed over if
                // it did not come out as expected (a filesystem that places owners its own
                // way).
                let st = sys::fstatat(pdir.as_fd(), name)?;
                let mode_ok = is_link || st.st_mode & 0o7777 == perm;
                if st.st_uid == caller.uid && st.st_gid == gid && mode_ok {
                    return Ok(st);
                }
            }
            finish()?;
            Ok(sys::fstatat(pdir.as_fd(), name)?)
        })();
        let st = match made {
            Ok(st) => st,
            Err(e) => {
                let _ = copy_up::remove_tree(dir, &tmp);
                return Err(e.context(upper.describe(&self.path(&tree, parent)?.join(name))));
            }
        };
        let mut node = Node::new(fmt, self.stack.ino(0, &st));
        node.upper = true;
        // A new object is in the upper layer alone: what the mount reports follows from
        // this stat without another one.
        let mut st = self.adjust_stat(&node, st);
        if override_attr.is_some() {
            whiteout::OverrideStat {
                uid: caller.uid,
                gid,
                perm,
                kind: None,
            }
            .apply(&mut st);
        }
        let id = tree.insert(parent, name, node, st.st_nlink, true);
        Ok((id, st, fd))
    }

    /// A new name `newname` in `newparent` for the non-directory `id`.
    pub fn link(&self, id: u64, newparent: u64, newname: &OsStr) -> Result<(u64, Stat)> {
        self.upper()?;
        let work = self.work()?;
        check_new_name(newname)?;
        let mut tree = self.change_tree();
        if tree.get(id).ok_or_else(|| errno(libc::ENOENT))?.is_dir() {
            return Err(errno(libc::EPERM));
        }
        if self.child(&mut tree, newparent, newname)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        self.copy_up(&mut tree, id)?;
        let ndir = self.upper_dir(&mut tree, newparent)?;
        let src = self.loc(&tree, id)?;
        let whiteout_here = has_whiteout(ndir.as_fd(), newname);
        let (dir, tmp) = if whiteout_here {
            (work.temp(), work.temp_name())
        } else {
            (ndir.as_fd(), newname.to_os_string())
        };
        self.at_loc(&src, |sdir, sname| sys::linkat(sdir, sname, dir, &tmp))?;
        if whiteout_here {
            replace_whiteout(work, &tmp, ndir.as_fd(), newname, false)?;
        }
        self.adjust_index_nlink(&tree, id, 1)?;
        tree.add_lookup(id, newparent, newname);
        let st = self.stat_node(&tree, id)?;
        Ok((id, st))
    }

    // ----- removing -----

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        self.upper()?;
        let mut tree = self.change_tree();
        let id = self
            .child(&mut tree, parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        match (dir, node.is_dir()) {
            (false, true) => return Err(errno(libc::EISDIR)),
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (true, true) if !self.merged_dir_is_empty(&tree, id)? => {
                return Err(errno(libc::ENOTEMPTY));
            }
            _ => {}
        }
        // An object found in a lower layer alone is there by definition; one in the upper
        // layer may hide a lower one of the same name.
        let need_whiteout = !node.upper || self.lower_has(&tree, parent, name)?;
        self.check_whiteout_fits(name, need_whiteout)?;
        let pdir = self.upper_dir(&mut tree, parent)?;
        // The other names of a hard-linked lower inode must see the link count drop.
        self.ensure_index(&mut tree, id)?;
        self.pin_if_last_name(&mut tree, id)?;
        // A node in the upper layer that is not an indexed hard link has every one of its
        // names there (copy-up, link and rename keep it so), and one that is in neither
        // has none there (an upper object would have been found first): no need to look.
        // An indexed node may have names the kernel found only in a lower layer.
        let known_present = tree.get(id).and_then(|n| match (n.upper, n.indexed) {
            (present, false) => Some(present),
            (_, true) => None,
        });
        self.remove_upper_name(pdir.as_fd(), name, dir, need_whiteout, known_present)?;
        if dir {
            let gone = self.path(&tree, parent)?.join(name);
            self.upper()?.forget_dirs_under(&gone);
        }
        self.adjust_index_nlink(&tree, id, -1)?;
        tree.remove_name(parent, name);
        forget_upper_if_gone(&mut tree, id);
        Ok(())
    }

    /// A `.wh.NAME` whiteout needs four bytes more than the name: a deletion that cannot be
    /// recorded is refused before anything changes.
    fn check_whiteout_fits(&self, name: &OsStr, need_whiteout: bool) -> Result<()> {
        let max = libc::NAME_MAX as usize - whiteout::WHITEOUT_PREFIX.len();
        if need_whiteout && self.stack.whiteout == Encoding::File && name.len() > max {
            return Err(Error::new(
                libc::ENAMETOOLONG,
                format!("{}: no room for its .wh. whiteout", name.to_string_lossy()),
            ));
        }
        Ok(())
    }

    /// Removes whatever the upper layer has at `name` and leaves a whiteout there when a
    /// lower layer still has the name; with the char-device encoding the two happen in one
    /// rename, so the lower entry never shows through. `known_present`: whether the upper
    /// layer has an object (not a whiteout) at `name`, when the caller knows; else it is
    /// looked up.
    fn remove_upper_name(
        &self,
        pdir: BorrowedFd,
        name: &OsStr,
        is_dir: bool,
        need_whiteout: bool,
        known_present: Option<bool>,
    ) -> Result<()> {
        let work = self.work()?;
        let present = known_present.unwrap_or_else(
            || matches!(sys::fstatat(pdir, name), Ok(st) if !whiteout::is_chardev_whiteout(&st)),
        );
        if present && is_dir {
            let sub = sys::openat(
                pdir,
                name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            // Only whiteouts and markers are left in a directory that lists as empty.
            copy_up::remove_contents(sub.as_fd())?;
        }
        match (present, need_whiteout, self.stack.whiteout) {
            (true, true, Encoding::CharDev) => {
                let tmp = work.temp_name();
                work.make_chardev_whiteout(work.temp(), &tmp)?;
                if is_dir {
                    sys::renameat2(work.temp(), &tmp, pdir, name, sys::RENAME_EXCHANGE)?;
                    sys::unlinkat(work.temp(), &tmp, true)?;
                } else {
                    sys::renameat2(work.temp(), &tmp, pdir, name, 0)?;
                }
            }
            (true, true, Encoding::File) => {
                sys::unlinkat(pdir, name, is_dir)?;
                whiteout::make_whiteout(pdir, name, Encoding::File)?;
            }
            (true, false, _) => sys::unlinkat(pdir, name, is_dir)?,
            (false, true, enc) => self.make_whiteout(pdir, name, enc)?,
            (false, false, _) => {}
        }
        Ok(())
    }

    /// A whiteout for `name` in `dir` in `encoding`; char devices link to the workdir's
    /// shared whiteout.
    fn make_whiteout(&self, dir: BorrowedFd, name: &OsStr, encoding: Encoding) -> Result<()> {
        match encoding {
            Encoding::CharDev => Ok(self.work()?.make_chardev_whiteout(dir, name)?),
            Encoding::File => Ok(whiteout::make_whiteout(dir, name, encoding)?),
        }
    }

    /// Before the last name of an object goes while the kernel still knows its node, keeps
    /// a handle on it until the kernel forgets the node. The handle keeps the inode, so an
    /// open file stays fstat-able, and, since node ids are inode numbers, the layer's
    /// filesystem cannot hand the same number to a new object while the kernel still
    /// holds the old one (it would take the new object for the old, stale, inode).
    fn pin_if_last_name(&self, tree: &mut Tree, id: u64) -> Result<()> {
        let Some(node) = tree.get(id) else {
            return Ok(());
        };
        if node.aliases().len() > 1 || node.lookups() == 0 || node.pinned.is_some() {
            return Ok(());
        }
        let fd = self.open_loc(&self.loc(tree, id)?, libc::O_PATH)?;
        if let Some(n) = tree.get_mut(id) {
            n.pinned = Some(Arc::new(fd));
        }
        Ok(())
    }

    // ----- rename -----

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.upper()?;
        check_new_name(newname)?;
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        let noreplace = flags & sys::RENAME_NOREPLACE != 0;
        if flags & !(sys::RENAME_EXCHANGE | sys::RENAME_NOREPLACE) != 0 {
            return Err(errno(libc::EINVAL));
        }
        let mut tree = self.change_tree();
        let src = self
            .child(&mut tree, parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let dst = self.child(&mut tree, newparent, newname)?;
        if src == ROOT {
            return Err(errno(libc::EBUSY));
        }
        let src_dir = tree.get(src).map(|n| n.is_dir()).unwrap_or(false);
        if let Some(dst) = dst {
            if noreplace {
                return Err(errno(libc::EEXIST));
            }
            if dst == src {
                return Ok(());
            }
            let dnode = tree.get(dst).ok_or_else(|| errno(libc::ENOENT))?;
            if !exchange {
                match (src_dir, dnode.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if !self.merged_dir_is_empty(&tree, dst)? => {
                        return Err(errno(libc::ENOTEMPTY));
                    }
                    _ => {}
                }
            }
        } else if exchange {
            return Err(errno(libc::ENOENT));
        }
        // A directory may not move below itself.
        if src_dir {
            let mut cur = newparent;
            while cur != ROOT {
                if cur == src {
                    return Err(errno(libc::EINVAL));
                }
                cur = tree
                    .get(cur)
                    .and_then(|n| n.aliases().first())
                    .map(|a| a.0)
                    .unwrap_or(ROOT);
            }
        }

        for id in std::iter::once(src).chain(dst.filter(|_| exchange)) {
            let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
            if node.is_dir() && !node.lower_dirs.is_empty() && !self.redirect_dir {
                // Without redirect_dir a directory with lower content cannot move, exactly as
                // on kernel overlayfs; `mv` then copies.
                return Err(errno(libc::EXDEV));
            }
        }

        if !exchange {
            let need = self.lower_has(&tree, parent, name)?;
            self.check_whiteout_fits(name, need)?;
        }
        let sdir = self.upper_dir(&mut tree, parent)?;
        let ddir = self.upper_dir(&mut tree, newparent)?;
        self.copy_up(&mut tree, src)?;
        self.mark_moved_dir(&mut tree, src, newparent, newname)?;
        if exchange {
            let dst = dst.ok_or_else(|| errno(libc::ENOENT))?;
            self.copy_up(&mut tree, dst)?;
            self.mark_moved_dir(&mut tree, dst, parent, name)?;
            sys::renameat2(
                sdir.as_fd(),
                name,
                ddir.as_fd(),
                newname,
                sys::RENAME_EXCHANGE,
            )?;
            self.forget_renamed_dirs(&tree, parent, name, newparent, newname)?;
            tree.remove_name(parent, name);
            tree.remove_name(newparent, newname);
            tree.add_alias(src, newparent, newname);
            tree.add_alias(dst, parent, name);
            tree.make_first_alias(src, newparent, newname);
            tree.make_first_alias(dst, parent, name);
            return Ok(());
        }

        let need_whiteout = self.lower_has(&tree, parent, name)?;
        if let Some(dst) = dst {
            self.ensure_index(&mut tree, dst)?;
            self.pin_if_last_name(&mut tree, dst)?;
        }
        // Clear the target: an empty merged directory may still hold whiteouts in upper.
        let dst_present = matches!(sys::fstatat(ddir.as_fd(), newname), Ok(st) if !whiteout::is_chardev_whiteout(&st));
        if dst_present && src_dir {
            let sub = sys::openat(
                ddir.as_fd(),
                newname,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            copy_up::remove_contents(sub.as_fd())?;
        }
        let dst_whiteout = !dst_present && has_whiteout(ddir.as_fd(), newname);
        if dst_whiteout && src_dir && self.stack.whiteout == Encoding::CharDev {
            // A directory cannot replace a char device: swap them, and the whiteout lands
            // where the directory was, which is what the old name needs if a lower has it.
            sys::renameat2(
                sdir.as_fd(),
                name,
                ddir.as_fd(),
                newname,
                sys::RENAME_EXCHANGE,
            )?;
            if !need_whiteout {
                sys::unlinkat(sdir.as_fd(), name, false)?;
            }
        } else {
            let atomic_whiteout = need_whiteout && self.stack.whiteout == Encoding::CharDev;
            let rflags = if atomic_whiteout {
                libc::RENAME_WHITEOUT
            } else {
                0
            };
            match sys::renameat2(sdir.as_fd(), name, ddir.as_fd(), newname, rflags) {
                Err(e) if atomic_whiteout && e.raw_os_error() == Some(libc::EINVAL) => {
                    sys::renameat2(sdir.as_fd(), name, ddir.as_fd(), newname, 0)?;
                    self.make_whiteout(sdir.as_fd(), name, Encoding::CharDev)?;
                }
                r => r.context(format!(
                    "rename {} -> {}",
                    name.to_string_lossy(),
                    newname.to_string_lossy()
                ))?,
            }
            if need_whiteout && !atomic_whiteout {
                self.make_whiteout(sdir.as_fd(), name, self.stack.whiteout)?;
            }
            if dst_whiteout {
                whiteout::remove_whiteout(ddir.as_fd(), newname)?;
            }
        }
        if let Some(dst) = dst {
            self.adjust_index_nlink(&tree, dst, -1)?;
            tree.remove_name(newparent, newname);
            forget_upper_if_gone(&mut tree, dst);
        }
        if src_dir || dst_present {
            self.forget_renamed_dirs(&tree, parent, name, newparent, newname)?;
        }
        tree.rename(parent, name, newparent, newname);
        Ok(())
    }

    /// Drops the upper layer's cached handles of the directories a rename moved or
    /// replaced (both names, and everything below them), keeping the rest: a rename deep
    /// in a tree must not cost every other cached directory.
    fn forget_renamed_dirs(
        &self,
        tree: &Tree,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<()> {
        let upper = self.upper()?;
        upper.forget_dirs_under(&self.path(tree, parent)?.join(name));
        upper.forget_dirs_under(&self.path(tree, newparent)?.join(newname));
        Ok(())
    }

    /// A directory moving to `newname` in `newparent`: one with lower content records
    /// where that content is (redirect), as the kernel writes it (`ovl_set_redirect`);
    /// one without becomes opaque if a lower layer has something under the new name.
    fn mark_moved_dir(
        &self,
        tree: &mut Tree,
        id: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<()> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if !node.is_dir() {
            return Ok(());
        }
        let path = self.path(tree, id)?;
        let upper = self.upper()?;
        let (ppath, name) = split(&path);
        let name = name.ok_or_else(|| errno(libc::EINVAL))?;
        let pdir = upper.dir(ppath)?;
        if !node.lower_dirs.is_empty() {
            let samedir = node.aliases().first().map(|a| a.0) == Some(newparent);
            // A recorded redirect stays when it still names the lower content from the
            // new place: a relative one within the same directory, an absolute one anywhere.
            let keep = match self.upper_redirect(&path) {
                Some(Redirect::Absolute(_)) => true,
                Some(Redirect::Relative(_)) => samedir,
                None => false,
            };
            if keep {
                return Ok(());
            }
            // Within its directory, the old name, relative to the parent's lower places;
            // elsewhere the old merged path, from the root, through the redirects of the
            // directories on the way.
            let target = if samedir {
                Redirect::Relative(name.to_os_string())
            } else {
                let up = path.ancestors().filter_map(|p| {
                    let name = p.file_name()?;
                    Some((name.to_os_string(), self.upper_redirect(p)))
                });
                Redirect::absolute_for_move(up)
            };
            let value = target.value();
            if value.len() > redirect::MAX_VALUE {
                // Not followed when read back: `mv` copies instead, as when the kernel's
                // path is longer than its redirect_max.
                return Err(errno(libc::EXDEV));
            }
            sys::setxattr(
                pdir.as_fd(),
                name,
                OsStr::new(self.stack.xattr_ns.redirect()),
                &value,
                0,
            )
            .map_err(|e| {
                log::debug!("rename: cannot record redirect on {}: {e}", path.display());
                errno(libc::EXDEV)
            })?;
        } else if self.lower_has(tree, newparent, newname)? {
            whiteout::set_opaque(pdir.as_fd(), name, self.stack.xattr_ns)?;
        }
        Ok(())
    }

    /// The redirect recorded on the upper directory `path`, if any (one a lookup got
    /// through, so a valid one).
    fn upper_redirect(&self, path: &Path) -> Option<Redirect> {
        let upper = self.stack.upper.as_ref()?;
        let (parent, name) = split(path);
        let dir = upper.dir(parent).ok()?;
        Redirect::parse(&whiteout::redirect(dir.as_fd(), name?)?).ok()
    }

    // ----- attributes -----

    pub fn setattr(&self, id: u64, attr: &SetAttr) -> Result<Stat> {
        self.upper()?;
        let _prepared = self.prepare_copy_up(id);
        let mut tree = self.change_tree();
        self.copy_up(&mut tree, id)?;
        let loc = self.loc(&tree, id)?;
        if let Some(size) = attr.size {
            let handle = attr
                .fh
                .and_then(|fh| self.handles.file(fh))
                .filter(|f| !f.on_lower);
            match handle {
                Some(f) => sys::ftruncate(f.fd().as_fd(), size)?,
                None => {
                    let fd = self.open_loc(&loc, libc::O_WRONLY)?;
                    sys::ftruncate(fd.as_fd(), size)?;
                }
            }
        }
        let override_attr = match self.write_override {
            Some(a) if attr.uid.is_some() || attr.gid.is_some() || attr.mode.is_some() => {
                let fmt = self.stat_loc(&loc)?.st_mode & libc::S_IFMT;
                (fmt == libc::S_IFDIR || fmt == libc::S_IFREG).then_some(a)
            }
            _ => None,
        };
        if let Some(xattr) = override_attr {
            // xattr_permissions=: the new owner and mode are recorded, not applied.
            let now = self.stat_node(&tree, id)?;
            let value = whiteout::OverrideStat::format(
                attr.uid.unwrap_or(now.st_uid),
                attr.gid.unwrap_or(now.st_gid),
                (now.st_mode & libc::S_IFMT)
                    | attr.mode.map_or(now.st_mode & 0o7777, |m| m & 0o7777),
            );
            self.at_loc(&loc, |dir, name| {
                sys::setxattr(dir, name, OsStr::new(xattr), value.as_bytes(), 0)
            })?;
        } else if attr.uid.is_some() || attr.gid.is_some() {
            let (uid, gid) = (attr.uid.unwrap_or(u32::MAX), attr.gid.unwrap_or(u32::MAX));
            self.at_loc(&loc, |dir, name| {
                if name.is_empty() {
                    sys::fchown(dir, uid, gid)
                } else {
                    sys::fchownat(dir, name, uid, gid)
                }
            })?;
        }
        if let Some(mode) = attr.mode.filter(|_| override_attr.is_none()) {
            self.at_loc(&loc, |dir, name| {
                if name.is_empty() {
                    sys::fchmod(dir, mode & 0o7777)
                } else {
                    sys::fchmodat(dir, name, mode & 0o7777)
                }
            })?;
        }
        if attr.atime.is_some() || attr.mtime.is_some() {
            let omit = sys::Timespec {
                tv_sec: 0,
                tv_nsec: sys::UTIME_OMIT,
            };
            let times = [attr.atime.unwrap_or(omit), attr.mtime.unwrap_or(omit)];
            self.at_loc(&loc, |dir, name| {
                if name.is_empty() {
                    sys::futimens(dir, &times)
                } else {
                    sys::utimensat(dir, name, &times)
                }
            })?;
        }
        self.stat_node(&tree, id)
    }

    // ----- xattrs -----

    pub fn getxattr(&self, id: u64, attr: &OsStr) -> Result<Vec<u8>> {
        if whiteout::is_hidden_xattr(attr) {
            return Err(errno(libc::ENODATA));
        }
        let tree = self.tree.read();
        let loc = self.loc(&tree, id)?;
        if let (Loc::Lower(..), Some(node)) = (&loc, tree.get(id)) {
            // The kernel asks for the same few names of every file, and never caches a
            // missing one (`ls -l` asks for security.selinux every time): a lower object,
            // which cannot change, is listed once, and most have no xattr at all.
            let known = &node.lower_xattrs;
            match known.load(Ordering::Relaxed) {
                XATTRS_NONE => return Err(errno(libc::ENODATA)),
                XATTRS_UNKNOWN => {
                    if let Ok(names) = self.at_loc(&loc, sys::listxattr) {
                        if names.iter().all(|n| whiteout::is_hidden_xattr(n)) {
                            known.store(XATTRS_NONE, Ordering::Relaxed);
                            return Err(errno(libc::ENODATA));
                        }
                        known.store(XATTRS_SOME, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        self.at_loc(&loc, |dir, name| sys::getxattr(dir, name, attr))
    }

    pub fn listxattr(&self, id: u64) -> Result<Vec<OsString>> {
        let tree = self.tree.read();
        let names = self.at_loc(&self.loc(&tree, id)?, sys::listxattr)?;
        Ok(names
            .into_iter()
            .filter(|n| !whiteout::is_hidden_xattr(n))
            .collect())
    }

    pub fn setxattr(&self, id: u64, attr: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if whiteout::is_hidden_xattr(attr) {
            return Err(errno(libc::EPERM));
        }
        self.upper()?;
        let _prepared = self.prepare_copy_up(id);
        let mut tree = self.change_tree();
        self.copy_up(&mut tree, id)?;
        self.at_loc(&self.loc(&tree, id)?, |dir, name| {
            sys::setxattr(dir, name, attr, value, flags)
        })
    }

    pub fn removexattr(&self, id: u64, attr: &OsStr) -> Result<()> {
        if whiteout::is_hidden_xattr(attr) {
            return Err(errno(libc::ENODATA));
        }
        self.upper()?;
        let mut tree = self.change_tree();
        // Nothing to remove is answered without a copy-up.
        let has = self
            .at_loc(&self.loc(&tree, id)?, |dir, name| {
                sys::getxattr(dir, name, attr)
            })
            .is_ok();
        if !has {
            return Err(errno(libc::ENODATA));
        }
        self.copy_up(&mut tree, id)?;
        self.at_loc(&self.loc(&tree, id)?, |dir, name| {
            sys::removexattr(dir, name, attr)
        })
    }

    // ----- files -----

    /// Opens `id`; anything that may write copies it up first.
    pub fn open(&self, id: u64, flags: i32) -> Result<u64> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
        let _prepared;
        let (loc, seen) = if writes {
            self.upper()?;
            _prepared = self.prepare_copy_up(id);
            let mut tree = self.change_tree();
            self.copy_up(&mut tree, id)?;
            (self.loc(&tree, id)?, self.copyups.load(Ordering::Acquire))
        } else {
            let tree = self.tree.read();
            (self.loc(&tree, id)?, self.copyups.load(Ordering::Acquire))
        };
        let fd = self.open_loc(&loc, flags)?;
        Ok(self.handles.add_file(OpenFile {
            node: id,
            fd: RwLock::new(Arc::new(fd)),
            on_lower: matches!(loc, Loc::Lower(..)),
            seen_copyups: AtomicU64::new(seen),
        }))
    }

    /// A handle for an fd `create` returned.
    pub fn add_open_file(&self, id: u64, fd: OwnedFd) -> u64 {
        self.handles.add_file(OpenFile {
            node: id,
            fd: RwLock::new(Arc::new(fd)),
            on_lower: false,
            seen_copyups: AtomicU64::new(0),
        })
    }

    /// The fd to read through: a handle opened on a lower file moves to the upper copy once
    /// there is one.
    pub fn read_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        let f = self.handles.file(fh).ok_or_else(|| errno(libc::EBADF))?;
        if f.on_lower {
            let now = self.copyups.load(Ordering::Acquire);
            if f.seen_copyups.swap(now, Ordering::AcqRel) != now {
                let tree = self.tree.read();
                if let Ok(loc) = self.loc(&tree, f.node) {
                    if !matches!(loc, Loc::Lower(..)) {
                        if let Ok(fd) = self.open_loc(&loc, libc::O_RDONLY) {
                            *f.fd.write() = Arc::new(fd);
                        }
                    }
                }
            }
        }
        Ok(f.fd())
    }

    /// Whether handle `fh` was opened on a lower layer's file.
    /// Whether a change to node `id` would first copy its data up (a file not yet in the
    /// upper layer), which may take long.
    pub fn would_copy_data_up(&self, id: u64) -> bool {
        let tree = self.tree.read();
        tree.get(id)
            .is_some_and(|n| !n.is_dir() && !n.upper && n.lower_layer.is_some())
    }

    pub fn handle_on_lower(&self, fh: u64) -> bool {
        self.handles.file(fh).map(|f| f.on_lower).unwrap_or(false)
    }

    pub fn file_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        Ok(self
            .handles
            .file(fh)
            .ok_or_else(|| errno(libc::EBADF))?
            .fd())
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        Ok(sys::fsync(self.file_fd(fh)?.as_fd(), datasync)?)
    }

    // ----- directories -----

    /// Makes the directory's upper part durable (its lower parts never change); nothing to
    /// do for a directory only in lower layers, or when the mount is volatile.
    pub fn fsyncdir(&self, id: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let tree = self.tree.read();
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if !node.upper || self.read_only {
            return Ok(());
        }
        let path = self.path(&tree, id)?;
        let upper = self.upper()?;
        let fd = upper.open_beneath(&path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(sys::fsync(fd.as_fd(), datasync)?)
    }

    /// The listing of directory `id` to answer a READDIR at `offset` from (see readdir.rs
    /// for why any kept listing may continue a read).
    pub fn listing(&self, id: u64, offset: u64) -> Result<Arc<Listing>> {
        let tree = self.tree.read();
        // Stable while the shared lock is held: changes take the exclusive one.
        let changes = self.changes.load(Ordering::Acquire);
        self.listings.get(id, offset, changes, || {
            let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
            if !node.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            let upath = if node.upper {
                Some(self.path(&tree, id)?)
            } else {
                None
            };
            let parent_ino = node
                .aliases()
                .first()
                .and_then(|(p, _)| tree.get(*p))
                .map(|p| p.st_ino)
                .unwrap_or(node.st_ino);
            let dot = |name: &str, ino| DirEntry {
                name: name.into(),
                dtype: libc::DT_DIR,
                ino,
                cookie: 0,
            };
            let mut list = vec![dot(".", node.st_ino), dot("..", parent_ino)];
            list.extend(readdir::list(
                &self.stack,
                upath.as_deref(),
                &node.lower_dirs,
            )?);
            Ok(list)
        })
    }

    /// Directory `id`, listed as `listing`, was read from the start; `from_disk` if
    /// serving that had to wait for the disk: its lower subdirectories may be read ahead
    /// (readahead.rs).
    pub fn listed(&self, id: u64, listing: &Listing, from_disk: bool) {
        let tree = self.tree.read();
        let Some(node) = tree.get(id) else { return };
        let subdirs = listing
            .after(readdir::DOTDOT_COOKIE)
            .iter()
            .filter(|e| e.dtype == libc::DT_DIR)
            .map(|e| e.name.as_os_str());
        self.readahead.listed(&node.lower_dirs, subdirs, from_disk);
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        let layer = self.stack.upper.as_ref().unwrap_or(&self.stack.lowers[0]);
        let mut st = sys::fstatvfs(layer.root())?;
        if self.stack.whiteout == Encoding::File {
            // A name must leave room for the `.wh.` prefix of its whiteout.
            st.f_namemax = st
                .f_namemax
                .min(libc::NAME_MAX as u64 - whiteout::WHITEOUT_PREFIX.len() as u64);
        }
        Ok(st)
    }

    /// Nodes currently known (for tests and memory accounting).
    pub fn node_count(&self) -> usize {
        self.tree.read().len()
    }
}

/// A node whose last name went is no longer at its upper path; one kept open stays "upper"
/// so that changes through its handle never copy anything up again.
fn forget_upper_if_gone(tree: &mut Tree, id: u64) {
    if let Some(n) = tree.get_mut(id) {
        if n.aliases().is_empty() && n.pinned.is_none() {
            n.upper = false;
        }
    }
}

/// Names the overlay reserves for its markers cannot be created through the mount: with the
/// `.wh.` encoding they would read back as deletions.
fn check_new_name(name: &OsStr) -> Result<()> {
    if whiteout::is_marker_name(name) {
        return Err(Error::new(
            libc::EINVAL,
            format!(
                "{}: names starting .wh. are reserved for whiteouts",
                name.to_string_lossy()
            ),
        ));
    }
    Ok(())
}

fn has_whiteout(dir: BorrowedFd, name: &OsStr) -> bool {
    matches!(sys::fstatat(dir, name), Ok(st) if whiteout::is_chardev_whiteout(&st))
        || whiteout::has_whiteout_file(dir, name)
}

/// Moves the prepared `tmp` (in work/work) onto `name`, which holds a whiteout.
fn replace_whiteout(
    work: &WorkDir,
    tmp: &OsStr,
    dir: BorrowedFd,
    name: &OsStr,
    is_dir: bool,
) -> Result<()> {
    let chardev = matches!(sys::fstatat(dir, name), Ok(st) if whiteout::is_chardev_whiteout(&st));
    if chardev {
        if is_dir {
            sys::renameat2(work.temp(), tmp, dir, name, sys::RENAME_EXCHANGE)?;
            sys::unlinkat(work.temp(), tmp, false)?;
        } else {
            sys::renameat2(work.temp(), tmp, dir, name, 0)?;
        }
    } else {
        sys::renameat2(work.temp(), tmp, dir, name, sys::RENAME_NOREPLACE)?;
    }
    whiteout::remove_whiteout(dir, name)?;
    Ok(())
}

/// The default ACL of directory `dir`; `None` when it has none or its filesystem keeps no
/// ACLs.
fn default_acl(dir: BorrowedFd) -> Result<Option<Vec<u8>>> {
    // "." rather than an empty name: the `*xattrat` calls then reach the directory from
    // its O_PATH handle, without the slower walk through /proc.
    match sys::getxattr(dir, OsStr::new("."), acl::default()) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => Ok(None),
        Err(e) => Err(Error::from(e).context("reading the parent's default ACL")),
    }
}

/// Creates the bare object with mode `perm`, or private to the daemon without one (the
/// caller then sets owner and mode); a file comes back open.
fn make_object(
    dir: BorrowedFd,
    name: &OsStr,
    kind: &NewKind,
    fmt: u32,
    perm: Option<u32>,
) -> Result<Option<OwnedFd>> {
    let private = |p: u32| perm.unwrap_or(p);
    match kind {
        NewKind::Dir => sys::mkdirat(dir, name, private(0o700))?,
        NewKind::File { flags } => {
            let acc = flags & (libc::O_ACCMODE | libc::O_APPEND);
            let fd = sys::openat(
                dir,
                name,
                acc | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                private(0o600),
            )?;
            return Ok(Some(fd));
        }
        NewKind::Special { rdev } => sys::mknodat(dir, name, fmt | private(0o600), *rdev)?,
        NewKind::Symlink { target } => sys::symlinkat(target, dir, name)?,
    }
    Ok(None)
}

/// The device all `layers` are on, if they share one.
fn shared_dev<'a>(layers: impl Iterator<Item = &'a Layer>) -> Result<Option<u64>> {
    let mut dev = None;
    for layer in layers {
        let d = sys::fstat(layer.root())?.st_dev;
        match dev {
            None => dev = Some(d),
            Some(first) if first != d => return Ok(None),
            Some(_) => {}
        }
    }
    Ok(dev)
}

/// Chooses how deletions are written: a char device 0:0 where mknod works, else `.wh.` files.
fn probe_whiteout(work: &WorkDir, mode: WhiteoutMode) -> Result<Encoding> {
    let tmp = work.temp_name();
    let mknod_ok = match whiteout::make_whiteout(work.temp(), &tmp, Encoding::CharDev) {
        Ok(()) => {
            let _ = sys::unlinkat(work.temp(), &tmp, false);
            true
        }
        Err(e) => {
            log::debug!("mknod of a whiteout refused ({e}): using .wh. files");
            false
        }
    };
    match mode {
        WhiteoutMode::File => Ok(Encoding::File),
        WhiteoutMode::Auto if mknod_ok => Ok(Encoding::CharDev),
        WhiteoutMode::Auto => Ok(Encoding::File),
        WhiteoutMode::CharDev if mknod_ok => Ok(Encoding::CharDev),
        WhiteoutMode::CharDev => Err(Error::usage("whiteout=chardev: mknod of a 0:0 device is not permitted here; use whiteout=auto or whiteout=file")),
    }
}

/// trusted.* where the daemon may write it (real root), else user.*.
fn probe_xattr_ns(work: &WorkDir) -> XattrNs {
    let tmp = work.temp_name();
    let ok = sys::mkdirat(work.temp(), &tmp, 0o700).is_ok()
        && sys::setxattr(
            work.temp(),
            &tmp,
            OsStr::new("trusted.overlay.layerfs-probe"),
            b"y",
            0,
        )
        .is_ok();
    let _ = sys::unlinkat(work.temp(), &tmp, true);
    if ok {
        XattrNs::Trusted
    } else {
        XattrNs::User
    }
}

/// Makes the upper layer keep owners and modes in `attr` (`xattr_permissions=`): its root
/// gets the xattr, with its own owner and mode, if it has none yet, as fuse-overlayfs does,
/// so any later mount of the layer (by either program) detects the mode from the root.
fn mark_override_layer(upper: &mut Layer, attr: &'static str) -> Result<()> {
    let dot = OsStr::new(".");
    if sys::getxattr(upper.root(), dot, OsStr::new(attr)).is_err() {
        let st = sys::fstat(upper.root())?;
        let value = whiteout::OverrideStat::format(st.st_uid, st.st_gid, st.st_mode);
        sys::setxattr(upper.root(), dot, OsStr::new(attr), value.as_bytes(), 0)
            .map_err(|e| Error::from(e).context(format!("{attr} on {}", upper.path.display())))?;
    }
    upper.stat_override = Some(attr);
    Ok(())
}
