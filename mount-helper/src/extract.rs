//! A tar (plain or gzip) -> a layer directory in the store's encoding. Every write goes
//! through the confined writer (`layerfs::layers::writer`): nothing is ever written through
//! a symlink or outside the new layer, the last entry of a path wins with its own metadata,
//! and an entry that replaces a path drops what was queued for it. Refused, with the entry
//! named: absolute names, `..`, an entry below a symlink (decided: refused rather than
//! resolved inside the layer, as no tar a filesystem walk writes has one), a hard link to
//! outside, to a directory or to nothing earlier, and device nodes when unprivileged.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use layerfs::layers::writer::{LayerPath, LayerWriter, Meta};
use layerfs::sys;
use tar::EntryType;

use crate::encoding;
use crate::err;
use crate::error::{Context, Result};

/// Opens `path` as a tar stream, transparently gunzipping (detected by magic bytes).
pub fn open_tar(path: &Path) -> Result<Box<dyn Read>> {
    let f = fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::new(f);
    let head = r.fill_buf().ctx(|| format!("reading {}", path.display()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// Extracts the tar stream `r` into the empty directory `out`. `tick` is called per entry.
pub fn extract(r: impl Read, out: &Path, what: &str, tick: &dyn Fn()) -> Result<()> {
    extract_limited(r, out, what, tick, u64::MAX).map(|_| ())
}

/// Like [`extract`], refusing (by name) the entry whose data would end past byte `max` of
/// the tar stream: a tar bomb stops at its first entry over the bound, before it is
/// written. Returns the stream position after the last entry's data.
pub fn extract_limited(
    r: impl Read,
    out: &Path,
    what: &str,
    tick: &dyn Fn(),
    max: u64,
) -> Result<u64> {
    let mut total: u64 = 0;
    let mut ar = tar::Archive::new(r);
    let mut w = LayerWriter::open(out).ctx(|| format!("opening {}", out.display()))?;
    let privileged = w.privileged();
    let entries = ar
        .entries()
        .ctx(|| format!("{what} is not a readable tar archive"))?;
    for entry in entries {
        tick();
        let mut entry =
            entry.ctx(|| format!("{what} is not a readable tar archive (or is truncated)"))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse =
            |why: &dyn std::fmt::Display| err!("refusing tar entry {shown} in {what}: {why}");
        let path = LayerPath::parse(&raw).map_err(|why| refuse(&why))?;
        // A whiteout name can only be the last component: `.wh.x/y` would create a
        // directory that the layer encoding then reads as a deletion.
        if path.components()[..path.depth().saturating_sub(1)]
            .iter()
            .any(|c| c.as_bytes().starts_with(encoding::WH_PREFIX.as_bytes()))
        {
            return Err(refuse(&"a whiteout name used as a directory"));
        }
        let nb = path.name().as_bytes();
        if nb == encoding::OPAQUE_MARKER.as_bytes() {
            w.opaque(&path.parent()).map_err(|e| refuse(&e.why))?;
            continue;
        }
        if let Some(t) = nb.strip_prefix(encoding::WH_PREFIX.as_bytes()) {
            if t.is_empty() || t == b"." || t == b".." {
                return Err(refuse(&"malformed whiteout"));
            }
            let target = path.parent().join(OsStr::from_bytes(t));
            w.whiteout(&target).map_err(|e| refuse(&e.why))?;
            continue;
        }
        let h = entry.header().clone();
        let size = entry.size();
        // Measured on the tar stream (headers included), the same bytes a layer's size
        // and the loader's --max-size count.
        total = entry.raw_file_position().saturating_add(size);
        if total > max {
            return Err(refuse(&format!(
                "it takes the content past the size limit of {max} bytes (raise --max-size if the archive is trusted)"
            )));
        }
        let ty = h.entry_type();
        if matches!(ty, EntryType::XGlobalHeader) {
            continue;
        }
        let mode = h.mode().map_err(|_| refuse(&"bad mode"))? & 0o7777;
        // Some writers leave uid/gid blank; GNU tar reads that as 0, and so do we.
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        let mtime = h.mtime().map_err(|_| refuse(&"bad mtime"))?;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|_| refuse(&"bad PAX header"))?
        {
            for ext in exts {
                let ext = ext.map_err(|_| refuse(&"bad PAX header"))?;
                if let Some(xname) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    if !encoding::is_private_xattr(xname) {
                        xattrs.push((
                            OsStr::from_bytes(xname).to_os_string(),
                            ext.value_bytes().to_vec(),
                        ));
                    }
                }
            }
        }
        let meta = Meta {
            mode,
            uid,
            gid,
            mtime: mtime.min(i64::MAX as u64) as i64,
            mtime_nsec: 0,
            xattrs,
        };
        let done = match ty {
            EntryType::Directory => w.mkdir(&path, meta),
            EntryType::Regular | EntryType::Continuous => {
                w.file(&path, &meta, &mut entry).map(drop)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                w.symlink(&path, OsStr::from_bytes(&target), &meta)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| refuse(&"hard link without a target"))?;
                let tshown = String::from_utf8_lossy(&target).into_owned();
                let tpath = LayerPath::parse(&target).map_err(|why| {
                    refuse(&format!("hard link to {tshown} ({why}, outside the layer)"))
                })?;
                w.hardlink(&path, &tpath)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match ty {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if kind != libc::S_IFIFO && !privileged {
                    return Err(refuse(
                        &"device nodes need root (import as root or drop the entry)",
                    ));
                }
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if kind == libc::S_IFCHR && major == 0 && minor == 0 {
                    // A 0:0 char device is a whiteout in overlay encoding; keep its meaning.
                    w.whiteout(&path)
                } else {
                    w.mknod(&path, kind, sys::makedev(major, minor), &meta)
                }
            }
            other => {
                return Err(refuse(&format!("unsupported entry type {other:?}")));
            }
        };
        done.map_err(|e| refuse(&e.why))?;
    }
    w.finish()
        .map_err(|e| err!("finishing the layer from {what}: {e}"))?;
    Ok(total)
}
