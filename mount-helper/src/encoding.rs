//! How layerctl classifies the entries of an upper or layer directory: the daemon's
//! encodings (`layerfs::whiteout`, the one reader and writer of the format), seen from the
//! `stat` or `Metadata` the caller already has. Writing goes through the confined writer.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

// The encodings are the daemon's: one definition (layerfs::whiteout) so that what layerctl
// writes into a layer is exactly what the daemon reads back.
pub use layerfs::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX as WH_PREFIX};

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
    if meta.file_type().is_char_device() && meta.rdev() == 0 {
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

/// True when the directory `dir` hides the same directory in lower layers, in any
/// encoding (the daemon's reader, on a handle of it).
pub fn is_opaque(dir: &Path) -> io::Result<bool> {
    let fd = fs::File::open(dir)?;
    Ok(layerfs::whiteout::is_opaque(fd.as_fd(), OsStr::new("")))
}
