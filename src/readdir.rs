//! Merged directory listings: the upper directory and the lower directories merged below
//! it, top layer first; whiteouts hide names below them and markers are never listed.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::Path;

use crate::error::{Error, Result};
use crate::inode::{compose_ino, LowerRef};
use crate::layer::Layer;
use crate::stack::Stack;
use crate::sys;
use crate::whiteout;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    /// `DT_*` type as the layer reported it.
    pub dtype: u8,
    /// Best-effort inode number (readdirplus looks each entry up for the exact one).
    pub ino: u64,
}

/// Lists the merged directory whose upper part is `upper` and lower parts `lowers`.
pub fn list(stack: &Stack, upper: Option<&Path>, lowers: &[LowerRef]) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut hidden: HashSet<OsString> = HashSet::new();
    let upper_part = match (&stack.upper, upper) {
        (Some(layer), Some(path)) => Some((layer, 0usize, path)),
        _ => None,
    };
    let lower_parts = lowers
        .iter()
        .map(|l| (&stack.lowers[l.layer], l.layer + 1, l.path.as_path()));
    for (layer, slot, path) in upper_part.into_iter().chain(lower_parts) {
        let entries = match read_layer_dir(layer, path) {
            Ok(e) => e,
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) && slot != 0 => continue,
            Err(e) => return Err(e),
        };
        // Whiteouts of a layer hide names of the layers below it, not its own.
        let mut layer_whiteouts = Vec::new();
        for (name, dtype, ino, is_whiteout) in entries {
            if is_whiteout {
                layer_whiteouts.push(name);
                continue;
            }
            if seen.contains(&name) || hidden.contains(&name) {
                continue;
            }
            seen.insert(name.clone());
            out.push(DirEntry {
                name,
                dtype,
                ino: compose_ino(slot, ino),
            });
        }
        hidden.extend(layer_whiteouts);
    }
    Ok(out)
}

/// Whether the merged directory has any entry at all (rmdir's ENOTEMPTY).
pub fn is_empty(stack: &Stack, upper: Option<&Path>, lowers: &[LowerRef]) -> Result<bool> {
    Ok(list(stack, upper, lowers)?.is_empty())
}

/// One layer's entries as (name, d_type, ino, is_whiteout); whiteout files are reported
/// under the name they delete, the opaque marker not at all.
fn read_layer_dir(layer: &Layer, path: &Path) -> Result<Vec<(OsString, u8, u64, bool)>> {
    let fd = layer
        .open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| Error::from(e).context(layer.describe(path)))?;
    let dirfd = fd.try_clone().map_err(Error::from)?;
    let raw = sys::read_dir(fd).map_err(|e| Error::from(e).context(layer.describe(path)))?;
    let mut out = Vec::with_capacity(raw.len());
    for (name, dtype, ino) in raw {
        if name.as_os_str() == OsStr::new(whiteout::OPAQUE_MARKER) {
            continue;
        }
        if let Some(target) = whiteout::whiteout_target(&name) {
            out.push((target.to_os_string(), dtype, ino, true));
            continue;
        }
        if whiteout::is_marker_name(&name) {
            continue;
        }
        let is_whiteout = match dtype {
            libc::DT_CHR => sys::fstatat(dirfd.as_fd(), &name)
                .map(|st| whiteout::is_chardev_whiteout(&st))
                .unwrap_or(false),
            libc::DT_UNKNOWN => sys::fstatat(dirfd.as_fd(), &name)
                .map(|st| whiteout::is_chardev_whiteout(&st))
                .unwrap_or(false),
            _ => false,
        };
        out.push((name, dtype, ino, is_whiteout));
    }
    Ok(out)
}
