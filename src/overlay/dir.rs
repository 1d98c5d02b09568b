//! Directory operations (the kernel's dir.c): create, link, unlink, rmdir and rename, and
//! the whiteouts, opaque markers and redirects they leave in the upper layer.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::nodes::{Node, Tree, ROOT};
use super::{errno, Caller, NewKind, Overlay};
use crate::error::{Context, Error, Result};
use crate::layers::acl;
use crate::layers::layer::split;
use crate::layers::redirect::{self, Redirect};
use crate::layers::whiteout::{self, Encoding};
use crate::layers::workdir::{remove_contents_of, remove_tree, WorkDir};
use crate::sys::{self, Stat};

impl Overlay {
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
                let _ = remove_tree(dir, &tmp);
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

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    pub(super) fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        self.upper()?;
        let mut tree = self.change_tree();
        let id = self
            .child(&mut tree, parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        self.check_removable(&tree, id, node.is_dir(), dir)?;
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
    pub(super) fn check_whiteout_fits(&self, name: &OsStr, need_whiteout: bool) -> Result<()> {
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
    pub(super) fn remove_upper_name(
        &self,
        pdir: BorrowedFd,
        name: &OsStr,
        is_dir: bool,
        need_whiteout: bool,
        known_present: Option<bool>,
    ) -> Result<()> {
        let work = self.work()?;
        let present = known_present.unwrap_or_else(|| is_present(pdir, name));
        if present && is_dir {
            // Only whiteouts and markers are left in a directory that lists as empty.
            remove_contents_of(pdir, name)?;
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
    pub(super) fn make_whiteout(
        &self,
        dir: BorrowedFd,
        name: &OsStr,
        encoding: Encoding,
    ) -> Result<()> {
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
    pub(super) fn pin_if_last_name(&self, tree: &mut Tree, id: u64) -> Result<()> {
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

    /// Whether the object `id` (a directory if `is_dir`) may go where a directory (if
    /// `dir`) or a non-directory is removed or renamed over: the errno rmdir, unlink and
    /// rename give otherwise.
    fn check_removable(&self, tree: &Tree, id: u64, is_dir: bool, dir: bool) -> Result<()> {
        match (dir, is_dir) {
            (false, true) => Err(errno(libc::EISDIR)),
            (true, false) => Err(errno(libc::ENOTDIR)),
            (true, true) if !self.merged_dir_is_empty(tree, id)? => Err(errno(libc::ENOTEMPTY)),
            _ => Ok(()),
        }
    }

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
                self.check_removable(&tree, dst, dnode.is_dir(), src_dir)?;
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
        let dst_present = is_present(ddir.as_fd(), newname);
        if dst_present && src_dir {
            remove_contents_of(ddir.as_fd(), newname)?;
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
    pub(super) fn forget_renamed_dirs(
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
    pub(super) fn mark_moved_dir(
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
    pub(super) fn upper_redirect(&self, path: &Path) -> Option<Redirect> {
        let upper = self.stack.upper.as_ref()?;
        let (parent, name) = split(path);
        let dir = upper.dir(parent).ok()?;
        Redirect::parse(&whiteout::redirect(dir.as_fd(), name?)?).ok()
    }
}

/// A node whose last name went is no longer at its upper path; one kept open stays "upper"
/// so that changes through its handle never copy anything up again.
pub(super) fn forget_upper_if_gone(tree: &mut Tree, id: u64) {
    if let Some(n) = tree.get_mut(id) {
        if n.aliases().is_empty() && n.pinned.is_none() {
            n.upper = false;
        }
    }
}

/// Names the overlay reserves for its markers cannot be created through the mount: with the
/// `.wh.` encoding they would read back as deletions.
pub(super) fn check_new_name(name: &OsStr) -> Result<()> {
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

pub(super) fn has_whiteout(dir: BorrowedFd, name: &OsStr) -> bool {
    matches!(sys::fstatat(dir, name), Ok(st) if whiteout::is_chardev_whiteout(&st))
        || whiteout::has_whiteout_file(dir, name)
}

/// Moves the prepared `tmp` (in work/work) onto `name`, which holds a whiteout.
pub(super) fn replace_whiteout(
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
pub(super) fn default_acl(dir: BorrowedFd) -> Result<Option<Vec<u8>>> {
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
pub(super) fn make_object(
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

/// Whether `name` in `dir` is a real entry: there, and not a char-device whiteout.
pub(super) fn is_present(dir: BorrowedFd, name: &OsStr) -> bool {
    matches!(sys::fstatat(dir, name), Ok(st) if !whiteout::is_chardev_whiteout(&st))
}
