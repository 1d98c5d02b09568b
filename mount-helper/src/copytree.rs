//! Copying entries with their metadata (owner, mode, times, xattrs) into a layer being
//! built, preserving hard links. Sources are read through directory handles without
//! following symlinks (a container's upper directory is the container's to shape);
//! everything is written through the confined writer. No recursion: a tree's depth is the
//! source's to choose.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use layerfs::layers::writer::{self, LayerPath, LayerWriter, Meta};
use layerfs::sys::{self, Stat};

use crate::encoding;
use crate::err;
use crate::error::{Context, Result};

pub struct Copier {
    pub w: LayerWriter,
    /// (dev, ino) of a source inode already copied -> where its copy lives and the copy's
    /// inode, so that further names of the same inode become hard links in the copy too
    /// (and only while that copy is still what the path holds).
    links: HashMap<(u64, u64), (LayerPath, u64)>,
    /// The same, by the copy's path: replacing or removing a path forgets the copies at
    /// and below it. Comparing inode numbers is not enough, since the file system soon
    /// gives a freed number to the next new inode, often the replacing entry itself.
    link_paths: BTreeMap<LayerPath, (u64, u64)>,
    /// Count of entries copied, for progress reporting.
    pub copied: u64,
}

pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The metadata of `name` in `dir` (empty name: `dir` itself) as the writer takes it, with
/// its non-private xattrs.
pub fn meta_of(dir: BorrowedFd, name: &OsStr, st: &Stat) -> io::Result<Meta> {
    let mut xattrs = Vec::new();
    let names = match sys::listxattr(dir, name) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(e),
    };
    for attr in names {
        if encoding::is_private_xattr(std::os::unix::ffi::OsStrExt::as_bytes(attr.as_os_str())) {
            continue;
        }
        match sys::getxattr(dir, name, &attr) {
            Ok(v) => xattrs.push((attr, v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
        xattrs,
    })
}

impl Copier {
    pub fn new(w: LayerWriter) -> Copier {
        Copier {
            w,
            links: HashMap::new(),
            link_paths: BTreeMap::new(),
            copied: 0,
        }
    }

    /// Copies entry `name` of source directory `dir` (stat `st`) to `dst`, replacing what
    /// `dst` held. A directory is made (its content is the caller's to copy).
    pub fn copy_entry(
        &mut self,
        dir: BorrowedFd,
        name: &OsStr,
        st: &Stat,
        dst: &LayerPath,
    ) -> Result<()> {
        self.copied += 1;
        let shown = || {
            format!(
                "copying {} of the source to {}",
                name.to_string_lossy(),
                dst.display()
            )
        };
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFSOCK {
            // A socket cannot be stored in a tar layer; docker skips them too.
            return Ok(());
        }
        let key = (st.st_dev, st.st_ino);
        if kind == libc::S_IFDIR {
            // A directory over a directory keeps its content (the writer's dir over dir);
            // over anything else it replaces that one entry.
            self.forget_exactly(dst);
        } else {
            self.forget(dst);
        }
        if kind != libc::S_IFDIR && st.st_nlink > 1 {
            if let Some((first, ino)) = self.links.get(&key).cloned() {
                if self.w.ino_of(&first) == Some(ino) {
                    self.w
                        .hardlink(dst, &first)
                        .map_err(|e| err!("{}: {e}", shown()))?;
                    self.link_paths.insert(dst.clone(), key);
                    return Ok(());
                }
            }
        }
        let meta = meta_of(dir, name, st).ctx(|| format!("reading {}", shown()))?;
        let done = match kind {
            libc::S_IFDIR => self.w.mkdir(dst, meta),
            libc::S_IFREG => {
                // O_NONBLOCK: should the name be swapped for a FIFO under us, the open
                // must not hang; the fstat checks it is still the inode listed.
                let fd = sys::openat(
                    dir,
                    name,
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                    0,
                )
                .ctx(|| format!("opening {}", shown()))?;
                let now = sys::fstat(fd.as_fd()).ctx(|| format!("stat {}", shown()))?;
                if now.st_ino != st.st_ino || now.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(err!("{}: the source changed while it was read", shown()));
                }
                let mut f = File::from(fd);
                self.w.file(dst, &meta, &mut f).map(drop)
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(dir, name).ctx(|| format!("reading {}", shown()))?;
                self.w.symlink(dst, &target, &meta)
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                self.w.mknod(dst, kind, st.st_rdev, &meta)
            }
            _ => return Err(err!("{}: unsupported file type", shown())),
        };
        done.map_err(|e| err!("{}: {e}", shown()))?;
        if kind != libc::S_IFDIR && st.st_nlink > 1 {
            if let Some(ino) = self.w.ino_of(dst) {
                self.links.insert(key, (dst.clone(), ino));
                self.link_paths.insert(dst.clone(), key);
            }
        }
        Ok(())
    }

    /// Removes whatever `path` holds (the writer's [`LayerWriter::remove`]), forgetting
    /// the copies there.
    pub fn remove(&mut self, path: &LayerPath) -> Result<()> {
        self.forget(path);
        self.w
            .remove(path)
            .map_err(|e| err!("upper directory: {e}"))
    }

    /// Forgets the copy at `path`; another name of the same copy, if any, takes its place.
    fn forget_exactly(&mut self, path: &LayerPath) {
        let Some(key) = self.link_paths.remove(path) else {
            return;
        };
        let Some((first, ino)) = self.links.get(&key).cloned() else {
            return;
        };
        if first != *path {
            return;
        }
        let other = self
            .link_paths
            .iter()
            .find(|(_, k)| **k == key)
            .map(|(p, _)| p.clone());
        match other {
            Some(p) => self.links.insert(key, (p, ino)),
            None => self.links.remove(&key),
        };
    }

    /// Forgets the copies at and below `path`, which is about to be replaced.
    fn forget(&mut self, path: &LayerPath) {
        let gone: Vec<LayerPath> = self
            .link_paths
            .range(path.clone()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.forget_exactly(&p);
        }
    }

    /// [`Copier::copy_entry`] for a file whose further copies must all be one inode, even
    /// if the source has a single link (the workdir index entry of a hard-link set).
    pub fn copy_shared(
        &mut self,
        dir: BorrowedFd,
        name: &OsStr,
        st: &Stat,
        dst: &LayerPath,
    ) -> Result<()> {
        let mut st = *st;
        st.st_nlink = st.st_nlink.max(2);
        self.copy_entry(dir, name, &st, dst)
    }

    /// Copies everything below the source directory `src` into directory `dst` (which the
    /// caller made), without recursion. Subdirectories wait as (parent handle, name), so the
    /// handles held are one per level, not one per directory.
    pub fn copy_tree_into(&mut self, src: OwnedFd, dst: &LayerPath, tick: &dyn Fn()) -> Result<()> {
        let mut stack: Vec<(Rc<OwnedFd>, Option<OsString>, LayerPath)> =
            vec![(Rc::new(src), None, dst.clone())];
        while let Some((parent, name, out)) = stack.pop() {
            let dir = match name {
                None => parent,
                Some(n) => Rc::new(
                    open_subdir(parent.as_fd(), &n)
                        .ctx(|| format!("opening the source of {}", out.display()))?,
                ),
            };
            let names = sorted_names(dir.as_fd())
                .ctx(|| format!("reading the source of {}", out.display()))?;
            for name in names {
                tick();
                let st = sys::fstatat(dir.as_fd(), &name).ctx(|| {
                    format!(
                        "stat {} in the source of {}",
                        name.to_string_lossy(),
                        out.display()
                    )
                })?;
                let d = out.join(&name);
                self.copy_entry(dir.as_fd(), &name, &st, &d)?;
                if is_dir(&st) {
                    stack.push((Rc::clone(&dir), Some(name), d));
                }
            }
        }
        Ok(())
    }

    /// Applies the directories' metadata (see [`LayerWriter::finish`]).
    pub fn finish(self) -> Result<()> {
        self.w
            .finish()
            .map_err(|e| err!("finishing the layer: {e}"))
    }
}

/// Opens subdirectory `name` of `dir`, refusing a symlink.
pub fn open_subdir(dir: BorrowedFd, name: &OsStr) -> io::Result<OwnedFd> {
    sys::openat_beneath(dir, Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Sorted entries of the directory `dir`.
pub fn sorted_names(dir: BorrowedFd) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = sys::read_dir(dir)?.into_iter().map(|e| e.0).collect();
    names.sort();
    Ok(names)
}

/// Removes whatever is at `path` (file, link or whole tree, never following a symlink and
/// without recursion); absent is fine. For the store's own paths.
pub fn remove_any(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(err!("refusing to remove {}", path.display()));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match File::open(parent) {
        Ok(f) => OwnedFd::from(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err!("opening {}: {e}", parent.display())),
    };
    writer::remove_at(dir.as_fd(), name).ctx(|| format!("removing {}", path.display()))
}
