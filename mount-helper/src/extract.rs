//! A tar (plain or gzip) -> a layer directory in the store's encoding, refusing every entry
//! that could write outside the new layer: absolute names, `..`, a path through a symlink,
//! a hard link to outside or through a symlink, and device nodes when unprivileged. All
//! paths are checked component by component against what this extraction has written
//! itself into a fresh private directory, so nothing outside it is ever followed.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::copytree::remove_any;
use crate::encoding;
use crate::err;
use crate::error::{Context, Result};
use crate::sys;

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

/// Splits a tar entry name into safe relative components, or says why it is unsafe.
fn clean(name: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    if name.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' in path"),
            _ => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

struct Dirs {
    /// Directory entries seen, with the metadata to apply once everything is written.
    pending: Vec<(PathBuf, u32, u32, u32, u64)>,
}

/// Makes sure every ancestor of `comps` exists below `root` as a real directory (not a
/// symlink), creating missing ones. Returns the parent path.
fn parent_dir(root: &Path, comps: &[OsString], entry: &str) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in &comps[..comps.len() - 1] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(err!(
                    "refusing tar entry {entry}: it goes through a symlink"
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(err!(
                    "refusing tar entry {entry}: a parent is not a directory"
                ))
            }
            Err(_) => fs::create_dir(&p).ctx(|| format!("creating {}", p.display()))?,
        }
    }
    Ok(p)
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
    let mut dirs = Dirs {
        pending: Vec::new(),
    };
    let privileged = sys::is_root();
    let entries = ar
        .entries()
        .ctx(|| format!("{what} is not a readable tar archive"))?;
    for entry in entries {
        tick();
        let mut entry =
            entry.ctx(|| format!("{what} is not a readable tar archive (or is truncated)"))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps =
            clean(&raw).map_err(|why| err!("refusing tar entry {shown} in {what}: {why}"))?;
        if comps.is_empty() {
            // The root directory itself ("./"): the layer root keeps the store's metadata.
            continue;
        }
        // A whiteout name can only be the last component: `.wh.x/y` would create a
        // directory that the layer encoding then reads as a deletion.
        if comps[..comps.len() - 1]
            .iter()
            .any(|c| c.as_bytes().starts_with(encoding::WH_PREFIX.as_bytes()))
        {
            return Err(err!(
                "refusing tar entry {shown} in {what}: a whiteout name used as a directory"
            ));
        }
        let parent = parent_dir(out, &comps, &shown)?;
        let name = comps[comps.len() - 1].clone();
        let dst = parent.join(&name);
        let nb = name.as_bytes();
        if nb == encoding::OPAQUE_MARKER.as_bytes() {
            encoding::set_opaque(&parent).ctx(|| format!("tar entry {shown}"))?;
            continue;
        }
        if let Some(t) = nb.strip_prefix(encoding::WH_PREFIX.as_bytes()) {
            if t.is_empty() || t == b"." || t == b".." {
                return Err(err!(
                    "refusing tar entry {shown} in {what}: malformed whiteout"
                ));
            }
            let t = OsStr::from_bytes(t);
            remove_any(&parent.join(t))?;
            encoding::write_whiteout(&parent, t).ctx(|| format!("tar entry {shown}"))?;
            continue;
        }
        let h = entry.header().clone();
        let size = entry.size();
        // Measured on the tar stream (headers included), the same bytes a layer's size
        // and the loader's --max-size count.
        total = entry.raw_file_position().saturating_add(size);
        if total > max {
            return Err(err!(
                "refusing tar entry {shown} in {what}: it takes the content past the size limit of {max} bytes (raise --max-size if the archive is trusted)"
            ));
        }
        let mode = h.mode().ctx(|| format!("tar entry {shown}: bad mode"))? & 0o7777;
        // Some writers leave uid/gid blank; GNU tar reads that as 0, and so do we.
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        let mtime = h.mtime().ctx(|| format!("tar entry {shown}: bad mtime"))?;
        let ty = h.entry_type();
        // A later entry of the same name replaces an earlier one, except dir over dir.
        let existing = fs::symlink_metadata(&dst).ok();
        if !(ty == EntryType::Directory && existing.as_ref().is_some_and(|m| m.is_dir())) {
            remove_any(&dst)?;
        }
        match ty {
            EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&dst).ctx(|| format!("tar entry {shown}"))?;
                }
                dirs.pending.retain(|d| d.0 != dst);
                dirs.pending.push((dst.clone(), mode, uid, gid, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut f = fs::File::create(&dst).ctx(|| format!("tar entry {shown}"))?;
                io::copy(&mut entry, &mut f).ctx(|| format!("tar entry {shown}: reading data"))?;
            }
            EntryType::Symlink => {
                // The target is stored, never followed, so any value is harmless here.
                let target = h
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or(target);
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dst)
                    .ctx(|| format!("tar entry {shown}"))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| {
                        err!("refusing tar entry {shown} in {what}: hard link without a target")
                    })?;
                let tshown = String::from_utf8_lossy(&target).into_owned();
                let tcomps = clean(&target)
                    .map_err(|why| err!("refusing tar entry {shown} in {what}: hard link to {tshown} ({why}, outside the layer)"))?;
                if tcomps.is_empty() {
                    return Err(err!(
                        "refusing tar entry {shown} in {what}: hard link to the root"
                    ));
                }
                let tparent = parent_dir(out, &tcomps, &shown)?;
                let tpath = tparent.join(&tcomps[tcomps.len() - 1]);
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if !m.is_dir() && !m.file_type().is_symlink() => {}
                    _ => {
                        return Err(err!(
                            "refusing tar entry {shown} in {what}: hard link target {tshown} is not a file earlier in the archive"
                        ))
                    }
                }
                fs::hard_link(&tpath, &dst).ctx(|| format!("tar entry {shown}"))?;
                continue;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match ty {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if kind != libc::S_IFIFO && !privileged {
                    return Err(err!(
                        "refusing tar entry {shown} in {what}: device nodes need root (import as root or drop the entry)"
                    ));
                }
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if kind == libc::S_IFCHR && major == 0 && minor == 0 {
                    // A 0:0 char device is a whiteout in overlay encoding; keep its meaning.
                    encoding::write_whiteout(&parent, &name)
                        .ctx(|| format!("tar entry {shown}"))?;
                    continue;
                }
                sys::mknod(&dst, kind, mode, major, minor).ctx(|| format!("tar entry {shown}"))?;
            }
            EntryType::XGlobalHeader => continue,
            other => {
                return Err(err!(
                    "refusing tar entry {shown} in {what}: unsupported entry type {other:?}"
                ));
            }
        }
        if let Some(exts) = entry
            .pax_extensions()
            .ctx(|| format!("tar entry {shown}: bad PAX header"))?
        {
            for ext in exts {
                let ext = ext.ctx(|| format!("tar entry {shown}: bad PAX header"))?;
                if let Some(xname) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    if encoding::is_private_xattr(xname) {
                        continue;
                    }
                    if let Err(e) = sys::set_xattr(&dst, xname, ext.value_bytes()) {
                        if privileged {
                            return Err(err!("tar entry {shown}: setting xattr: {e}"));
                        }
                    }
                }
            }
        }
        if ty != EntryType::Directory {
            set_meta(
                &dst,
                ty == EntryType::Symlink,
                mode,
                uid,
                gid,
                mtime,
                privileged,
            )
            .ctx(|| format!("tar entry {shown}"))?;
        }
    }
    dirs.pending
        .sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (d, mode, uid, gid, mtime) in dirs.pending {
        set_meta(&d, false, mode, uid, gid, mtime, privileged)
            .ctx(|| format!("{}", d.display()))?;
    }
    Ok(total)
}

fn set_meta(
    p: &Path,
    symlink: bool,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    privileged: bool,
) -> io::Result<()> {
    if let Err(e) = sys::lchown(p, uid, gid) {
        if privileged {
            return Err(e);
        }
    }
    if !symlink {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
    }
    sys::set_times(p, mtime as i64, 0)
}
