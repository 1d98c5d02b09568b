//! Lookup (the kernel's namei.c): resolving a name through the stack into a node of the
//! table, under the shared lock first and the exclusive one only to insert, and forget.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::copy_up::index_name;
use super::nodes::{Node, Tree};
use super::readdir;
use super::{errno, Overlay, TRIM_AFTER_FORGETTING};
use crate::error::Result;
use crate::layers::stack::Found;
use crate::sys::{self, Stat};

impl Overlay {
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
    pub(super) fn child(&self, tree: &mut Tree, parent: u64, name: &OsStr) -> Result<Option<u64>> {
        if let Some(id) = tree.child(parent, name) {
            return Ok(Some(id));
        }
        match self.resolve_child(tree, parent, name)? {
            Some(found) => Ok(Some(self.insert_found(tree, parent, name, found, false))),
            None => Ok(None),
        }
    }

    pub(super) fn insert_found(
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

    pub(super) fn resolve_child(
        &self,
        tree: &Tree,
        parent: u64,
        name: &OsStr,
    ) -> Result<Option<Found>> {
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
    pub(super) fn lower_has(&self, tree: &Tree, parent: u64, name: &OsStr) -> Result<bool> {
        let pnode = tree.get(parent).ok_or_else(|| errno(libc::ENOENT))?;
        Ok(self.stack.resolve(None, &pnode.lower_dirs, name)?.is_some())
    }

    /// Whether the merged directory `id` lists no entry (rmdir's and rename's ENOTEMPTY).
    pub(super) fn merged_dir_is_empty(&self, tree: &Tree, id: u64) -> Result<bool> {
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        let upath = if node.upper {
            Some(self.path(tree, id)?)
        } else {
            None
        };
        readdir::is_empty(&self.stack, upath.as_deref(), &node.lower_dirs)
    }

    pub(super) fn path(&self, tree: &Tree, id: u64) -> Result<PathBuf> {
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
}
