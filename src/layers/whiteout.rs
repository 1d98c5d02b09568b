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

/// Xattrs that mark a directory opaque, in the order they are tried when reading (kernel
/// overlayfs's two, then fuse-overlayfs's own, which it writes where it may not write
/// `trusted.*`: in a user namespace).
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    FUSE_OVERLAYFS_OPAQUE,
];
/// fuse-overlayfs's opaque xattr.
pub const FUSE_OVERLAYFS_OPAQUE: &str = "user.fuseoverlayfs.opaque";
/// The xattrs fuse-overlayfs keeps a file's owner and mode in instead of the file's own
/// (`xattr_permissions=1|2`, containers-storage's `force_mask`), in the order it looks
/// for them on a layer's root to decide which one the layer uses.
pub const OVERRIDE_STAT_XATTRS: [&str; 3] = [
    "security.fuseoverlayfs.override_stat",
    "user.containers.override_stat",
    "user.fuseoverlayfs.override_stat",
];
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

/// Xattrs never shown through the mount nor settable through it: the overlay's own, and
/// the metadata fuse-overlayfs keeps in layers it wrote (`user.fuseoverlayfs.origin` on
/// every copy-up, its opaque and override_stat xattrs, containers-storage's
/// override_stat), so a storage written by fuse-overlayfs looks the same through layerfs.
pub fn is_hidden_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    is_private_xattr(name)
        || b.starts_with(b"user.fuseoverlayfs.")
        || b.starts_with(b"security.fuseoverlayfs.")
        || b == OVERRIDE_STAT_XATTRS[1].as_bytes()
}

/// An override_stat value: `UID:GID:MODE` (MODE in octal, with or without the file type
/// bits), as fuse-overlayfs and containers-storage write it, optionally followed by
/// `:TYPE` (`file`, `dir`, `symlink`, `pipe`, `socket`, `block-MAJOR-MINOR`,
/// `char-MAJOR-MINOR`: containers-storage's extended form, read by fuse-overlayfs 1.15, in
/// which a device is a regular file on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub perm: u32,
    /// The file type and device number the value names, if it names one.
    pub kind: Option<(u32, u64)>,
}

impl OverrideStat {
    pub fn parse(value: &[u8]) -> Option<OverrideStat> {
        let text = std::str::from_utf8(value).ok()?.trim_end_matches('\0');
        let mut fields = text.split(':');
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        let kind = match fields.next() {
            None => None,
            Some(t) => Some(parse_kind(t)?),
        };
        if fields.next().is_some() || mode > 0o177777 {
            return None;
        }
        Some(OverrideStat {
            uid,
            gid,
            perm: mode & 0o7777,
            kind,
        })
    }

    /// What the mount reports for an object whose on-disk stat is `st`.
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let mut fmt = st.st_mode & libc::S_IFMT;
        if let Some((kind, rdev)) = self.kind {
            // A type other than the one on disk is what the value exists for only where the
            // disk holds a regular file standing in for it (a device made without privilege).
            if fmt == libc::S_IFREG && kind != libc::S_IFLNK {
                fmt = kind;
                st.st_rdev = rdev;
                if kind != libc::S_IFREG {
                    st.st_size = 0;
                }
            }
        }
        st.st_mode = fmt | self.perm;
    }

    /// The value for `uid`, `gid` and `mode` (type bits included), in fuse-overlayfs's
    /// form (`%d:%d:%o`).
    pub fn format(uid: u32, gid: u32, mode: u32) -> String {
        format!("{uid}:{gid}:{mode:o}")
    }
}

fn parse_kind(t: &str) -> Option<(u32, u64)> {
    let device = |rest: &str| -> Option<u64> {
        let (major, minor) = rest.split_once('-')?;
        Some(sys::makedev(major.parse().ok()?, minor.parse().ok()?))
    };
    Some(match t {
        "file" => (libc::S_IFREG, 0),
        "dir" => (libc::S_IFDIR, 0),
        "symlink" => (libc::S_IFLNK, 0),
        "pipe" => (libc::S_IFIFO, 0),
        "socket" => (libc::S_IFSOCK, 0),
        _ => {
            if let Some(rest) = t.strip_prefix("block-") {
                (libc::S_IFBLK, device(rest)?)
            } else {
                (libc::S_IFCHR, device(t.strip_prefix("char-")?)?)
            }
        }
    })
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
    fn override_stat_values() {
        let p = |v: &[u8]| OverrideStat::parse(v);
        // What fuse-overlayfs 1.10 writes (with and without type bits) and containers-storage.
        assert_eq!(
            p(b"0:0:100640"),
            Some(OverrideStat {
                uid: 0,
                gid: 0,
                perm: 0o640,
                kind: None
            })
        );
        assert_eq!(
            p(b"5:6:755").map(|o| (o.uid, o.gid, o.perm)),
            Some((5, 6, 0o755))
        );
        assert_eq!(p(b"1000:1000:04755").map(|o| o.perm), Some(0o4755));
        assert_eq!(
            p(b"0:0:0620:char-136-2").and_then(|o| o.kind),
            Some((libc::S_IFCHR, sys::makedev(136, 2)))
        );
        assert_eq!(
            p(b"0:0:0644:file\0").and_then(|o| o.kind),
            Some((libc::S_IFREG, 0))
        );
        for bad in [
            &b""[..],
            b"0:0",
            b"a:0:644",
            b"0:0:9",
            b"0:0:644:tape",
            b"0:0:644:file:x",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        let mut st = sys::zeroed_stat();
        st.st_mode = libc::S_IFREG | 0o755;
        st.st_size = 7;
        p(b"0:5:0620:char-1-3").unwrap().apply(&mut st);
        assert_eq!(
            (st.st_mode, st.st_gid, st.st_rdev, st.st_size),
            (libc::S_IFCHR | 0o620, 5, sys::makedev(1, 3), 0)
        );
        assert_eq!(
            OverrideStat::format(1, 2, libc::S_IFREG | 0o640),
            "1:2:100640"
        );
    }

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
