//! Validation of a parsed [`Config`] against the system: every layer an existing
//! directory, the writable ones apart from the lowers and from each other, the mount point
//! a free directory outside every layer. Each refusal names the path and the fix.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Config;
use crate::error::{Error, Result};
use crate::sys::mountinfo;

impl Config {
    /// Checks every path against the file system and replaces them by their canonical form
    /// (symlinks resolved), so that the daemon never depends on the caller's directory.
    pub fn validate(&mut self) -> Result<()> {
        self.validate_paths()?;
        let lowers = std::mem::take(&mut self.lowers);
        for lower in lowers {
            self.lowers.push(existing_dir("lowerdir", &lower)?);
        }
        if let (Some(upper), Some(work)) = (&self.upper, &self.work) {
            let upper = existing_dir("upperdir", upper)?;
            let work = existing_dir("workdir", work)?;
            let (udev, wdev) = (dev_of(&upper)?, dev_of(&work)?);
            if udev != wdev {
                return Err(Error::usage(format!(
                    "workdir {} is not on the same filesystem as upperdir {}; choose a workdir next to the upperdir",
                    work.display(),
                    upper.display()
                )));
            }
            if overlaps(&upper, &work) {
                return Err(Error::usage(format!(
                    "workdir {} and upperdir {} overlap; use two separate sibling directories",
                    work.display(),
                    upper.display()
                )));
            }
            for (kind, dir) in [("upperdir", &upper), ("workdir", &work)] {
                for lower in &self.lowers {
                    if overlaps(dir, lower) {
                        return Err(Error::usage(format!(
                            "{kind} {} overlaps lowerdir {}; writable directories must lie outside every lower layer",
                            dir.display(),
                            lower.display()
                        )));
                    }
                }
            }
            self.upper = Some(upper);
            self.work = Some(work);
        }
        self.mountpoint = self.check_mountpoint()?;
        Ok(())
    }

    /// Checks that need no file system access.
    fn validate_paths(&self) -> Result<()> {
        if self.lowers.is_empty() {
            return Err(Error::usage(
                "missing lowerdir; pass -o lowerdir=DIR (several layers separated by colons, top-most first)",
            ));
        }
        match (&self.upper, &self.work) {
            (Some(_), None) => Err(Error::usage(
                "upperdir given without workdir; add -o workdir=DIR on the same filesystem as upperdir",
            )),
            (None, Some(_)) => Err(Error::usage(
                "workdir given without upperdir; add -o upperdir=DIR, or drop workdir for a read-only mount",
            )),
            _ => Ok(()),
        }
    }

    fn check_mountpoint(&self) -> Result<PathBuf> {
        let raw = &self.mountpoint;
        let shown = raw.display();
        let meta = match fs::metadata(raw) {
            Ok(meta) => meta,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                return Err(Error::usage(format!(
                    "mount point {shown} is a stale FUSE mount whose daemon is gone; run `fusermount3 -u {shown}` and retry"
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::usage(format!(
                    "mount point {shown} does not exist; create it with `mkdir -p {shown}`"
                )))
            }
            Err(e) => {
                // A live mount whose daemon refuses the stat is still busy; say so rather
                // than blame permissions.
                if is_mount_point(&absolute(raw)).unwrap_or(false) {
                    return Err(busy(raw));
                }
                return Err(Error::usage(format!(
                    "mount point {shown} cannot be used ({e}); check its permissions"
                )));
            }
        };
        if !meta.is_dir() {
            return Err(Error::usage(format!(
                "mount point {shown} is not a directory; mount on a directory"
            )));
        }
        let mountpoint = fs::canonicalize(raw).map_err(|e| {
            Error::usage(format!(
                "mount point {shown} cannot be resolved ({e}); check its permissions"
            ))
        })?;
        let shown = mountpoint.display();
        // The mount point may be a lower itself, as with kernel overlayfs: the layers are
        // opened before the mount covers them. Anything else nested would loop through the
        // mount or hide a layer behind it.
        let writable = self.upper.iter().map(|p| ("upperdir", p));
        let work = self.work.iter().map(|p| ("workdir", p));
        for (kind, layer) in self
            .lowers
            .iter()
            .map(|p| ("lowerdir", p))
            .chain(writable)
            .chain(work)
        {
            let same = layer == &mountpoint;
            if same && kind == "lowerdir" {
                continue;
            }
            if same || mountpoint.starts_with(layer) {
                return Err(Error::usage(format!(
                    "mount point {shown} is inside {kind} {}; choose a mount point outside every layer",
                    layer.display()
                )));
            }
            if layer.starts_with(&mountpoint) {
                return Err(Error::usage(format!(
                    "{kind} {} is inside mount point {shown}, which would hide it; choose a mount point outside every layer",
                    layer.display()
                )));
            }
        }
        if is_mount_point(&mountpoint)? {
            return Err(busy(&mountpoint));
        }
        Ok(mountpoint)
    }
}

fn busy(mountpoint: &Path) -> Error {
    let shown = mountpoint.display();
    Error::usage(format!(
        "mount point {shown} is already a mount point; unmount it first (`umount {shown}`) or choose another directory"
    ))
}

/// `path` made absolute without touching it (it may not answer a stat), with `.` and `..`
/// removed lexically.
fn absolute(path: &Path) -> PathBuf {
    let joined = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub(super) fn existing_dir(kind: &str, path: &Path) -> Result<PathBuf> {
    let shown = path.display();
    let resolved = fs::canonicalize(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::usage(format!(
            "{kind} {shown} does not exist; check the path or create the directory"
        )),
        _ => Error::usage(format!(
            "{kind} {shown} cannot be opened ({e}); check its permissions"
        )),
    })?;
    let meta = fs::metadata(&resolved).map_err(|e| {
        Error::usage(format!(
            "{kind} {shown} cannot be opened ({e}); check its permissions"
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::usage(format!(
            "{kind} {shown} is not a directory; every layer must be a directory"
        )));
    }
    Ok(resolved)
}

pub(super) fn dev_of(path: &Path) -> Result<u64> {
    fs::metadata(path).map(|m| m.dev()).map_err(|e| {
        Error::usage(format!(
            "{} cannot be opened ({e}); check its permissions",
            path.display()
        ))
    })
}

/// Two canonical paths overlap when one is the other or lies beneath it.
pub(super) fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Whether something is mounted at `path` (a canonical path), from /proc/self/mountinfo.
pub(super) fn is_mount_point(path: &Path) -> Result<bool> {
    match mountinfo::own() {
        Ok(mounts) => Ok(mounts.iter().any(|m| m.point == path)),
        // Without /proc, a mount point is a directory on another device than its parent;
        // this misses bind mounts within one file system, which is the best we can do.
        Err(_) => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            Ok(path == Path::new("/") || dev_of(path)? != dev_of(parent)?)
        }
    }
}
