//! The on-disk encodings of whiteouts, opaque directories and redirects (DESIGN.md table):
//! every encoding is accepted when reading an upper or a layer directory; a layer written
//! into the store uses the daemon's reading encoding, so it can be a lower dir as it is.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::sys;

// The encodings are the daemon's: one definition (layerfs::whiteout) so that what layerctl
// writes into a layer is exactly what the daemon reads back.
pub use layerfs::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX as WH_PREFIX};
use layerfs::whiteout::{OPAQUE_XATTRS, REDIRECT_XATTRS};

/// Overlay bookkeeping that must never leak into a layer tar or be copied between layers.
pub fn is_private_xattr(name: &[u8]) -> bool {
    layerfs::whiteout::is_private_xattr(OsStr::from_bytes(name))
}

/// What one directory entry of an upper or layer directory means.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// The name (without any `.wh.` prefix) is deleted.
    Whiteout(OsString),
    /// `.wh..wh..opq`: the containing directory is opaque.
    OpaqueMarker,
    /// Anything else: real content.
    Plain,
}

pub fn classify(name: &OsStr, meta: &fs::Metadata) -> Entry {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return Entry::OpaqueMarker;
    }
    if let Some(rest) = b.strip_prefix(WH_PREFIX.as_bytes()) {
        return Entry::Whiteout(OsString::from_vec(rest.to_vec()));
    }
    if is_chardev_whiteout(meta) {
        return Entry::Whiteout(name.to_os_string());
    }
    Entry::Plain
}

/// [`classify`] for a raw `stat` (the handle-based readers).
pub fn classify_stat(name: &OsStr, st: &layerfs::sys::Stat) -> Entry {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return Entry::OpaqueMarker;
    }
    if let Some(rest) = b.strip_prefix(WH_PREFIX.as_bytes()) {
        return Entry::Whiteout(OsString::from_vec(rest.to_vec()));
    }
    if layerfs::whiteout::is_chardev_whiteout(st) {
        return Entry::Whiteout(name.to_os_string());
    }
    Entry::Plain
}

pub fn is_chardev_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// True when `dir` hides the same directory in lower layers (by xattr or marker file).
pub fn is_opaque(dir: &Path) -> io::Result<bool> {
    for name in OPAQUE_XATTRS {
        if sys::get_xattr(dir, name.as_bytes())?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    match fs::symlink_metadata(dir.join(OPAQUE_MARKER)) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The original path of a directory renamed from a lower layer, if `dir` carries one.
pub fn redirect(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    for name in REDIRECT_XATTRS {
        if let Some(v) = sys::get_xattr(dir, name.as_bytes())? {
            // Kernel overlayfs may store the value with a trailing NUL.
            let v: Vec<u8> = v.into_iter().take_while(|b| *b != 0).collect();
            if !v.is_empty() {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// Records "NAME is deleted" in `dir` in the store's encoding: a 0:0 char device where
/// mknod is permitted (what kernel overlayfs and layerfs write as root), else `.wh.NAME`.
pub fn write_whiteout(dir: &Path, name: &OsStr) -> io::Result<()> {
    let target = dir.join(name);
    if sys::is_root() {
        match sys::mknod(&target, libc::S_IFCHR, 0, 0, 0) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    let mut wh = OsString::from(WH_PREFIX);
    wh.push(name);
    fs::File::create(dir.join(wh)).map(|_| ())
}

/// Marks `dir` opaque in the store's encoding: the xattr where it can be set (trusted as
/// root, user otherwise), else the `.wh..wh..opq` marker file.
pub fn set_opaque(dir: &Path) -> io::Result<()> {
    let name: &str = if sys::is_root() {
        OPAQUE_XATTRS[0]
    } else {
        OPAQUE_XATTRS[1]
    };
    match sys::set_xattr(dir, name.as_bytes(), b"y") {
        Ok(()) => Ok(()),
        Err(_) => fs::File::create(dir.join(OPAQUE_MARKER)).map(|_| ()),
    }
}
