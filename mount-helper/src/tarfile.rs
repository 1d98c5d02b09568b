//! The canonical changeset tar of a layer directory. Its sha256 is the layer's diff_id, so
//! the bytes must depend only on the layer's content:
//! - entries in depth-first order, the names of each directory sorted bytewise;
//! - ustar headers built field by field (no uname/gname lookup, no atime/ctime), with a
//!   PAX extended header (fixed name) only when needed: long names, xattrs;
//! - whiteouts (either encoding) as empty `.wh.NAME` files and opaque directories as an
//!   empty `.wh..wh..opq`, both with all-zero metadata, so the store encoding (root or not)
//!   never changes the id;
//! - the second and later names of an inode as hard links to the first;
//! - overlay-private xattrs left out.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::encoding::{self, Entry};
use crate::err;
use crate::error::{Context, Result};
use crate::sys;

/// Name of every PAX extended header; fixed so it never varies between runs.
const PAX_NAME: &[u8] = b"PaxHeader";

enum Item {
    Whiteout,
    Opaque,
    Real(PathBuf, fs::Metadata),
}

/// Writes the canonical tar of `layer` to `w`; returns (diff_id, size in bytes).
pub fn write_tar<W: Write>(layer: &Path, w: W, tick: &dyn Fn()) -> Result<(String, u64)> {
    let mut hw = crate::oci::HashingWriter::new(w);
    {
        let mut b = tar::Builder::new(&mut hw);
        let mut links = HashMap::new();
        walk(&mut b, layer, b"", &mut links, tick)?;
        b.finish().ctx(|| "writing tar".to_string())?;
    }
    hw.flush().ctx(|| "writing tar".to_string())?;
    Ok((hw.digest(), hw.count))
}

/// diff_id and tar size of a layer directory, without keeping the tar.
pub fn digest(layer: &Path, tick: &dyn Fn()) -> Result<(String, u64)> {
    write_tar(layer, io::sink(), tick)
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &[u8],
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    tick: &dyn Fn(),
) -> Result<()> {
    let mut items: BTreeMap<Vec<u8>, Item> = BTreeMap::new();
    for e in fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        let path = e.path();
        let meta = fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
        let name = e.file_name();
        match encoding::classify(&name, &meta) {
            Entry::OpaqueMarker => {
                items.insert(encoding::OPAQUE_MARKER.as_bytes().to_vec(), Item::Opaque);
            }
            Entry::Whiteout(t) => {
                let mut n = encoding::WH_PREFIX.as_bytes().to_vec();
                n.extend_from_slice(t.as_bytes());
                items.insert(n, Item::Whiteout);
            }
            Entry::Plain => {
                // Sockets cannot live in a tar.
                if !meta.file_type().is_socket() {
                    items.insert(name.as_bytes().to_vec(), Item::Real(path, meta));
                }
            }
        }
    }
    if !prefix.is_empty()
        && encoding::is_opaque(dir).ctx(|| format!("reading xattrs of {}", dir.display()))?
    {
        items.insert(encoding::OPAQUE_MARKER.as_bytes().to_vec(), Item::Opaque);
    }
    for (name, item) in items {
        tick();
        let mut full = prefix.to_vec();
        full.extend_from_slice(&name);
        match item {
            Item::Whiteout | Item::Opaque => {
                let mut h = Header::new_ustar();
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_size(0);
                append(b, h, &full, None, &[], io::empty())?;
            }
            Item::Real(path, meta) => {
                let ft = meta.file_type();
                let mut h = Header::new_ustar();
                h.set_mode(meta.mode() & 0o7777);
                let (uid, gid) = tar_owner(meta.uid(), meta.gid());
                h.set_uid(uid);
                h.set_gid(gid);
                // Times before 1970 cannot be written in ustar; clamp instead of failing.
                h.set_mtime(meta.mtime().max(0) as u64);
                h.set_size(0);
                let xattrs = read_xattrs(&path)?;
                if ft.is_dir() {
                    h.set_entry_type(EntryType::Directory);
                    let mut dname = full.clone();
                    dname.push(b'/');
                    append(b, h, &dname, None, &xattrs, io::empty())?;
                    walk(b, &path, &dname, links, tick)?;
                    continue;
                }
                let key = (meta.dev(), meta.ino());
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&key) {
                        h.set_entry_type(EntryType::Link);
                        let first = first.clone();
                        append(b, h, &full, Some(&first), &xattrs, io::empty())?;
                        continue;
                    }
                    links.insert(key, full.clone());
                }
                if ft.is_file() {
                    h.set_entry_type(EntryType::Regular);
                    h.set_size(meta.len());
                    let f = fs::File::open(&path).ctx(|| format!("opening {}", path.display()))?;
                    let mut data = f.take(meta.len());
                    append(b, h, &full, None, &xattrs, &mut data)?;
                    if data.limit() != 0 {
                        return Err(err!("{} shrank while being read", path.display()));
                    }
                } else if ft.is_symlink() {
                    h.set_entry_type(EntryType::Symlink);
                    let target = fs::read_link(&path)
                        .ctx(|| format!("reading symlink {}", path.display()))?;
                    append(
                        b,
                        h,
                        &full,
                        Some(target.as_os_str().as_bytes()),
                        &xattrs,
                        io::empty(),
                    )?;
                } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                    h.set_entry_type(if ft.is_char_device() {
                        EntryType::Char
                    } else if ft.is_block_device() {
                        EntryType::Block
                    } else {
                        EntryType::Fifo
                    });
                    if !ft.is_fifo() {
                        h.set_device_major(sys::dev_major(meta.rdev()))
                            .ctx(|| path.display().to_string())?;
                        h.set_device_minor(sys::dev_minor(meta.rdev()))
                            .ctx(|| path.display().to_string())?;
                    }
                    append(b, h, &full, None, &xattrs, io::empty())?;
                } else {
                    return Err(err!("{}: unsupported file type", path.display()));
                }
            }
        }
    }
    Ok(())
}

fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut names =
        sys::list_xattrs(path).ctx(|| format!("listing xattrs of {}", path.display()))?;
    names.sort();
    for n in names {
        if encoding::is_private_xattr(&n) {
            continue;
        }
        if let Some(v) =
            sys::get_xattr(path, &n).ctx(|| format!("reading xattr of {}", path.display()))?
        {
            out.push((n, v));
        }
    }
    Ok(out)
}

/// One PAX record: "LEN KEY=VALUE\n", LEN counting itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Puts `path` into the ustar name/prefix fields; false when it does not fit.
fn set_ustar_path(h: &mut Header, path: &[u8]) -> bool {
    let Some(u) = h.as_ustar_mut() else {
        return false;
    };
    if path.len() <= 100 {
        u.name[..path.len()].copy_from_slice(path);
        return true;
    }
    // Split at a '/' so that prefix <= 155 and name <= 100 (ustar rules).
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    for (i, &c) in trimmed.iter().enumerate() {
        if c == b'/' && i <= 155 && path.len() - i - 1 <= 100 {
            u.prefix[..i].copy_from_slice(&path[..i]);
            let rest = &path[i + 1..];
            u.name[..rest.len()].copy_from_slice(rest);
            return true;
        }
    }
    false
}

fn append<W: Write, R: Read>(
    b: &mut tar::Builder<W>,
    mut h: Header,
    path: &[u8],
    link: Option<&[u8]>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    data: R,
) -> Result<()> {
    let mut pax = Vec::new();
    if !set_ustar_path(&mut h, path) {
        pax_record(&mut pax, b"path", path);
        let cut = &path[..path.len().min(100)];
        if let Some(u) = h.as_ustar_mut() {
            u.name[..cut.len()].copy_from_slice(cut);
        }
    }
    if let Some(l) = link {
        if l.len() <= 100 {
            if let Some(u) = h.as_ustar_mut() {
                u.linkname[..l.len()].copy_from_slice(l);
            }
        } else {
            pax_record(&mut pax, b"linkpath", l);
        }
    }
    for (k, v) in xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut pax, &key, v);
    }
    let what = || String::from_utf8_lossy(path).into_owned();
    if !pax.is_empty() {
        let mut x = Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        x.set_mode(0o644);
        x.set_uid(0);
        x.set_gid(0);
        x.set_mtime(0);
        x.set_size(pax.len() as u64);
        if let Some(u) = x.as_ustar_mut() {
            u.name[..PAX_NAME.len()].copy_from_slice(PAX_NAME);
        }
        x.set_cksum();
        b.append(&x, pax.as_slice())
            .ctx(|| format!("writing tar entry {}", what()))?;
    }
    h.set_cksum();
    b.append(&h, data)
        .ctx(|| format!("writing tar entry {}", what()))
}

/// The owner a file gets in a layer tar. An ordinary user's store holds files it could not
/// give to root (an import extracts root's files as the user's); recording the user's own
/// ids as 0 keeps a layer's tar — and so its diff_id — the same as a root store's, as a
/// rootless podman does through its user namespace.
fn tar_owner(uid: u32, gid: u32) -> (u64, u64) {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (me, my_group) = unsafe { (libc::getuid(), libc::getgid()) };
    if me == 0 {
        return (uid.into(), gid.into());
    }
    let uid = if uid == me { 0 } else { uid };
    let gid = if gid == my_group { 0 } else { gid };
    (uid.into(), gid.into())
}
