//! Inode attributes (the kernel's inode.c): what the mount reports for a node (its
//! layer's stat, the override_stat xattr, merged link counts) and setattr.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;

use super::nodes::{Node, Tree};
use super::{errno, Loc, Overlay, SetAttr};
use crate::error::Result;
use crate::layers::whiteout;
use crate::sys::{self, Stat};

impl Overlay {
    /// The attributes the mount reports for node `id` once its layer's override_stat
    /// xattr (fuse-overlayfs's, see `whiteout::OverrideStat`) has its say: only in a
    /// layer that keeps one, and, as in fuse-overlayfs, only for directories and regular
    /// files (the only objects `user.*` xattrs can be set on).
    pub(super) fn overridden(&self, tree: &Tree, id: u64, mut st: Stat) -> Stat {
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

    pub(super) fn stat_node(&self, tree: &Tree, id: u64) -> Result<Stat> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        let st = self.stat_loc(&self.loc(tree, id)?)?;
        Ok(self.overridden(tree, id, self.adjust_stat(node, st)))
    }

    /// What the mount reports for `node` from the stat of its layer object.
    pub(super) fn adjust_stat(&self, node: &Node, mut st: Stat) -> Stat {
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
}
