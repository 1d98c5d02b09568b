//! Copying entries with their metadata (owner, mode, times, xattrs) into a layer being
//! built, preserving hard links. Directory metadata is applied last (deepest first) so that
//! filling a directory does not disturb its mtime or trip over a read-only mode.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::encoding;
use crate::err;
use crate::error::{Context, Result};
use crate::sys;

#[derive(Default)]
pub struct Copier {
    /// (dev, ino) of a source file already copied -> where its copy lives, so that
    /// further names of the same inode become hard links in the copy too.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories created, with the metadata to give them once they are full.
    dirs: Vec<(PathBuf, PathBuf)>,
    /// Count of entries copied, for progress reporting.
    pub copied: u64,
}

/// Copies the non-private xattrs of `src` onto `dst`.
pub fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    for name in sys::list_xattrs(src).ctx(|| format!("listing xattrs of {}", src.display()))? {
        if encoding::is_private_xattr(&name) {
            continue;
        }
        if let Some(v) =
            sys::get_xattr(src, &name).ctx(|| format!("reading xattr of {}", src.display()))?
        {
            if let Err(e) = sys::set_xattr(dst, &name, &v) {
                // Without privilege some namespaces (trusted.*, security.*) cannot be
                // written; the copy keeps what the user could have written anyway.
                if sys::is_root() {
                    return Err(err!("setting xattr on {}: {}", dst.display(), e));
                }
            }
        }
    }
    Ok(())
}

/// Applies owner, mode and times of `meta` to `dst`.
pub fn apply_meta(dst: &Path, meta: &fs::Metadata) -> Result<()> {
    if let Err(e) = sys::lchown(dst, meta.uid(), meta.gid()) {
        // An unprivileged user cannot give files away; the layer then records the
        // user's own ids (the rootless issue maps them).
        if sys::is_root() {
            return Err(err!("chown {}: {}", dst.display(), e));
        }
    }
    if !meta.file_type().is_symlink() {
        // After chown: chown clears set-id bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .ctx(|| format!("chmod {}", dst.display()))?;
    }
    sys::set_times(dst, meta.mtime(), meta.mtime_nsec())
        .ctx(|| format!("setting times of {}", dst.display()))
}

impl Copier {
    /// Copies one non-directory entry `src` to `dst` (which must not exist).
    pub fn copy_file(&mut self, src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<()> {
        self.copied += 1;
        let ft = meta.file_type();
        let key = (meta.dev(), meta.ino());
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                return fs::hard_link(first, dst)
                    .ctx(|| format!("linking {} to {}", dst.display(), first.display()));
            }
        }
        if ft.is_file() {
            fs::copy(src, dst).ctx(|| format!("copying {} to {}", src.display(), dst.display()))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).ctx(|| format!("reading symlink {}", src.display()))?;
            std::os::unix::fs::symlink(&target, dst)
                .ctx(|| format!("creating symlink {}", dst.display()))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                libc::S_IFCHR
            } else if ft.is_block_device() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            let rdev = meta.rdev();
            sys::mknod(dst, kind, 0o600, sys::dev_major(rdev), sys::dev_minor(rdev)).ctx(|| {
                format!(
                    "creating device node {} (device nodes need root)",
                    dst.display()
                )
            })?;
        } else if ft.is_socket() {
            // A socket cannot be stored in a tar layer; docker skips them too.
            return Ok(());
        } else {
            return Err(err!("{}: unsupported file type", src.display()));
        }
        copy_xattrs(src, dst)?;
        apply_meta(dst, meta)?;
        if meta.nlink() > 1 {
            self.links.insert(key, dst.to_path_buf());
        }
        Ok(())
    }

    /// Creates directory `dst` (or keeps it if it is already a directory) and remembers to
    /// give it `src`'s metadata in [`Copier::finish`].
    pub fn make_dir(&mut self, src: &Path, dst: &Path) -> Result<()> {
        self.copied += 1;
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err!("{} exists and is not a directory", dst.display())),
            Err(_) => {
                fs::create_dir(dst).ctx(|| format!("creating directory {}", dst.display()))?
            }
        }
        // Remove any stale entry for dst so the last source given wins.
        self.dirs.retain(|(d, _)| d != dst);
        self.dirs.push((dst.to_path_buf(), src.to_path_buf()));
        Ok(())
    }

    /// Copies a whole tree below `src` into the existing directory `dst`.
    pub fn copy_tree_into(&mut self, src: &Path, dst: &Path, tick: &dyn Fn()) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(src)
            .ctx(|| format!("reading directory {}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .ctx(|| format!("reading directory {}", src.display()))?;
        names.sort();
        for name in names {
            let s = src.join(&name);
            let d = dst.join(&name);
            let meta = fs::symlink_metadata(&s).ctx(|| format!("stat {}", s.display()))?;
            tick();
            if meta.is_dir() {
                self.make_dir(&s, &d)?;
                self.copy_tree_into(&s, &d, tick)?;
            } else {
                self.copy_file(&s, &d, &meta)?;
            }
        }
        Ok(())
    }

    /// Gives every directory created its source's metadata, deepest first so that setting
    /// a child's times does not change the parent's mtime afterwards.
    pub fn finish(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dst, src) in dirs {
            let meta = fs::symlink_metadata(&src).ctx(|| format!("stat {}", src.display()))?;
            copy_xattrs(&src, &dst)?;
            apply_meta(&dst, &meta)?;
        }
        Ok(())
    }

    /// Fixes the times of a directory whose content was changed after [`Copier::finish`]
    /// (e.g. a whiteout added), keeping the given mtime.
    pub fn restore_dir_time(dst: &Path, meta: &fs::Metadata) -> Result<()> {
        sys::set_times(dst, meta.mtime(), meta.mtime_nsec())
            .ctx(|| format!("setting times of {}", dst.display()))
    }
}

/// Removes whatever is at `path` (file, link or whole tree); absent is fine.
pub fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).ctx(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).ctx(|| format!("removing {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err!("stat {}: {}", path.display(), e)),
    }
}
