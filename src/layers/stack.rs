//! The layer stack and lookup through it: the upper layer first, then the lowers top-first.
//! The first layer that has a name decides it; a whiteout there means "absent"; a
//! non-directory ends the search; a directory merges with the same name below until an
//! opaque directory (or a non-directory) is met. A directory's redirect, in the upper or
//! in a lower layer, changes where the layers below it are looked at
//! (`layers::redirect`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::layers::layer::{is_dir, Layer};
use crate::layers::redirect::{self, Invalid, Place, Probe, Redirect};
use crate::layers::whiteout::{self, Encoding, XattrNs};
use crate::sys::{self, Stat};

/// How many places with an invalid redirect are remembered as already logged.
const REFUSED_MAX: usize = 1024;

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
    /// Places (slot, path) whose invalid redirect the log has told of.
    pub refused: Mutex<HashSet<(usize, PathBuf)>>,
}

/// What a name resolves to.
#[derive(Debug)]
pub struct Found {
    /// Stat of the top-most occurrence (upper if present).
    pub stat: Stat,
    pub upper: bool,
    /// Top-most lower occurrence, for a file not present in upper; for a directory the
    /// first lower directory merged.
    pub lower: Option<Place>,
    pub lower_dirs: Vec<Place>,
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
    /// upper) and whose lower parts are `parent_lowers`. Below the upper layer the lookup
    /// is the kernel's (`layers::redirect::lookup`): redirects on the upper entry and in
    /// the lower layers are followed; an invalid one fails the lookup with EIO.
    pub fn resolve(
        &self,
        parent_upper: Option<&Path>,
        parent_lowers: &[Place],
        name: &OsStr,
    ) -> Result<Option<Found>> {
        if whiteout::is_marker_name(name) {
            return Ok(None);
        }
        let mut found: Option<Found> = None;
        // What the lower layers are asked for: the name, or where the upper directory
        // says its lower content is.
        let mut below = Redirect::Relative(name.to_os_string());

        if let (Some(upper), Some(parent)) = (&self.upper, parent_upper) {
            let dir = upper.dir(parent)?;
            match sys::fstatat(dir.as_fd(), name) {
                Ok(st) if whiteout::is_chardev_whiteout(&st) => return Ok(None),
                Ok(st) => {
                    let st_ino = self
                        .recorded_ino(dir.as_fd(), name)
                        .unwrap_or_else(|| self.ino(0, &st));
                    let upper_found = Found {
                        stat: st,
                        upper: true,
                        lower: None,
                        lower_dirs: Vec::new(),
                        st_ino,
                    };
                    if !is_dir(&st) {
                        return Ok(Some(upper_found));
                    }
                    if whiteout::is_opaque(dir.as_fd(), name) {
                        return Ok(Some(upper_found));
                    }
                    if let Some(value) = whiteout::redirect(dir.as_fd(), name) {
                        below = Redirect::parse(&value)
                            .map_err(|why| self.refused(upper, None, &parent.join(name), why))?;
                    }
                    found = Some(upper_found);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if whiteout::has_whiteout_file(dir.as_fd(), name) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(Error::from(e).context(upper.describe(&parent.join(name)))),
            }
        }

        let hits = redirect::lookup(self, parent_lowers, below, found.is_some())?;
        let mut hits = hits.into_iter();
        let mut found = match found {
            Some(f) => f,
            None => {
                let Some(first) = hits.next() else {
                    return Ok(None);
                };
                let st_ino = self.ino(first.place.layer + 1, &first.meta);
                let lower_dirs = if first.is_dir {
                    vec![first.place.clone()]
                } else {
                    Vec::new()
                };
                Found {
                    stat: first.meta,
                    upper: false,
                    lower: Some(first.place),
                    lower_dirs,
                    st_ino,
                }
            }
        };
        for hit in hits {
            if found.lower.is_none() {
                found.lower = Some(hit.place.clone());
            }
            found.lower_dirs.push(hit.place);
        }
        Ok(Some(found))
    }

    /// The error for a lookup through an invalid redirect at `path` of `layer` (lower
    /// layer `slot`, or the upper), said in the log once per place.
    fn refused(&self, layer: &Layer, slot: Option<usize>, path: &Path, why: Invalid) -> Error {
        let place = layer.describe(path);
        let key = (slot.map_or(0, |s| s + 1), path.to_path_buf());
        let first = {
            let mut seen = self.refused.lock();
            if seen.len() >= REFUSED_MAX {
                seen.clear();
            }
            seen.insert(key)
        };
        if first {
            log::warn!("{place}: {why}; lookups through it fail with EIO");
        }
        Error::new(libc::EIO, format!("{place}: {why}"))
    }

    /// The root of the merged tree: upper root merged with every lower root.
    pub fn root_lowers(&self) -> Vec<Place> {
        (0..self.lowers.len())
            .map(|layer| Place {
                layer,
                path: PathBuf::new(),
            })
            .collect()
    }
}

impl redirect::LowerLayers for Stack {
    type Meta = Stat;
    type Error = Error;

    fn count(&self) -> usize {
        self.lowers.len()
    }

    fn probe(&self, slot: usize, dir: &Path, name: &OsStr, marks: bool) -> Result<Probe<Stat>> {
        let Some(layer) = self.lowers.get(slot) else {
            return Ok(Probe::Absent);
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
        match layer.listing(dir) {
            Ok(Some(listing)) => {
                if !listing.entries.contains(name) {
                    return Ok(if listing.whiteouts.contains(name) {
                        Probe::Whiteout
                    } else {
                        Probe::Absent
                    });
                }
            }
            Ok(None) => {}
            Err(e) if absent(&e) => return Ok(Probe::Absent),
            Err(e) => return Err(e),
        }
        let fd = match layer.dir(dir) {
            Ok(d) => d,
            Err(e) if absent(&e) => return Ok(Probe::Absent),
            Err(e) => return Err(e),
        };
        let st = match sys::fstatat(fd.as_fd(), name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(if whiteout::has_whiteout_file(fd.as_fd(), name) {
                    Probe::Whiteout
                } else {
                    Probe::Absent
                });
            }
            // A name no directory can hold is not there (the kernel's lookup says so too).
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => return Ok(Probe::Absent),
            Err(e) => return Err(Error::from(e).context(layer.describe(&dir.join(name)))),
        };
        if whiteout::is_chardev_whiteout(&st) {
            return Ok(Probe::Whiteout);
        }
        if !is_dir(&st) {
            return Ok(Probe::NonDir(st));
        }
        if !marks {
            return Ok(Probe::Dir {
                meta: st,
                opaque: false,
                redirect: None,
            });
        }
        let path = dir.join(name);
        let (opaque, redirect) = match layer.listing(&path) {
            Ok(Some(listing)) => (
                listing.opaque,
                listing.redirect.as_deref().map(<[u8]>::to_vec),
            ),
            _ => (
                whiteout::is_opaque(fd.as_fd(), name),
                whiteout::redirect(fd.as_fd(), name),
            ),
        };
        Ok(Probe::Dir {
            meta: st,
            opaque,
            redirect,
        })
    }

    fn refuse(&self, place: &Place, why: Invalid) -> Error {
        match self.lowers.get(place.layer) {
            Some(layer) => self.refused(layer, Some(place.layer), &place.path, why),
            None => Error::new(libc::EIO, why.to_string()),
        }
    }
}

/// Inode numbers reported through the mount: the layer's slot in the top 16 bits and the
/// layer's own inode number below, so two layers never collide. Slot 0 is the upper
/// layer, slot `i + 1` lower `i`. An inode number too wide for 48 bits is folded by
/// hashing, which keeps it stable but could in theory collide; ext4, tmpfs and xfs without
/// inode64 stay far below.
pub fn compose_ino(slot: usize, real: u64) -> u64 {
    const LOW: u64 = (1 << 48) - 1;
    let low = if real <= LOW {
        real
    } else {
        // Fold the high bits into the low ones (fxhash-style multiply), never 0.
        (real.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16).max(1) & LOW
    };
    ((slot as u64 & 0xFFFF) << 48) | low
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::fixture::{places, resolve, Layers, Lower, Upper};

    #[test]
    fn inode_numbers_keep_layers_apart() {
        assert_ne!(compose_ino(0, 5), compose_ino(1, 5));
        assert_eq!(compose_ino(2, 5), compose_ino(2, 5));
        assert_eq!(compose_ino(3, u64::MAX) >> 48, 3);
    }

    /// Where `rel` resolves: "upper", "LAYER:PATH" for a lower non-directory, or the
    /// merged lower directories; "absent" when it does not resolve.
    fn at(l: &Layers, rel: &str) -> String {
        match resolve(&l.stack(), rel).expect("lookup") {
            None => "absent".into(),
            Some(f) if f.kind() == libc::S_IFDIR => {
                let mut p = places(&f.lower_dirs);
                if f.upper {
                    p.insert(0, "upper".into());
                }
                format!("dir [{}]", p.join(" "))
            }
            Some(f) if f.upper => "upper".into(),
            Some(f) => places(std::slice::from_ref(f.lower.as_ref().expect("lower"))).join(""),
        }
    }

    #[test]
    fn the_top_most_layer_with_the_name_wins() {
        let l = Layers::new(3);
        l.file(Lower(2), "a", "bottom")
            .file(Lower(1), "a", "middle");
        l.file(Lower(2), "b", "bottom");
        l.file(Lower(0), "c", "lower").file(Upper, "c", "upper");
        assert_eq!(at(&l, "a"), "1:a");
        assert_eq!(at(&l, "b"), "2:b");
        assert_eq!(at(&l, "c"), "upper");
        assert_eq!(at(&l, "nope"), "absent");
        let f = resolve(&l.stack(), "a").unwrap().unwrap();
        assert_eq!(f.stat.st_size, "middle".len() as i64);
        assert!(!f.upper && f.lower_dirs.is_empty());
    }

    #[test]
    fn a_non_directory_ends_the_search_and_a_directory_merges_below() {
        let l = Layers::new(3);
        // A file in a higher layer hides a directory below it, and the other way round.
        l.file(Lower(2), "d/inner", "x").file(Lower(1), "d", "file");
        l.file(Lower(2), "f", "file").dir(Lower(0), "f");
        l.dir(Upper, "m").dir(Lower(0), "m").dir(Lower(2), "m");
        assert_eq!(at(&l, "d"), "1:d");
        assert_eq!(at(&l, "d/inner"), "absent");
        assert_eq!(at(&l, "f"), "dir [0:f]");
        assert_eq!(at(&l, "m"), "dir [upper 0:m 2:m]");
        // Below an upper directory a lower file of the name is not merged.
        l.dir(Upper, "u").file(Lower(0), "u", "file");
        assert_eq!(at(&l, "u"), "dir [upper]");
    }

    #[test]
    fn whiteouts_in_the_upper_layer_in_both_encodings() {
        let l = Layers::new(1);
        l.file(Lower(0), "c", "").file(Lower(0), "w", "");
        l.dir(Lower(0), "dc").dir(Lower(0), "dw");
        l.whiteout_chardev(Upper, "c").whiteout_file(Upper, "w");
        l.whiteout_chardev(Upper, "dc").whiteout_file(Upper, "dw");
        for name in ["c", "w", "dc", "dw"] {
            assert_eq!(at(&l, name), "absent", "{name}");
        }
        // A `.wh.` file hides only its own name.
        l.file(Lower(0), "wx", "");
        assert_eq!(at(&l, "wx"), "0:wx");
    }

    #[test]
    fn a_whiteout_in_a_middle_layer_hides_the_layers_below_it_only() {
        let l = Layers::new(3);
        l.file(Lower(2), "c", "").whiteout_chardev(Lower(1), "c");
        l.file(Lower(2), "w", "").whiteout_file(Lower(1), "w");
        // Above the whiteout the name is back.
        l.file(Lower(2), "back", "").whiteout_file(Lower(1), "back");
        l.file(Lower(0), "back", "");
        // A directory above a whiteout merges with nothing below it.
        l.dir(Lower(0), "d")
            .whiteout_file(Lower(1), "d")
            .dir(Lower(2), "d");
        l.dir(Lower(0), "e")
            .whiteout_chardev(Lower(1), "e")
            .dir(Lower(2), "e");
        assert_eq!(at(&l, "c"), "absent");
        assert_eq!(at(&l, "w"), "absent");
        assert_eq!(at(&l, "back"), "0:back");
        assert_eq!(at(&l, "d"), "dir [0:d]");
        assert_eq!(at(&l, "e"), "dir [0:e]");
    }

    #[test]
    fn a_character_device_other_than_0_0_is_no_whiteout() {
        let l = Layers::new(2);
        l.file(Lower(1), "null", "below");
        let dir = std::fs::File::open(&l.lowers[0]).unwrap();
        sys::mknodat(
            dir.as_fd(),
            OsStr::new("null"),
            libc::S_IFCHR | 0o666,
            sys::makedev(1, 3),
        )
        .expect("mknod (as root)");
        assert_eq!(at(&l, "null"), "0:null");
        let f = resolve(&l.stack(), "null").unwrap().unwrap();
        assert_eq!(
            (f.kind(), f.stat.st_rdev),
            (libc::S_IFCHR, sys::makedev(1, 3))
        );
    }

    #[test]
    fn a_whiteout_in_a_merged_subdirectory() {
        let l = Layers::new(2);
        l.file(Lower(1), "d/x", "").file(Lower(1), "d/y", "");
        l.whiteout_file(Lower(0), "d/x")
            .whiteout_chardev(Upper, "d/y");
        l.file(Lower(1), "d/z", "");
        assert_eq!(at(&l, "d"), "dir [upper 0:d 1:d]");
        assert_eq!(at(&l, "d/x"), "absent");
        assert_eq!(at(&l, "d/y"), "absent");
        assert_eq!(at(&l, "d/z"), "1:d/z");
    }

    #[test]
    fn opaque_directories_by_xattr_and_by_marker() {
        let l = Layers::new(3);
        for d in ["x", "m", "lx", "lm"] {
            l.file(Lower(2), &format!("{d}/below"), "");
        }
        l.opaque_xattr(Upper, "x").opaque_marker(Upper, "m");
        // In a middle layer: what is above it still merges, nothing below.
        l.dir(Lower(0), "lx").opaque_xattr(Lower(1), "lx");
        l.dir(Lower(0), "lm").opaque_marker(Lower(1), "lm");
        assert_eq!(at(&l, "x"), "dir [upper]");
        assert_eq!(at(&l, "m"), "dir [upper]");
        assert_eq!(at(&l, "lx"), "dir [0:lx 1:lx]");
        assert_eq!(at(&l, "lm"), "dir [0:lm 1:lm]");
        assert_eq!(at(&l, "x/below"), "absent");
        assert_eq!(at(&l, "lm/below"), "absent");
        // The marker itself is never a name of the directory.
        assert_eq!(at(&l, "m/.wh..wh..opq"), "absent");
    }

    #[test]
    fn an_opaque_mark_other_than_y_is_no_mark() {
        let l = Layers::new(2);
        l.file(Lower(1), "d/below", "").dir(Lower(0), "d");
        let p = l.path(Lower(0), "d");
        let dir = std::fs::File::open(&p).unwrap();
        sys::setxattr(
            dir.as_fd(),
            OsStr::new(""),
            OsStr::new(XattrNs::User.opaque()),
            b"n",
            0,
        )
        .unwrap();
        assert_eq!(at(&l, "d"), "dir [0:d 1:d]");
        assert_eq!(at(&l, "d/below"), "1:d/below");
    }

    #[test]
    fn marker_names_never_resolve() {
        let l = Layers::new(1);
        l.whiteout_file(Lower(0), "gone")
            .opaque_marker(Lower(0), "o");
        l.file(Upper, ".wh.x", "");
        for name in [".wh.gone", ".wh.x", "o/.wh..wh..opq", ".wh..wh..opq"] {
            assert_eq!(at(&l, name), "absent", "{name}");
        }
    }

    #[test]
    fn inode_numbers_of_found_objects() {
        let l = Layers::new(2);
        l.file(Lower(1), "f", "").file(Upper, "u", "");
        let mut stack = l.stack();
        let f = resolve(&stack, "f").unwrap().unwrap();
        assert_eq!(f.st_ino, compose_ino(2, f.stat.st_ino));
        // All layers on one filesystem: the layer's own number, as kernel overlayfs.
        stack.shared_dev = Some(f.stat.st_dev);
        let f = resolve(&stack, "f").unwrap().unwrap();
        assert_eq!(f.st_ino, f.stat.st_ino);
        // The number recorded on an upper copy is the one reported.
        let dir = std::fs::File::open(&l.upper).unwrap();
        let attr = OsStr::new(XattrNs::User.ino());
        sys::setxattr(dir.as_fd(), OsStr::new("u"), attr, &77u64.to_le_bytes(), 0).unwrap();
        assert_eq!(resolve(&stack, "u").unwrap().unwrap().st_ino, 77);
    }
}
