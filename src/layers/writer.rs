//! The confined writer: every change layerctl makes to a layer it builds (import, load,
//! commit) goes through a [`LayerWriter`], which reaches everything through directory
//! handles opened beneath the new layer's root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` and changes metadata on handles or with
//! `AT_SYMLINK_NOFOLLOW`. Nothing a layer, an archive or a container holds can make it
//! follow a symlink or touch anything outside the root.
//!
//! Semantics are a tar extractor's with `--overwrite`: the last entry of a path wins, with
//! its own metadata. A directory's metadata waits until it is full (so filling it does not
//! change its mtime and a read-only mode does not stop the filling); an entry that removes or
//! replaces a path drops what was waiting for that path and everything below it, and what is
//! finally applied is applied to the directory that was recorded (same inode), never to
//! whatever holds its name by then.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::sys::{self, Timespec};
use crate::whiteout::{self, Encoding, XattrNs, OPAQUE_MARKER, WHITEOUT_PREFIX};

/// A path inside a layer: plain names only (no "", ".", "..", no '/').
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerPath(Vec<OsString>);

impl LayerPath {
    pub fn root() -> LayerPath {
        LayerPath(Vec::new())
    }

    /// Parses a relative name as tar writes it (`a/b/`, `./a//b`). Refuses absolute names
    /// and `..`, which could only mean something outside the layer.
    pub fn parse(name: &[u8]) -> std::result::Result<LayerPath, &'static str> {
        if name.starts_with(b"/") {
            return Err("absolute path");
        }
        let mut out = Vec::new();
        for c in name.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err("'..' in path"),
                _ => out.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        Ok(LayerPath(out))
    }

    /// The path of these components (each a plain name).
    pub fn from_components(c: &[OsString]) -> LayerPath {
        LayerPath(c.to_vec())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> &[OsString] {
        &self.0
    }

    /// The last name; empty for the root.
    pub fn name(&self) -> &OsStr {
        self.0
            .last()
            .map(|n| n.as_os_str())
            .unwrap_or(OsStr::new(""))
    }

    pub fn parent(&self) -> LayerPath {
        LayerPath(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }

    /// `self/name`; `name` must be one plain component (a listed directory entry).
    pub fn join(&self, name: &OsStr) -> LayerPath {
        let mut v = self.0.clone();
        v.push(name.to_os_string());
        LayerPath(v)
    }

    pub fn starts_with(&self, prefix: &LayerPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// The relative path, for messages and for `openat2`.
    pub fn to_path(&self) -> PathBuf {
        self.0.iter().collect()
    }

    pub fn display(&self) -> String {
        format!("/{}", self.to_path().display())
    }
}

/// What an entry's own header says about it (tar header, or a source inode's stat).
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Permission bits with set-id and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Extended attributes to set (the caller leaves out the overlay's private ones).
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> [Timespec; 2] {
        let t = Timespec {
            tv_sec: self.mtime as libc::time_t,
            tv_nsec: self.mtime_nsec as libc::c_long,
        };
        [t, t]
    }
}

/// Why a write was refused: the path and a reason a person can act on.
#[derive(Debug)]
pub struct Refused {
    pub path: LayerPath,
    pub why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.why)
    }
}

impl std::error::Error for Refused {}

pub type Result<T> = std::result::Result<T, Refused>;

fn refused(path: &LayerPath, why: impl Into<String>) -> Refused {
    Refused {
        path: path.clone(),
        why: why.into(),
    }
}

/// Turns an OS error on `path` into a reason, saying plainly when the cause is a symlink or
/// a non-directory where the path needs a directory.
fn os(path: &LayerPath, what: &str, e: io::Error) -> Refused {
    let why = match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => {
            format!("{what}: a parent is a symlink (nothing is written through a symlink)")
        }
        Some(libc::ENOTDIR) => format!("{what}: a parent is not a directory"),
        _ => format!("{what}: {e}"),
    };
    refused(path, why)
}

/// A directory waiting for its metadata: the inode it was made as, and what to give it.
struct Deferred {
    ino: u64,
    meta: Meta,
}

pub struct LayerWriter {
    root: OwnedFd,
    deferred: BTreeMap<LayerPath, Deferred>,
    /// Whiteouts that came while an entry of this layer held their path: the entry stays,
    /// but a directory that later takes the path must still hide the lower one.
    whited: std::collections::BTreeSet<LayerPath>,
    /// Root may give files away and write `trusted.*`; an ordinary user keeps its own ids
    /// (the rootless mapping shows them) and skips the namespaces it cannot write.
    privileged: bool,
    whiteouts: Encoding,
    xattr_ns: XattrNs,
    /// Metadata of directories made because an entry below them came first.
    implicit: Meta,
}

/// Directories are opened with these; through `openat2` a symlink anywhere in the path,
/// the last component included, is refused with ELOOP (no O_NOFOLLOW, which would turn a
/// final symlink into ENOTDIR and hide why).
const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY;

impl LayerWriter {
    /// A writer for the (new, private) layer directory `root`.
    pub fn open(root: &Path) -> io::Result<LayerWriter> {
        let root = File::open(root)?;
        let root = OwnedFd::from(root);
        let privileged = sys::process::geteuid() == 0;
        Ok(LayerWriter {
            root,
            deferred: BTreeMap::new(),
            whited: Default::default(),
            privileged,
            whiteouts: if privileged {
                Encoding::CharDev
            } else {
                Encoding::File
            },
            xattr_ns: if privileged {
                XattrNs::Trusted
            } else {
                XattrNs::User
            },
            implicit: Meta {
                mode: 0o755,
                uid: sys::process::geteuid(),
                gid: sys::process::getegid(),
                ..Meta::default()
            },
        })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// Opens directory `path` of the layer, never through a symlink.
    pub fn open_dir(&self, path: &LayerPath) -> io::Result<OwnedFd> {
        open_beneath(self.root.as_fd(), path, DIR_FLAGS)
    }

    /// The directory `dir`, made (with the implicit metadata) where it is missing, as tar
    /// makes the missing parents of an entry.
    fn dir_creating(&mut self, dir: &LayerPath) -> Result<OwnedFd> {
        match self.open_dir(dir) {
            Ok(fd) => return Ok(fd),
            // Missing, or a whiteout where a parent should be: the walk below decides.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {}
            Err(e) => return Err(os(dir, "opening the parent directory", e)),
        }
        let mut cur = sys::openat_beneath(self.root.as_fd(), Path::new(""), DIR_FLAGS, 0)
            .map_err(|e| os(dir, "opening the layer root", e))?;
        for (i, name) in dir.components().iter().enumerate() {
            check_name(dir, name)?;
            let made = LayerPath(dir.components()[..=i].to_vec());
            let next = match sys::openat_beneath(cur.as_fd(), Path::new(name), DIR_FLAGS, 0) {
                Ok(fd) if !whiteout::has_whiteout_file(cur.as_fd(), name) => fd,
                Ok(fd) => {
                    // A real directory beside a `.wh.` file of its name: it replaced the
                    // deletion, so it is opaque and the marker goes.
                    whiteout::remove_whiteout(cur.as_fd(), name)
                        .map_err(|e| os(dir, "replacing a whiteout", e))?;
                    self.set_opaque_fd(&made, fd.as_fd())?;
                    fd
                }
                Err(e) => {
                    let at = sys::fstatat(cur.as_fd(), name).ok();
                    let is_whiteout = at.as_ref().is_some_and(whiteout::is_chardev_whiteout)
                        || (at.is_none() && whiteout::has_whiteout_file(cur.as_fd(), name));
                    if at.is_some() && !is_whiteout {
                        return Err(os(dir, "opening the parent directory", e));
                    }
                    // Missing, or deleted by a whiteout of this layer: made as tar makes a
                    // missing parent; over a whiteout it is opaque (the deletion of the
                    // lower directory still holds).
                    if is_whiteout {
                        whiteout::remove_whiteout(cur.as_fd(), name)
                            .map_err(|e| os(dir, "replacing a whiteout", e))?;
                    }
                    sys::mkdirat(cur.as_fd(), name, 0o700)
                        .map_err(|e| os(dir, "creating a missing parent", e))?;
                    let fd = sys::openat_beneath(cur.as_fd(), Path::new(name), DIR_FLAGS, 0)
                        .map_err(|e| os(dir, "opening a created parent", e))?;
                    if is_whiteout {
                        self.set_opaque_fd(&made, fd.as_fd())?;
                    }
                    let st = sys::fstat(fd.as_fd()).map_err(|e| os(dir, "stat", e))?;
                    self.deferred.insert(
                        made,
                        Deferred {
                            ino: st.st_ino,
                            meta: self.implicit.clone(),
                        },
                    );
                    fd
                }
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Forgets what waits for `path` and everything below it (it is being removed or
    /// replaced, so none of that may be applied to what takes its name).
    fn drop_deferred(&mut self, path: &LayerPath) {
        let below: Vec<LayerPath> = self
            .deferred
            .range(path.clone()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            self.deferred.remove(&p);
        }
        // Whiteouts recorded below it went with it (strictly below: the path's own one
        // still speaks for whatever takes the name).
        let below: Vec<LayerPath> = self
            .whited
            .range(path.clone()..)
            .take_while(|p| p.starts_with(path))
            .filter(|p| *p != path)
            .cloned()
            .collect();
        for p in below {
            self.whited.remove(&p);
        }
    }

    /// Removes whatever `path` holds in this layer (a whole tree for a directory); absent
    /// is fine. The root cannot be removed.
    pub fn remove(&mut self, path: &LayerPath) -> Result<()> {
        if path.is_root() {
            return Err(refused(path, "the layer root cannot be replaced"));
        }
        let parent = match self.open_dir(&path.parent()) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(os(path, "opening the parent directory", e)),
        };
        self.drop_deferred(path);
        remove_at(parent.as_fd(), path.name()).map_err(|e| os(path, "removing", e))
    }

    /// The parent of a new entry, with nothing left at the entry's name (a whiteout of
    /// this layer there included). Also says whether a whiteout was there.
    fn replace(&mut self, path: &LayerPath) -> Result<(OwnedFd, bool)> {
        if path.is_root() {
            return Err(refused(path, "the layer root cannot be replaced"));
        }
        check_name(path, path.name())?;
        let parent = self.dir_creating(&path.parent())?;
        let name = path.name();
        let was_whiteout = is_whiteout_at(parent.as_fd(), name);
        self.drop_deferred(path);
        remove_at(parent.as_fd(), name).map_err(|e| os(path, "replacing", e))?;
        if was_whiteout {
            whiteout::remove_whiteout(parent.as_fd(), name)
                .map_err(|e| os(path, "replacing a whiteout", e))?;
            self.whited.insert(path.clone());
        }
        Ok((parent, was_whiteout))
    }

    /// A directory. An existing directory of that name is kept with its content and gets
    /// this entry's metadata (tar's dir over dir); anything else there is replaced. A
    /// directory that replaces a whiteout of this layer is made opaque, so the deletion of
    /// the lower directory still holds. Its metadata is applied by [`LayerWriter::finish`].
    pub fn mkdir(&mut self, path: &LayerPath, meta: Meta) -> Result<()> {
        if path.is_root() {
            // The root entry ("./"): the layer root keeps the store's own metadata.
            return Ok(());
        }
        check_name(path, path.name())?;
        let mut parent = self.dir_creating(&path.parent())?;
        let name = path.name();
        let existing = sys::fstatat(parent.as_fd(), name).ok();
        let is_dir = existing
            .as_ref()
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let mut opaque = false;
        if !is_dir {
            drop(parent);
            let (p, was_whiteout) = self.replace(path)?;
            opaque = was_whiteout || self.whited.contains(path);
            sys::mkdirat(p.as_fd(), name, 0o700).map_err(|e| os(path, "mkdir", e))?;
            parent = p;
        } else if whiteout::has_whiteout_file(parent.as_fd(), name) {
            whiteout::remove_whiteout(parent.as_fd(), name)
                .map_err(|e| os(path, "replacing a whiteout", e))?;
            opaque = true;
        }
        let fd = sys::openat_beneath(parent.as_fd(), Path::new(name), DIR_FLAGS, 0)
            .map_err(|e| os(path, "opening", e))?;
        if opaque {
            self.set_opaque_fd(path, fd.as_fd())?;
        }
        // Xattrs now (they do not change the mtime): a later entry for the same directory
        // adds to them and overrides its own names, as tar's dir over dir does.
        for (attr, value) in &meta.xattrs {
            self.set_xattr(path, fd.as_fd(), OsStr::new(""), attr, value)?;
        }
        let st = sys::fstat(fd.as_fd()).map_err(|e| os(path, "stat", e))?;
        self.deferred.insert(
            path.clone(),
            Deferred {
                ino: st.st_ino,
                meta: Meta {
                    xattrs: Vec::new(),
                    ..meta
                },
            },
        );
        Ok(())
    }

    /// A regular file with the data read from `data`. Returns the bytes written.
    pub fn file(&mut self, path: &LayerPath, meta: &Meta, data: &mut dyn Read) -> Result<u64> {
        let (parent, _) = self.replace(path)?;
        let fd = sys::openat(
            parent.as_fd(),
            path.name(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(|e| os(path, "creating", e))?;
        let mut f = File::from(fd);
        let n = io::copy(data, &mut f).map_err(|e| os(path, "writing data", e))?;
        self.meta_on_fd(path, f.as_fd(), meta)?;
        Ok(n)
    }

    /// A symlink. Its target is stored, never followed.
    pub fn symlink(&mut self, path: &LayerPath, target: &OsStr, meta: &Meta) -> Result<()> {
        let (parent, _) = self.replace(path)?;
        sys::symlinkat(target, parent.as_fd(), path.name())
            .map_err(|e| os(path, "creating symlink", e))?;
        self.meta_at(path, parent.as_fd(), meta, true)
    }

    /// A device node or FIFO (`kind` is `S_IFCHR`, `S_IFBLK` or `S_IFIFO`).
    pub fn mknod(&mut self, path: &LayerPath, kind: u32, rdev: u64, meta: &Meta) -> Result<()> {
        let (parent, _) = self.replace(path)?;
        sys::mknodat(parent.as_fd(), path.name(), kind | 0o600, rdev)
            .map_err(|e| os(path, "mknod", e))?;
        self.meta_at(path, parent.as_fd(), meta, false)
    }

    /// A second name for the non-directory `target` of this layer. No metadata is changed:
    /// the names share one inode, whose metadata is the target's.
    pub fn hardlink(&mut self, path: &LayerPath, target: &LayerPath) -> Result<()> {
        if target.is_root() || (path != target && path.starts_with(target)) {
            return Err(refused(path, "a hard link to a directory"));
        }
        let tparent = self
            .open_dir(&target.parent())
            .map_err(|e| os(path, &format!("hard link target {}", target.display()), e))?;
        let st = sys::fstatat(tparent.as_fd(), target.name()).map_err(|e| {
            os(
                path,
                &format!(
                    "hard link target {} (it must come earlier)",
                    target.display()
                ),
                e,
            )
        })?;
        if whiteout::is_chardev_whiteout(&st) {
            return Err(refused(
                path,
                format!(
                    "hard link target {} is a whiteout, not an entry",
                    target.display()
                ),
            ));
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(refused(
                path,
                format!("hard link target {} is a directory", target.display()),
            ));
        }
        if path == target {
            // A link to itself: the entry is already what it names.
            return Ok(());
        }
        if target.starts_with(path) {
            return Err(refused(
                path,
                format!(
                    "hard link target {} lies below the entry it would replace",
                    target.display()
                ),
            ));
        }
        let (parent, _) = self.replace(path)?;
        sys::linkat(tparent.as_fd(), target.name(), parent.as_fd(), path.name())
            .map_err(|e| os(path, "linking", e))
    }

    /// The inode number `path` has in this layer (hard-link bookkeeping of copiers).
    pub fn ino_of(&self, path: &LayerPath) -> Option<u64> {
        let parent = self.open_dir(&path.parent()).ok()?;
        sys::fstatat(parent.as_fd(), path.name())
            .ok()
            .map(|st| st.st_ino)
    }

    /// Records "`path` is deleted in the lower layers" in the store's encoding. As the OCI
    /// image spec reads a layer, a whiteout never deletes an entry of its own layer, in
    /// whichever order the two come: a directory of this layer there is made opaque (its
    /// own content stays, the lower one is hidden), any other entry already hides the lower
    /// one and stays as it is.
    pub fn whiteout(&mut self, path: &LayerPath) -> Result<()> {
        let name = path.name();
        let b = name.as_bytes();
        if path.is_root() || b == b"." || b == b".." || b.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(refused(path, "malformed whiteout"));
        }
        let parent = self.dir_creating(&path.parent())?;
        match sys::fstatat(parent.as_fd(), name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let fd = sys::openat_beneath(parent.as_fd(), Path::new(name), DIR_FLAGS, 0)
                    .map_err(|e| os(path, "opening", e))?;
                return self.set_opaque_fd(path, fd.as_fd());
            }
            Ok(st) if whiteout::is_chardev_whiteout(&st) => return Ok(()),
            Ok(_) => {
                self.whited.insert(path.clone());
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(os(path, "stat", e)),
        }
        if whiteout::has_whiteout_file(parent.as_fd(), name) {
            return Ok(());
        }
        let mut enc = self.whiteouts;
        loop {
            if enc == Encoding::File && name.len() + WHITEOUT_PREFIX.len() > 255 {
                return Err(refused(path, "name too long for a .wh. whiteout file"));
            }
            match whiteout::make_whiteout(parent.as_fd(), name, enc) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && enc == Encoding::CharDev => {
                    enc = Encoding::File;
                    self.whiteouts = Encoding::File;
                }
                Err(e) => return Err(os(path, "writing a whiteout", e)),
            }
        }
    }

    /// Marks directory `path` (made if missing) opaque: it hides the same directory in lower
    /// layers. The root may be marked too.
    pub fn opaque(&mut self, path: &LayerPath) -> Result<()> {
        let fd = if path.is_root() {
            self.open_dir(path).map_err(|e| os(path, "opening", e))?
        } else {
            self.dir_creating(path)?
        };
        self.set_opaque_fd(path, fd.as_fd())
    }

    fn set_opaque_fd(&mut self, path: &LayerPath, dir: BorrowedFd) -> Result<()> {
        let attr = OsStr::new(self.xattr_ns.opaque());
        if sys::setxattr(dir, OsStr::new(""), attr, b"y", 0).is_ok() {
            return Ok(());
        }
        sys::openat(
            dir,
            OsStr::new(OPAQUE_MARKER),
            libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
            0o600,
        )
        .map(drop)
        .map_err(|e| os(path, "marking opaque", e))
    }

    /// Owner, mode, xattrs and times on an open regular file (chown before chmod: chown
    /// clears set-id bits).
    fn meta_on_fd(&self, path: &LayerPath, fd: BorrowedFd, meta: &Meta) -> Result<()> {
        if let Err(e) = sys::fchown(fd, meta.uid, meta.gid) {
            if self.privileged {
                return Err(os(path, "chown", e));
            }
        }
        sys::fchmod(fd, meta.mode & 0o7777).map_err(|e| os(path, "chmod", e))?;
        for (name, value) in &meta.xattrs {
            self.set_xattr(path, fd, OsStr::new(""), name, value)?;
        }
        sys::futimens(fd, &meta.times()).map_err(|e| os(path, "setting times", e))
    }

    /// The same for an entry that cannot be opened safely (symlink, device, FIFO): through
    /// its parent's handle, never following it.
    fn meta_at(
        &self,
        path: &LayerPath,
        parent: BorrowedFd,
        meta: &Meta,
        symlink: bool,
    ) -> Result<()> {
        let name = path.name();
        if let Err(e) = sys::fchownat(parent, name, meta.uid, meta.gid) {
            if self.privileged {
                return Err(os(path, "chown", e));
            }
        }
        if !symlink {
            sys::fchmodat_nofollow(parent, name, meta.mode & 0o7777)
                .map_err(|e| os(path, "chmod", e))?;
        }
        for (attr, value) in &meta.xattrs {
            // Linux allows no `user.*` xattr on a symlink: like GNU tar, it is dropped
            // (it cannot be stored in any layer).
            if symlink && attr.as_bytes().starts_with(b"user.") {
                continue;
            }
            self.set_xattr(path, parent, name, attr, value)?;
        }
        sys::utimensat(parent, name, &meta.times()).map_err(|e| os(path, "setting times", e))
    }

    fn set_xattr(
        &self,
        path: &LayerPath,
        dir: BorrowedFd,
        name: &OsStr,
        attr: &OsStr,
        value: &[u8],
    ) -> Result<()> {
        if whiteout::is_private_xattr(attr) {
            return Ok(());
        }
        match sys::setxattr(dir, name, attr, value, 0) {
            Ok(()) => Ok(()),
            // Without privilege some namespaces (trusted.*, security.*) cannot be written;
            // the layer keeps what the user could have written anyway.
            Err(_) if !self.privileged => Ok(()),
            Err(e) => Err(os(
                path,
                &format!("setting xattr {}", attr.to_string_lossy()),
                e,
            )),
        }
    }

    /// Gives every directory its metadata, deepest first (so that setting a child's times
    /// does not change its parent's mtime afterwards). Each is opened beneath the root
    /// without following anything, and must still be the inode that was made.
    pub fn finish(mut self) -> Result<()> {
        let all = std::mem::take(&mut self.deferred);
        for (path, d) in all.into_iter().rev() {
            let fd = self
                .open_dir(&path)
                .map_err(|e| os(&path, "opening to set its metadata", e))?;
            let st = sys::fstat(fd.as_fd()).map_err(|e| os(&path, "stat", e))?;
            if st.st_ino != d.ino {
                return Err(refused(&path, "was replaced while the layer was written"));
            }
            self.meta_on_fd(&path, fd.as_fd(), &d.meta)?;
        }
        Ok(())
    }
}

/// Whether `name` in `parent` is a whiteout this layer holds, in either encoding.
fn is_whiteout_at(parent: BorrowedFd, name: &OsStr) -> bool {
    match sys::fstatat(parent, name) {
        Ok(st) if whiteout::is_chardev_whiteout(&st) => true,
        Ok(_) => false,
        Err(_) => whiteout::has_whiteout_file(parent, name),
    }
}

/// Names that would read back as overlay markers can never be created as real entries.
fn check_name(path: &LayerPath, name: &OsStr) -> Result<()> {
    if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
        return Err(refused(
            path,
            "a name starting with .wh. is a whiteout marker, not an entry",
        ));
    }
    Ok(())
}

/// Opens `path` beneath `root`; paths too long for one `openat2` are walked a component
/// at a time (each step still confined).
pub fn open_beneath(root: BorrowedFd, path: &LayerPath, flags: i32) -> io::Result<OwnedFd> {
    match sys::openat_beneath(root, &path.to_path(), flags, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
            let mut cur = sys::openat_beneath(root, Path::new(""), DIR_FLAGS, 0)?;
            let n = path.components().len();
            for (i, c) in path.components().iter().enumerate() {
                let f = if i + 1 == n { flags } else { DIR_FLAGS };
                cur = sys::openat_beneath(cur.as_fd(), Path::new(c), f, 0)?;
            }
            Ok(cur)
        }
        r => r,
    }
}

/// Removes `name` in `dir` whatever it is, a directory with everything below it, without
/// recursion (a tree's depth is the input's to choose) and without following symlinks.
pub fn remove_at(dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let st = match sys::fstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::unlinkat(dir, name, false);
    }
    // A stack of directories still to empty: (parent handle, name). Parents are shared, so
    // the handles held are one per level of the walk.
    let top = Rc::new(sys::openat_beneath(dir, Path::new(""), DIR_FLAGS, 0)?);
    let mut stack: Vec<(Rc<OwnedFd>, OsString)> = vec![(top, name.to_os_string())];
    while let Some((parent, dname)) = stack.last().cloned() {
        let d = Rc::new(sys::openat(
            parent.as_fd(),
            &dname,
            DIR_FLAGS | libc::O_NOFOLLOW,
            0,
        )?);
        let mut subdirs = Vec::new();
        for (entry, dtype, _) in sys::read_dir(d.as_fd())? {
            let is_dir = match dtype {
                libc::DT_DIR => true,
                libc::DT_UNKNOWN => sys::fstatat(d.as_fd(), &entry)
                    .is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR),
                _ => false,
            };
            if is_dir {
                subdirs.push(entry);
            } else {
                sys::unlinkat(d.as_fd(), &entry, false)?;
            }
        }
        if subdirs.is_empty() {
            sys::unlinkat(parent.as_fd(), &dname, true)?;
            stack.pop();
        } else {
            for s in subdirs {
                stack.push((Rc::clone(&d), s));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_tar_names() {
        let p = LayerPath::parse(b"./a//b/").unwrap();
        assert_eq!(p.components(), &[OsString::from("a"), OsString::from("b")]);
        assert!(LayerPath::parse(b"/etc").is_err());
        assert!(LayerPath::parse(b"a/../../b").is_err());
        assert!(LayerPath::parse(b"./").unwrap().is_root());
    }

    #[test]
    fn descendants_sort_right_after_their_ancestor() {
        // drop_deferred relies on it: a path's subtree is one range of the map.
        let a = LayerPath::parse(b"a").unwrap();
        let mut v = [
            LayerPath::parse(b"a0").unwrap(),
            LayerPath::parse(b"a/z/y").unwrap(),
            a.clone(),
            LayerPath::parse(b"a/b").unwrap(),
            LayerPath::parse(b"A").unwrap(),
        ];
        v.sort();
        let i = v.iter().position(|p| *p == a).unwrap();
        assert!(v[i + 1].starts_with(&a) && v[i + 2].starts_with(&a));
        assert!(!v[i + 3].starts_with(&a));
    }

    #[test]
    fn a_replaced_directory_gets_nothing_that_was_queued_for_it() {
        let t = tempfile::tempdir().unwrap();
        let mut w = LayerWriter::open(t.path()).unwrap();
        let d = LayerPath::parse(b"d").unwrap();
        let meta = Meta {
            mode: 0o4755,
            ..Meta::default()
        };
        w.mkdir(&d, meta).unwrap();
        w.mkdir(&LayerPath::parse(b"d/sub").unwrap(), Meta::default())
            .unwrap();
        let file = Meta {
            mode: 0o644,
            ..Meta::default()
        };
        w.file(&d, &file, &mut &b"x"[..]).unwrap();
        w.finish().unwrap();
        let st = std::fs::symlink_metadata(t.path().join("d")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(st.is_file());
        assert_eq!(st.mode() & 0o7777, 0o644);
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut w = LayerWriter::open(t.path()).unwrap();
        let l = LayerPath::parse(b"l").unwrap();
        w.symlink(&l, outside.path().as_os_str(), &Meta::default())
            .unwrap();
        let below = LayerPath::parse(b"l/f").unwrap();
        let e = w
            .file(&below, &Meta::default(), &mut &b"x"[..])
            .unwrap_err();
        assert!(e.why.contains("symlink"), "{e}");
        assert!(w.mkdir(&below, Meta::default()).is_err());
        assert!(w.opaque(&l).is_err());
        w.finish().unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn deep_trees_are_removed_without_recursion() {
        let t = tempfile::tempdir().unwrap();
        let mut w = LayerWriter::open(t.path()).unwrap();
        let mut p = LayerPath::root();
        for _ in 0..3000 {
            p = p.join(OsStr::new("d"));
        }
        w.mkdir(&p, Meta::default()).unwrap();
        w.remove(&LayerPath::parse(b"d").unwrap()).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
