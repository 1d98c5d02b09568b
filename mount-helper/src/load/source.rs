//! Where `load` reads an image from: the layout directory (or an archive unpacked into
//! the store's tmp), every member opened beneath it without following symlinks, resolved
//! lexically through the archive's own symlinks, regular files only, sizes checked first.

use crate::err;
use crate::error::{Context, Result};
use crate::oci::{self, Descriptor};
use layerfs::sys;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The most layerctl reads of one image record (oci-layout, index, manifest, config,
/// manifest.json): real ones are a few kB; a bigger one is an attack, not an image.
pub(super) const RECORD_MAX: u64 = 4 << 20;

/// An archive's content: a directory (the layout itself, or an archive file unpacked into
/// the store's tmp) plus, for unpacked tar files, the symlinks it held.
///
/// Every member is opened beneath `dir` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
/// after its name has been resolved lexically (`resolve_lexical`): a symlink inside the
/// layout works as an alias, one that leads out of it is refused, and one swapped in
/// while we read makes the open fail instead of being followed.
pub(super) struct Source {
    pub(super) dir: OwnedFd,
    /// Shown in messages: the path the user gave.
    pub(super) shown: String,
    /// Archive-relative symlink path -> its raw target (only from unpacked tars).
    pub(super) links: HashMap<Vec<Vec<u8>>, Vec<u8>>,
}

/// Answers whether an archive path (as components) is a symlink, and its target.
pub(super) type LinkOf<'a> = dyn Fn(&[Vec<u8>]) -> Result<Option<Vec<u8>>> + 'a;

/// Resolves archive member `rel` to components with no symlink among them, following the
/// archive's own symlinks (`link_of` answers whether a path is one, and its target)
/// relative to the link's directory, as the filesystem would. Refuses absolute names,
/// absolute targets and anything that climbs out of the archive.
pub(super) fn resolve_lexical(rel: &str, shown: &str, link_of: &LinkOf) -> Result<Vec<Vec<u8>>> {
    let bad = |why: &str| err!("{shown} names {rel:?}, which {why}");
    if rel.starts_with('/') {
        return Err(bad("is an absolute path (archive members are relative)"));
    }
    let mut todo: Vec<Vec<u8>> = rel
        .as_bytes()
        .split(|b| *b == b'/')
        .rev()
        .map(|c| c.to_vec())
        .collect();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if cur.pop().is_none() {
                    return Err(bad("leads outside the archive"));
                }
                continue;
            }
            _ => cur.push(c),
        }
        if let Some(t) = link_of(&cur)? {
            hops += 1;
            if hops > 40 || t.starts_with(b"/") {
                return Err(bad("goes through a symlink that leads outside the archive"));
            }
            cur.pop();
            todo.extend(t.split(|b| *b == b'/').rev().map(|c| c.to_vec()));
        }
    }
    Ok(cur)
}

pub(super) fn join(comps: &[Vec<u8>]) -> PathBuf {
    comps.iter().map(|c| OsStr::from_bytes(c)).collect()
}

pub(super) fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symlink",
        _ => "not a regular file",
    }
}

impl Source {
    /// Whether `comps` (symlink-free so far, except perhaps its last component) is a
    /// symlink in the archive, and its target.
    pub(super) fn link_of(&self, comps: &[Vec<u8>]) -> Result<Option<Vec<u8>>> {
        if let Some(t) = self.links.get(comps) {
            return Ok(Some(t.clone()));
        }
        let Some((name, parent)) = comps.split_last() else {
            return Ok(None);
        };
        let name = OsStr::from_bytes(name);
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        // A parent that is missing or not a directory is not a symlink either: the open
        // of the member reports what is wrong.
        let Ok(pfd) = sys::openat_beneath(self.dir.as_fd(), &join(parent), flags, 0) else {
            return Ok(None);
        };
        match sys::fstatat(pfd.as_fd(), name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                let t = sys::readlinkat(pfd.as_fd(), name).ctx(|| {
                    format!(
                        "reading symlink {} in {}",
                        join(comps).display(),
                        self.shown
                    )
                })?;
                Ok(Some(t.into_vec()))
            }
            _ => Ok(None),
        }
    }

    pub(super) fn resolve(&self, rel: &str) -> Result<PathBuf> {
        resolve_lexical(rel, &self.shown, &|c| self.link_of(c)).map(|c| join(&c))
    }

    /// Whether anything (of any type) exists at member `rel`.
    pub(super) fn exists(&self, rel: &str) -> Result<bool> {
        let p = self.resolve(rel)?;
        Ok(sys::openat_beneath(self.dir.as_fd(), &p, libc::O_PATH | libc::O_NOFOLLOW, 0).is_ok())
    }

    /// Opens member `rel` for reading: never following a symlink, never blocking, never
    /// opening anything but a regular file (it is looked at through an O_PATH handle
    /// first, so a FIFO or a device is refused without being opened at all). None when
    /// it is missing.
    pub(super) fn open(&self, rel: &str, what: &str) -> Result<Option<(fs::File, u64)>> {
        let p = self.resolve(rel)?;
        let fd = match sys::openat_beneath(self.dir.as_fd(), &p, libc::O_PATH | libc::O_NOFOLLOW, 0)
        {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(err!(
                    "{what} ({rel}) in {}: a directory on its path is not a directory: the archive is malformed",
                    self.shown
                ))
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                return Err(err!(
                    "{what} ({rel}) in {}: a symlink appeared on its path while loading (is something changing the layout?)",
                    self.shown
                ))
            }
            Err(e) => return Err(err!("{what} ({rel}) in {}: {e}", self.shown)),
        };
        let st = sys::fstat(fd.as_fd()).ctx(|| format!("stat {rel} in {}", self.shown))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(err!(
                "{what} ({rel}) in {} is {}, not a regular file: the archive is malformed",
                self.shown,
                kind_name(st.st_mode)
            ));
        }
        // The same inode the O_PATH handle pins, now readable; O_NONBLOCK all the same.
        let f = sys::reopen(
            fd.as_fd(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
        .ctx(|| format!("opening {rel} in {}", self.shown))?;
        Ok(Some((fs::File::from(f), st.st_size as u64)))
    }

    /// An image record: a regular file of at most RECORD_MAX (and `max`) bytes, checked
    /// by its size before a byte is read.
    pub(super) fn read(&self, rel: &str, what: &str, max: u64) -> Result<Vec<u8>> {
        let (f, size) = self.open(rel, what)?.ok_or_else(|| {
            err!(
                "{what} ({rel}) is missing from {}: the archive is incomplete",
                self.shown
            )
        })?;
        self.read_record(f, size, rel, what, max)
    }

    pub(super) fn read_record(
        &self,
        f: fs::File,
        size: u64,
        rel: &str,
        what: &str,
        max: u64,
    ) -> Result<Vec<u8>> {
        let bound = max.min(RECORD_MAX);
        let too_big = |n: u64| {
            err!(
                "{what} ({rel}) in {} is {n} bytes, more than the {} layerctl reads for an image record (index, manifest or config JSON): the archive is malformed",
                self.shown,
                if bound == RECORD_MAX { "4 MiB".to_string() } else { format!("{bound} bytes") }
            )
        };
        if size > bound {
            return Err(too_big(size));
        }
        let mut buf = Vec::new();
        // Bounded again while reading: the file may grow after the fstat.
        f.take(bound + 1)
            .read_to_end(&mut buf)
            .ctx(|| format!("reading {rel} in {}", self.shown))?;
        if buf.len() as u64 > bound {
            return Err(too_big(buf.len() as u64));
        }
        Ok(buf)
    }

    /// A blob named by `desc`, checked against its size (before reading) and its digest.
    pub(super) fn blob(&self, desc: &Descriptor, what: &str, max: u64) -> Result<Vec<u8>> {
        let rel = oci::blob_rel(&desc.digest)?;
        let named = format!("{what} {}", desc.digest);
        let (f, size) = self.open(&rel, &named)?.ok_or_else(|| {
            err!(
                "{named} ({rel}) is missing from {}: the archive is incomplete",
                self.shown
            )
        })?;
        if size != desc.size {
            return Err(err!(
                "{named} in {} is {size} bytes but its descriptor says {}: the archive is damaged or was tampered with",
                self.shown,
                desc.size
            ));
        }
        let bytes = self.read_record(f, size, &rel, &named, max)?;
        check_bytes(&bytes, &desc.digest, Some(desc.size), what, &self.shown)?;
        Ok(bytes)
    }
}

pub(super) fn check_bytes(
    bytes: &[u8],
    digest: &str,
    size: Option<u64>,
    what: &str,
    shown: &str,
) -> Result<()> {
    if let Some(s) = size {
        if bytes.len() as u64 != s {
            return Err(err!(
                "{what} {digest} in {shown} is {} bytes but its descriptor says {s}: the archive is damaged or was tampered with",
                bytes.len()
            ));
        }
    }
    let got = crate::store::sha256_id(bytes);
    if got != digest {
        return Err(err!(
            "{what} {digest} in {shown} does not match its digest (content hashes to {got}): the archive is damaged or was tampered with"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolution() {
        let mut links = HashMap::new();
        links.insert(
            vec![b"a".to_vec(), b"layer.tar".to_vec()],
            b"../b/layer.tar".to_vec(),
        );
        links.insert(vec![b"evil".to_vec()], b"../../etc".to_vec());
        links.insert(vec![b"abs".to_vec()], b"/etc".to_vec());
        links.insert(vec![b"loop".to_vec()], b"loop".to_vec());
        let r = |rel: &str| {
            resolve_lexical(rel, "x", &|c: &[Vec<u8>]| Ok(links.get(c).cloned())).map(|c| join(&c))
        };
        assert_eq!(r("a/layer.tar").unwrap(), PathBuf::from("b/layer.tar"));
        assert_eq!(r("./a/../c//d").unwrap(), PathBuf::from("c/d"));
        assert!(r("evil/passwd").is_err());
        assert!(r("abs/passwd").is_err());
        assert!(r("loop/x").is_err());
        assert!(r("../x").is_err());
        assert!(r("/etc/passwd").is_err());
    }
}
