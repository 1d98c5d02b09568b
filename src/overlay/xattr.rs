//! Extended attributes (the kernel's xattrs.c): the caller's xattrs, with the overlay's
//! own markers hidden, read where the object is and written after a copy-up.

use std::ffi::{OsStr, OsString};
use std::sync::atomic::Ordering;

use super::nodes::{XATTRS_NONE, XATTRS_SOME, XATTRS_UNKNOWN};
use super::{errno, Loc, Overlay};
use crate::error::Result;
use crate::layers::whiteout;
use crate::sys;

impl Overlay {
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
}
