//! The on-disk encodings of deletions and opaque directories (DESIGN.md's table):
//! read in every form real images and overlay tools produce, written in the one form the
//! mount chose at start. Shared with layerctl, which reads upper dirs and writes layers.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use crate::sys::{self, Stat};

/// Prefix of an OCI/AUFS whiteout file: `.wh.NAME` deletes `NAME`.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// A file of this name inside a directory makes the directory opaque (OCI/AUFS).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Xattrs that mark a directory opaque, in the order they are tried when reading.
pub const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
/// Xattrs holding a renamed directory's original lower path (kernel `redirect_dir`).
pub const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];

/// The namespace overlay xattrs are written in: `trusted` needs CAP_SYS_ADMIN in the
/// initial user namespace, `user` works everywhere (kernel overlayfs reads it with `userxattr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

impl XattrNs {
    pub fn opaque(self) -> &'static str {
        match self {
            XattrNs::Trusted => OPAQUE_XATTRS[0],
            XattrNs::User => OPAQUE_XATTRS[1],
        }
    }

    pub fn redirect(self) -> &'static str {
        match self {
            XattrNs::Trusted => REDIRECT_XATTRS[0],
            XattrNs::User => REDIRECT_XATTRS[1],
        }
    }

    /// The merged link count of a hard-linked lower inode, kept on its index entry.
    pub fn nlink(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.layerfs.nlink",
            XattrNs::User => "user.layerfs.nlink",
        }
    }

    /// The daemon's own record of a file's reported inode number, kept across copy-up.
    pub fn ino(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.layerfs.ino",
            XattrNs::User => "user.layerfs.ino",
        }
    }
}

/// How a deletion is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A character device 0:0 named like the deleted entry (needs mknod permission).
    CharDev,
    /// A regular empty file `.wh.NAME`.
    File,
}

/// Xattrs that belong to the overlay machinery and are never shown through the mount.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"trusted.overlay.")
        || b.starts_with(b"user.overlay.")
        || b.starts_with(b"trusted.layerfs.")
        || b.starts_with(b"user.layerfs.")
}

pub fn is_chardev_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Names the overlay uses for its own markers; hidden from listings and refused as new names.
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())
}

/// For `.wh.NAME` returns `NAME`; `None` for the opaque marker and for ordinary names.
pub fn whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return None;
    }
    b.strip_prefix(WHITEOUT_PREFIX.as_bytes())
        .filter(|rest| !rest.is_empty())
        .map(OsStr::from_bytes)
}

pub fn whiteout_file_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(WHITEOUT_PREFIX);
    s.push(name);
    s
}

/// Whether `name` in `dir` is deleted by a `.wh.NAME` file (the char-dev form is seen by
/// the caller's own stat of `name`).
pub fn has_whiteout_file(dir: BorrowedFd, name: &OsStr) -> bool {
    sys::fstatat(dir, &whiteout_file_name(name)).is_ok()
}

/// Whether the directory `name` in `dir` (empty name: `dir` itself) is opaque in any encoding.
pub fn is_opaque(dir: BorrowedFd, name: &OsStr) -> bool {
    for attr in OPAQUE_XATTRS {
        if let Ok(v) = sys::getxattr(dir, name, OsStr::new(attr)) {
            if v == b"y" {
                return true;
            }
        }
    }
    let marker = if name.is_empty() {
        sys::fstatat(dir, OsStr::new(OPAQUE_MARKER))
    } else {
        let mut p = name.to_os_string();
        p.push("/");
        p.push(OPAQUE_MARKER);
        sys::fstatat(dir, &p)
    };
    marker.is_ok()
}

/// The raw redirect value recorded on the directory `name` in `dir`, if any (even an
/// empty one: the kernel refuses that, and so does `layers::redirect`).
pub fn redirect(dir: BorrowedFd, name: &OsStr) -> Option<Vec<u8>> {
    REDIRECT_XATTRS
        .iter()
        .find_map(|attr| sys::getxattr(dir, name, OsStr::new(attr)).ok())
}

/// Writes a whiteout for `name` in `dir`. The caller has removed any entry of that name.
pub fn make_whiteout(dir: BorrowedFd, name: &OsStr, encoding: Encoding) -> std::io::Result<()> {
    match encoding {
        Encoding::CharDev => sys::mknodat(dir, name, libc::S_IFCHR, 0),
        Encoding::File => {
            let fd = sys::openat(
                dir,
                &whiteout_file_name(name),
                libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
                0o000,
            )?;
            drop(fd);
            Ok(())
        }
    }
}

/// Removes a whiteout for `name` in `dir` in whichever encoding it has; absent is fine.
pub fn remove_whiteout(dir: BorrowedFd, name: &OsStr) -> std::io::Result<()> {
    if let Ok(st) = sys::fstatat(dir, name) {
        if is_chardev_whiteout(&st) {
            sys::unlinkat(dir, name, false)?;
        }
    }
    match sys::unlinkat(dir, &whiteout_file_name(name), false) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// Marks the directory `name` in `dir` opaque.
pub fn set_opaque(dir: BorrowedFd, name: &OsStr, ns: XattrNs) -> std::io::Result<()> {
    sys::setxattr(dir, name, OsStr::new(ns.opaque()), b"y", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(
            whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(whiteout_target(OsStr::new(OPAQUE_MARKER)), None);
        assert_eq!(whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(whiteout_target(OsStr::new("foo")), None);
        assert!(is_marker_name(OsStr::new(".wh..wh..opq")));
        assert_eq!(
            whiteout_file_name(OsStr::new("a b")),
            OsString::from(".wh.a b")
        );
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(OsStr::new("trusted.overlay.opaque")));
        assert!(is_private_xattr(OsStr::new("user.layerfs.ino")));
        assert!(!is_private_xattr(OsStr::new("user.mime_type")));
        assert!(!is_private_xattr(OsStr::new("security.capability")));
    }
}
