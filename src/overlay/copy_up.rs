//! Copy-up: bringing an object from a lower layer into the upper one before its first
//! change. The copy is prepared under workdir and renamed into place, so neither a reader
//! nor a crash ever sees a half-copied file. Data (with its holes), mode, owner, times and
//! xattrs are kept; the overlay's own xattrs are not copied.
//!
//! One place decides what a copy-up needs (the policy: which node, whether it goes through
//! the workdir index because its lower inode has several links) and does it (the data).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dir::is_present;
use super::nodes::{LowerRef, Node, Tree};
use super::{errno, Overlay};
use crate::error::{Context, Error, Result};
use crate::layers::layer::split;
use crate::layers::whiteout;
use crate::layers::workdir::{remove_tree, WorkDir};
use crate::sys::{self, Stat};

/// The index entry of a hard-linked lower inode is named by the inode number the mount
/// reports for it, which every name of it carries (recorded on the upper copy too).
pub fn index_name(st_ino: u64) -> std::ffi::OsString {
    std::ffi::OsString::from(format!("{st_ino:016x}"))
}

/// What copying one node up takes. [`Plan::for_node`] says what the node table alone
/// decides; for the rest the lower object's link count does ([`Plan::for_lower`]), which
/// costs a stat. Pure, so the policy is tested without a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// In the upper layer already, under every name: nothing to do.
    Done,
    /// A hard-linked lower inode whose copy is in the workdir index: each of its names
    /// becomes a link to that copy.
    LinkIndex,
    /// A hard-linked lower inode not copied yet: copied into the index, then linked.
    Index,
    /// Anything else: copied through `work/work` and renamed into place.
    Copy,
}

impl Plan {
    /// What the node decides by itself; `None`: the lower object's link count decides.
    pub fn for_node(node: &Node) -> Option<Plan> {
        if node.indexed {
            Some(Plan::LinkIndex)
        } else if node.upper {
            Some(Plan::Done)
        } else if node.is_dir() || node.single_lower_link {
            // A directory's link count counts its subdirectories, not its names.
            Some(Plan::Copy)
        } else {
            None
        }
    }

    /// For a node [`for_node`](Plan::for_node) leaves open: from its lower object's stat.
    pub fn for_lower(st: &Stat) -> Plan {
        if st.st_nlink > 1 {
            Plan::Index
        } else {
            Plan::Copy
        }
    }

    /// Whether the node's data may be copied before the namespace lock is taken
    /// (`prepare_copy_up`): a regular file that may turn out a plain copy.
    pub fn copies_ahead(node: &Node) -> bool {
        node.kind == libc::S_IFREG && matches!(Plan::for_node(node), None | Some(Plan::Copy))
    }

    /// The same once its lower object's stat is known.
    pub fn lower_copies_ahead(st: &Stat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFREG && Plan::for_lower(st) == Plan::Copy
    }
}

/// The object to copy: its lower directory handle and name there, and its stat.
pub struct Source<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: &'a OsStr,
    pub stat: &'a Stat,
}

/// The copy half of the workdir (its layout is `layers::workdir`): copy-up's data copy,
/// kept with the rest of copy-up.
impl WorkDir {
    /// Copies `src` into `work/work` under a temporary name and returns that name.
    /// A directory is copied without its content.
    pub fn prepare(&self, src: &Source, st_ino_attr: Option<(&str, u64)>) -> Result<OsString> {
        let tmp = self.temp_name();
        let fmt = src.stat.st_mode & libc::S_IFMT;
        let result = (|| -> Result<()> {
            match fmt {
                libc::S_IFDIR => sys::mkdirat(self.temp(), &tmp, 0o700)?,
                libc::S_IFLNK => {
                    let target = sys::readlinkat(src.dir, src.name)?;
                    sys::symlinkat(&target, self.temp(), &tmp)?;
                }
                libc::S_IFREG => {
                    let input =
                        sys::openat(src.dir, src.name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
                    let output = sys::openat(
                        self.temp(),
                        &tmp,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                        0o600,
                    )?;
                    copy_data(input.as_fd(), output.as_fd(), src.stat.st_size as u64)?;
                    if self.fsync {
                        sys::fsync(output.as_fd(), false)?;
                    }
                }
                _ => sys::mknodat(self.temp(), &tmp, fmt | 0o600, src.stat.st_rdev)?,
            }
            copy_metadata(src, self.temp(), &tmp)?;
            if let Some((attr, ino)) = st_ino_attr {
                // Symlinks take no user.* xattrs; their inode number then follows the upper
                // inode after copy-up, which only `ls -i` on a symlink can notice.
                match sys::setxattr(self.temp(), &tmp, OsStr::new(attr), &ino.to_le_bytes(), 0) {
                    Err(e) if fmt != libc::S_IFLNK => return Err(e.into()),
                    _ => {}
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = remove_tree(self.temp(), &tmp);
            return Err(e);
        }
        Ok(tmp)
    }
}

/// Copies `len` bytes, keeping holes: a reflink where the filesystem shares blocks, else
/// only the data ranges `SEEK_DATA`/`SEEK_HOLE` report, with `copy_file_range`.
pub fn copy_data(input: BorrowedFd, output: BorrowedFd, len: u64) -> Result<()> {
    if len == 0 || sys::ficlone(output, input).is_ok() {
        return Ok(());
    }
    let mut off = 0u64;
    while off < len {
        let data = match sys::lseek(input, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // No SEEK_DATA support: treat everything as data.
            Err(_) => off,
        };
        if data >= len {
            break;
        }
        let hole = sys::lseek(input, data as i64, libc::SEEK_HOLE)
            .map(|h| h as u64)
            .unwrap_or(len)
            .min(len);
        copy_range(input, output, data, hole - data)?;
        off = hole;
    }
    sys::ftruncate(output, len)?;
    Ok(())
}

fn copy_range(input: BorrowedFd, output: BorrowedFd, mut off: u64, mut len: u64) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        let n = match sys::copy_file_range(input, off, output, off, chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
                ) =>
            {
                if buf.is_empty() {
                    buf.resize(1 << 20, 0);
                }
                let want = chunk.min(buf.len());
                let n = sys::pread(input, &mut buf[..want], off)?;
                if n > 0 {
                    write_all(output, &buf[..n], off)?;
                }
                n
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        off += n as u64;
        len -= n as u64;
    }
    Ok(())
}

fn write_all(fd: BorrowedFd, mut data: &[u8], mut off: u64) -> Result<()> {
    while !data.is_empty() {
        let n = sys::pwrite(fd, data, off)?;
        data = &data[n..];
        off += n as u64;
    }
    Ok(())
}

/// Owner, xattrs, mode and times of `src` onto `name` in `dir`, in the order that keeps
/// them: chown first (it clears set-id bits and security.capability), mode and
/// capabilities after it, times last.
pub fn copy_metadata(src: &Source, dir: BorrowedFd, name: &OsStr) -> Result<()> {
    let st = src.stat;
    let fmt = st.st_mode & libc::S_IFMT;
    sys::fchownat(dir, name, st.st_uid, st.st_gid)?;
    copy_xattrs(src.dir, src.name, dir, name)?;
    if fmt != libc::S_IFLNK {
        sys::fchmodat(dir, name, st.st_mode & 0o7777)?;
    }
    let times = [
        sys::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        sys::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    sys::utimensat(dir, name, &times)?;
    Ok(())
}

/// Copies every xattr but the overlay's own. Xattrs the daemon may not write where it
/// runs (trusted.* or security.* in a user namespace) are left out with a debug line:
/// kernel overlayfs in a user namespace cannot copy them either.
pub fn copy_xattrs(sdir: BorrowedFd, sname: &OsStr, ddir: BorrowedFd, dname: &OsStr) -> Result<()> {
    let names = match sys::listxattr(sdir, sname) {
        Ok(n) => n,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for attr in names {
        // fuse-overlayfs's opaque mark stays with the layer it was set in, as the overlay's
        // own does; its override_stat (the owner and mode) travels with the copy.
        if whiteout::is_private_xattr(&attr) || attr == whiteout::FUSE_OVERLAYFS_OPAQUE {
            continue;
        }
        let value = match sys::getxattr(sdir, sname, &attr) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("reading xattr {}", attr.to_string_lossy()))
                )
            }
        };
        if let Err(e) = sys::setxattr(ddir, dname, &attr, &value, 0) {
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOTSUP | libc::EACCES)
            ) {
                log::debug!("copy-up: xattr {} not kept: {e}", attr.to_string_lossy());
                continue;
            }
            return Err(Error::from(e).context(format!("writing xattr {}", attr.to_string_lossy())));
        }
    }
    Ok(())
}

/// A lower file's copy in the workdir, made without the namespace lock.
pub(super) struct Prepared {
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
            let _ = remove_tree(work.temp(), &p.tmp);
        }
    }
}

impl Overlay {
    /// A lower place's directory, its name there, and what it is.
    pub(super) fn lower_entry<'p>(
        &self,
        lower: &'p LowerRef,
    ) -> Result<(Arc<OwnedFd>, &'p OsStr, Stat)> {
        let layer = &self.stack.lowers[lower.layer];
        let (lparent, lname) = split(&lower.path);
        let lname = lname.ok_or_else(|| errno(libc::EINVAL))?;
        let ldir = layer.dir(lparent)?;
        let st = sys::fstatat(ldir.as_fd(), lname).context(layer.describe(&lower.path))?;
        Ok((ldir, lname, st))
    }

    /// Copies the lower entry `(dir, name, stat)` found at `lower` into `work/work`, as the
    /// object reported with inode number `st_ino`; returns its temporary name.
    pub(super) fn copy_to_work(
        &self,
        work: &WorkDir,
        lower: &LowerRef,
        (dir, name, stat): &(Arc<OwnedFd>, &OsStr, Stat),
        st_ino: u64,
    ) -> Result<OsString> {
        let src = Source {
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
    pub(super) fn prepare_copy_up(&self, id: u64) -> PreparedCopy<'_> {
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
            if !Plan::copies_ahead(node) {
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
        if !Plan::lower_copies_ahead(&entry.2) {
            return guard;
        }
        let Ok(tmp) = self.copy_to_work(work, &lower, &entry, st_ino) else {
            return guard;
        };
        let mut prepared = self.prepared.lock();
        if prepared.contains_key(&id) {
            // Another request prepared one meanwhile; it will be used.
            drop(prepared);
            let _ = remove_tree(work.temp(), &tmp);
            return guard;
        }
        prepared.insert(id, Prepared { tmp, from: lower });
        guard.id = Some(id);
        guard
    }

    /// Makes `id` exist in the upper layer, copying its parents first, outermost first.
    /// A loop, not a recursion: the depth is the layers' (a lower file 3,000 directories
    /// deep once overflowed a worker's stack and aborted the daemon).
    pub(super) fn copy_up(&self, tree: &mut Tree, id: u64) -> Result<()> {
        let mut missing = Vec::new();
        let mut cur = id;
        loop {
            let node = tree.get(cur).ok_or_else(|| errno(libc::ENOENT))?;
            if Plan::for_node(node) == Some(Plan::Done) {
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
    pub(super) fn copy_up_one(&self, tree: &mut Tree, id: u64) -> Result<()> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if Plan::for_node(node) == Some(Plan::Done) {
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
                let present = is_present(pdir.as_fd(), &name);
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
    pub(super) fn ensure_index(&self, tree: &mut Tree, id: u64) -> Result<Option<OsString>> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        match Plan::for_node(node) {
            Some(Plan::LinkIndex) => return Ok(node.index()),
            Some(_) => return Ok(None),
            None => {}
        }
        let Some(lower) = tree.lower_of(id) else {
            return Ok(None);
        };
        let entry = self.lower_entry(&lower)?;
        if Plan::for_lower(&entry.2) != Plan::Index {
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
    pub(super) fn index_nlink(&self, idx: &OsStr) -> Option<u32> {
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
    pub(super) fn adjust_index_nlink(&self, tree: &Tree, id: u64, delta: i32) -> Result<()> {
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
    pub(super) fn upper_dir(&self, tree: &mut Tree, id: u64) -> Result<Arc<OwnedFd>> {
        self.copy_up(tree, id)?;
        let path = self.path(tree, id)?;
        self.upper()?.dir(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    /// A node as a lookup leaves it: found in a lower layer, nothing known of its links.
    fn lower_node(kind: u32) -> Node {
        let mut n = Node::new(kind, 100);
        n.lower_layer = Some(0);
        n
    }

    fn stat(dir: &Path, name: &str) -> Stat {
        let d = fs::File::open(dir).unwrap();
        sys::fstatat(d.as_fd(), OsStr::new(name)).unwrap()
    }

    /// A temp dir holding `f` (one link), `h1` and `h2` (one inode), `d` (a directory
    /// with a subdirectory) and `s` (a symlink).
    fn lower() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), "one").unwrap();
        fs::write(t.path().join("h1"), "two").unwrap();
        fs::hard_link(t.path().join("h1"), t.path().join("h2")).unwrap();
        fs::create_dir_all(t.path().join("d/sub")).unwrap();
        std::os::unix::fs::symlink("f", t.path().join("s")).unwrap();
        t
    }

    #[test]
    fn a_lower_file_of_one_link_is_copied_and_may_be_copied_ahead() {
        let t = lower();
        let n = lower_node(libc::S_IFREG);
        assert_eq!(Plan::for_node(&n), None);
        let st = stat(t.path(), "f");
        assert_eq!(Plan::for_lower(&st), Plan::Copy);
        assert!(Plan::copies_ahead(&n) && Plan::lower_copies_ahead(&st));
        // Known at lookup to have one link: no stat needed.
        let mut n = n;
        n.single_lower_link = true;
        assert_eq!(Plan::for_node(&n), Some(Plan::Copy));
        assert!(Plan::copies_ahead(&n));
    }

    #[test]
    fn a_hard_linked_lower_file_goes_through_the_index() {
        let t = lower();
        let n = lower_node(libc::S_IFREG);
        let st = stat(t.path(), "h2");
        assert_eq!(st.st_nlink, 2);
        assert_eq!(Plan::for_node(&n), None);
        assert_eq!(Plan::for_lower(&st), Plan::Index);
        // Never copied ahead: its copy is the index entry every name shares.
        assert!(!Plan::lower_copies_ahead(&st));
        // Once in the index, every further name is only linked, whether or not one of
        // its names is in the upper layer already.
        let mut n = n;
        n.indexed = true;
        assert_eq!(Plan::for_node(&n), Some(Plan::LinkIndex));
        n.upper = true;
        assert_eq!(Plan::for_node(&n), Some(Plan::LinkIndex));
        assert!(!Plan::copies_ahead(&n));
        assert_eq!(n.index(), Some(index_name(100)));
    }

    #[test]
    fn a_directory_is_copied_whatever_its_link_count() {
        let t = lower();
        let n = lower_node(libc::S_IFDIR);
        assert!(stat(t.path(), "d").st_nlink > 1);
        assert_eq!(Plan::for_node(&n), Some(Plan::Copy));
        assert!(!Plan::copies_ahead(&n));
        assert!(!Plan::lower_copies_ahead(&stat(t.path(), "d")));
    }

    #[test]
    fn an_upper_node_needs_nothing() {
        let mut n = lower_node(libc::S_IFREG);
        n.upper = true;
        assert_eq!(Plan::for_node(&n), Some(Plan::Done));
        assert!(!Plan::copies_ahead(&n));
        let mut d = Node::new(libc::S_IFDIR, 5);
        d.upper = true;
        assert_eq!(Plan::for_node(&d), Some(Plan::Done));
    }

    #[test]
    fn only_regular_files_are_copied_ahead() {
        let t = lower();
        let n = lower_node(libc::S_IFLNK);
        let st = stat(t.path(), "s");
        assert_eq!(Plan::for_lower(&st), Plan::Copy);
        assert!(!Plan::copies_ahead(&n));
        assert!(!Plan::lower_copies_ahead(&st));
        // A node that was a file at lookup but whose lower object is something else now.
        assert!(Plan::copies_ahead(&lower_node(libc::S_IFREG)));
        assert!(!Plan::lower_copies_ahead(&st));
    }

    #[test]
    fn a_prepared_copy_keeps_data_holes_metadata_and_user_xattrs_only() {
        let t = lower();
        let work_root = tempfile::tempdir().unwrap();
        let src_dir = fs::File::open(t.path()).unwrap();
        // 1 MiB with data only at the start and the end.
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(t.path().join("sparse"))
            .unwrap();
        sys::pwrite(f.as_fd(), b"head", 0).unwrap();
        sys::pwrite(f.as_fd(), b"tail", (1 << 20) - 4).unwrap();
        drop(f);
        fs::set_permissions(
            t.path().join("sparse"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4751),
        )
        .unwrap();
        for (attr, v) in [("user.keep", &b"k"[..]), ("user.overlay.opaque", b"y")] {
            sys::setxattr(
                src_dir.as_fd(),
                OsStr::new("sparse"),
                OsStr::new(attr),
                v,
                0,
            )
            .unwrap();
        }
        let times = [
            sys::Timespec {
                tv_sec: 1000,
                tv_nsec: 5,
            },
            sys::Timespec {
                tv_sec: 2000,
                tv_nsec: 7,
            },
        ];
        sys::utimensat(src_dir.as_fd(), OsStr::new("sparse"), &times).unwrap();
        let st = stat(t.path(), "sparse");

        let work_fd = fs::File::open(work_root.path()).unwrap();
        let work = WorkDir::open(work_fd.as_fd(), false).unwrap();
        let src = Source {
            dir: src_dir.as_fd(),
            name: OsStr::new("sparse"),
            stat: &st,
        };
        let tmp = work.prepare(&src, Some(("user.layerfs.ino", 42))).unwrap();
        let copy = work_root.path().join("work").join(&tmp);
        let data = fs::read(&copy).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data.starts_with(b"head") && data.ends_with(b"tail"));
        let md = fs::metadata(&copy).unwrap();
        // The hole stays a hole (ext4 and tmpfs allocate 4 KiB blocks).
        assert!(md.blocks() * 512 < 64 * 1024, "{} blocks", md.blocks());
        assert_eq!(md.mode() & 0o7777, 0o4751);
        assert_eq!((md.mtime(), md.mtime_nsec()), (2000, 7));
        assert_eq!((md.uid(), md.gid()), (st.st_uid, st.st_gid));
        let wdir = fs::File::open(work_root.path().join("work")).unwrap();
        let names = sys::listxattr(wdir.as_fd(), &tmp).unwrap();
        assert!(names.iter().any(|n| n == "user.keep"), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "user.overlay.opaque"),
            "{names:?}"
        );
        let ino = sys::getxattr(wdir.as_fd(), &tmp, OsStr::new("user.layerfs.ino")).unwrap();
        assert_eq!(ino, 42u64.to_le_bytes());
        // A directory is copied without its content.
        let d = stat(t.path(), "d");
        let src = Source {
            dir: src_dir.as_fd(),
            name: OsStr::new("d"),
            stat: &d,
        };
        let tmp = work.prepare(&src, None).unwrap();
        assert!(fs::read_dir(work_root.path().join("work").join(&tmp))
            .unwrap()
            .next()
            .is_none());
    }
}
