//! The layer stack and lookup through it: the upper layer first, then the lowers top-first.
//! The first layer that has a name decides it; a whiteout there means "absent"; a
//! non-directory ends the search; a directory merges with the same name below until an
//! opaque directory (or a non-directory) is met.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::inode::{compose_ino, LowerRef};
use crate::layer::{is_dir, Layer};
use crate::sys::{self, Stat};
use crate::whiteout::{self, Encoding, XattrNs};

pub struct Stack {
    pub upper: Option<Layer>,
    pub work: Option<Layer>,
    /// Top-most first; shared with the directory read-ahead.
    pub lowers: Vec<Arc<Layer>>,
    /// Namespace this mount writes overlay xattrs in.
    pub xattr_ns: XattrNs,
    /// How this mount writes deletions.
    pub whiteout: Encoding,
    /// The device of every layer's root, when they are all on one filesystem.
    pub shared_dev: Option<u64>,
}

/// What a name resolves to.
#[derive(Debug)]
pub struct Found {
    /// Stat of the top-most occurrence (upper if present).
    pub stat: Stat,
    pub upper: bool,
    /// Top-most lower occurrence, for a file not present in upper; for a directory the
    /// first lower directory merged.
    pub lower: Option<LowerRef>,
    pub lower_dirs: Vec<LowerRef>,
    /// The inode number to report.
    pub st_ino: u64,
}

impl Found {
    pub fn kind(&self) -> u32 {
        self.stat.st_mode & libc::S_IFMT
    }
}

impl Stack {
    /// Reads the inode number the daemon recorded on an upper entry at copy-up.
    /// The inode number reported for an object of layer slot `slot` (0 upper, `i + 1` lower
    /// `i`) with stat `st`. With every layer on one filesystem the layer's own number is
    /// unique already and is reported as it is, as kernel overlayfs does: tools that kept
    /// inode numbers from the layer itself (git's index, for one) then see the same files.
    /// Otherwise, and for anything on another filesystem mounted inside a layer, the slot
    /// goes into the top bits (`compose_ino`).
    pub fn ino(&self, slot: usize, st: &Stat) -> u64 {
        match self.shared_dev {
            Some(dev) if dev == st.st_dev => compose_ino(0, st.st_ino),
            _ => compose_ino(slot, st.st_ino),
        }
    }

    /// The inode number a listing reports for an entry the layer of slot `slot` lists with
    /// inode number `ino` (a best effort: no device is known; lookups give the exact one).
    pub fn dirent_ino(&self, slot: usize, ino: u64) -> u64 {
        compose_ino(if self.shared_dev.is_some() { 0 } else { slot }, ino)
    }

    pub fn recorded_ino(&self, dir: std::os::fd::BorrowedFd, name: &OsStr) -> Option<u64> {
        let v = sys::getxattr(dir, name, OsStr::new(self.xattr_ns.ino())).ok()?;
        Some(u64::from_le_bytes(v.try_into().ok()?))
    }

    /// Looks `name` up in a directory whose upper part is `parent_upper` (if it exists in
    /// upper) and whose lower parts are `parent_lowers`.
    pub fn resolve(
        &self,
        parent_upper: Option<&Path>,
        parent_lowers: &[LowerRef],
        name: &OsStr,
    ) -> Result<Option<Found>> {
        if whiteout::is_marker_name(name) {
            return Ok(None);
        }
        let mut found: Option<Found> = None;
        // Lower places to look in, top-first; a redirect on the upper directory replaces them.
        let mut candidates: Vec<LowerRef> = parent_lowers
            .iter()
            .map(|l| LowerRef {
                layer: l.layer,
                path: l.path.join(name),
            })
            .collect();

        if let (Some(upper), Some(parent)) = (&self.upper, parent_upper) {
            let dir = upper.dir(parent)?;
            match sys::fstatat(dir.as_fd(), name) {
                Ok(st) if whiteout::is_chardev_whiteout(&st) => return Ok(None),
                Ok(st) => {
                    let st_ino = self
                        .recorded_ino(dir.as_fd(), name)
                        .unwrap_or_else(|| self.ino(0, &st));
                    if !is_dir(&st) {
                        return Ok(Some(Found {
                            stat: st,
                            upper: true,
                            lower: None,
                            lower_dirs: Vec::new(),
                            st_ino,
                        }));
                    }
                    if whiteout::is_opaque(dir.as_fd(), name) {
                        candidates.clear();
                    } else if let Some(target) = whiteout::redirect(dir.as_fd(), name) {
                        candidates = self.redirect_candidates(parent_lowers, &target);
                    }
                    found = Some(Found {
                        stat: st,
                        upper: true,
                        lower: None,
                        lower_dirs: Vec::new(),
                        st_ino,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if whiteout::has_whiteout_file(dir.as_fd(), name) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(Error::from(e).context(upper.describe(&parent.join(name)))),
            }
        }

        for cand in candidates {
            let layer = &self.lowers[cand.layer];
            let (parent, cname) = match (cand.path.parent(), cand.path.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => continue,
            };
            // A lower directory that is not there (or is not a directory) in this layer
            // simply contributes nothing.
            let absent = |e: &Error| {
                matches!(
                    e.errno(),
                    libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV
                )
            };
            // The cached listing answers "not here" and "deleted here" without a syscall.
            match layer.listing(parent) {
                Ok(Some(listing)) => {
                    if !listing.entries.contains(cname) {
                        if listing.whiteouts.contains(cname) {
                            break;
                        }
                        continue;
                    }
                }
                Ok(None) => {}
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(e),
            }
            let dir = match layer.dir(parent) {
                Ok(d) => d,
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(e),
            };
            let st = match sys::fstatat(dir.as_fd(), cname) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if whiteout::has_whiteout_file(dir.as_fd(), cname) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(Error::from(e).context(layer.describe(&cand.path))),
            };
            if whiteout::is_chardev_whiteout(&st) {
                break;
            }
            match &mut found {
                None if !is_dir(&st) => {
                    return Ok(Some(Found {
                        st_ino: self.ino(cand.layer + 1, &st),
                        stat: st,
                        upper: false,
                        lower: Some(cand),
                        lower_dirs: Vec::new(),
                    }));
                }
                None => {
                    let opaque = lower_opaque(layer, dir.as_fd(), &cand.path, cname);
                    found = Some(Found {
                        st_ino: self.ino(cand.layer + 1, &st),
                        stat: st,
                        upper: false,
                        lower: Some(cand.clone()),
                        lower_dirs: vec![cand],
                    });
                    if opaque {
                        break;
                    }
                }
                Some(f) => {
                    // Below a directory only directories merge; anything else ends the merge.
                    if !is_dir(&st) {
                        break;
                    }
                    let opaque = lower_opaque(layer, dir.as_fd(), &cand.path, cname);
                    if f.lower.is_none() {
                        f.lower = Some(cand.clone());
                    }
                    f.lower_dirs.push(cand);
                    if opaque {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Where a redirected directory's lower content is: an absolute redirect names a path
    /// from every lower layer's root; a relative one a sibling in the parent's lower dirs.
    fn redirect_candidates(&self, parent_lowers: &[LowerRef], target: &[u8]) -> Vec<LowerRef> {
        if let Some(abs) = target.strip_prefix(b"/") {
            let path = PathBuf::from(OsStr::from_bytes(abs));
            (0..self.lowers.len())
                .map(|layer| LowerRef {
                    layer,
                    path: path.clone(),
                })
                .collect()
        } else {
            parent_lowers
                .iter()
                .map(|l| LowerRef {
                    layer: l.layer,
                    path: l.path.join(OsStr::from_bytes(target)),
                })
                .collect()
        }
    }

    /// The root of the merged tree: upper root merged with every lower root.
    pub fn root_lowers(&self) -> Vec<LowerRef> {
        (0..self.lowers.len())
            .map(|layer| LowerRef {
                layer,
                path: PathBuf::new(),
            })
            .collect()
    }
}

/// Whether the lower directory `path` (reached as `name` in `parent`) is opaque: from its
/// cached listing when the layer keeps one, else by asking the layer.
fn lower_opaque(layer: &Layer, parent: std::os::fd::BorrowedFd, path: &Path, name: &OsStr) -> bool {
    match layer.listing(path) {
        Ok(Some(listing)) => listing.opaque,
        _ => whiteout::is_opaque(parent, name),
    }
}
