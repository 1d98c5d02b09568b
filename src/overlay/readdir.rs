//! Merged directory listings: the upper directory and the lower directories merged below
//! it, top layer first; whiteouts hide names below them and markers are never listed.
//!
//! Listings are served by position without a per-open handle: the mount declines OPENDIR
//! (two round trips fewer per directory walked), so a READDIR names only the directory
//! and the position to continue after. A position is therefore a cookie derived from the
//! entry's name, the same in every listing the mount takes, and entries are listed in
//! cookie order. Any listing taken after a reader's opendir or rewinddir is then a correct
//! continuation for it: entries added or removed since are the ones POSIX leaves
//! unspecified, and no other entry is skipped or repeated. So one cached listing per
//! directory serves every reader, and is retaken only when read from the start after
//! something in the mount changed.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{errno, Overlay};
use crate::error::{Error, Result};
use crate::layers::stack::Stack;
use crate::overlay::nodes::LowerRef;
use crate::sys;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    /// `DT_*` type as the layer reported it.
    pub dtype: u8,
    /// Best-effort inode number (readdirplus looks each entry up for the exact one).
    pub ino: u64,
    /// Position of the entry: the READDIR offset that continues after it.
    pub cookie: u64,
}

/// Positions of `.` and `..`; every other cookie is at least [`FIRST_NAME_COOKIE`].
pub const DOT_COOKIE: u64 = 1;
pub const DOTDOT_COOKIE: u64 = 2;
const FIRST_NAME_COOKIE: u64 = 4;

/// One directory's merged entries in cookie order, and when it was taken.
pub struct Listing {
    entries: Vec<DirEntry>,
    /// The overlay's change count when the listing was taken.
    taken_at: u64,
}

impl Listing {
    /// The entries a READDIR at `offset` returns: those positioned after it.
    pub fn after(&self, offset: u64) -> &[DirEntry] {
        let start = self.entries.partition_point(|e| e.cookie <= offset);
        &self.entries[start..]
    }
}

/// Most directories, and most entries in all, whose listings are kept. Beyond them the
/// oldest go; a listing retaken later is just as valid a continuation.
const KEPT_DIRS: usize = 512;
const KEPT_ENTRIES: usize = 256 * 1024;

/// Listings kept between READDIR requests, by directory node.
pub struct Listings {
    /// Fixed for the mount's life, so that cookies are too.
    hasher: RandomState,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_dir: HashMap<u64, Arc<Listing>>,
    /// Directories in the order their listings were taken, oldest first.
    order: VecDeque<u64>,
    entries: usize,
}

impl Default for Listings {
    fn default() -> Self {
        Listings {
            hasher: RandomState::new(),
            kept: Mutex::new(Kept::default()),
        }
    }
}

impl Listings {
    /// The position of `name` in every listing of this mount. 62 bits of a keyed hash: two
    /// names of one directory share one with odds of about 1 in 10^7 at a million entries,
    /// and even then only a reply boundary falling between them would skip one.
    fn cookie(&self, name: &OsStr) -> u64 {
        (self.hasher.hash_one(name) >> 1) | FIRST_NAME_COOKIE
    }

    /// The listing of `dir` for a READDIR at `offset`, when the overlay's change count is
    /// `changes`. Read from the start, it must be no older than the last change; read
    /// further on, any kept listing will do (see the module comment). `take` lists the
    /// directory: `.` and `..` first, then its names.
    pub fn get(
        &self,
        dir: u64,
        offset: u64,
        changes: u64,
        take: impl FnOnce() -> Result<Vec<DirEntry>>,
    ) -> Result<Arc<Listing>> {
        if let Some(l) = self.kept.lock().by_dir.get(&dir) {
            if offset != 0 || l.taken_at == changes {
                return Ok(l.clone());
            }
        }
        let mut entries = take()?;
        for e in &mut entries {
            e.cookie = match e.name.as_encoded_bytes() {
                b"." => DOT_COOKIE,
                b".." => DOTDOT_COOKIE,
                _ => self.cookie(&e.name),
            };
        }
        entries.sort_unstable_by(|a, b| a.cookie.cmp(&b.cookie).then_with(|| a.name.cmp(&b.name)));
        let listing = Arc::new(Listing {
            entries,
            taken_at: changes,
        });
        self.keep(dir, listing.clone());
        Ok(listing)
    }

    /// Drops every kept listing.
    pub fn clear(&self) {
        *self.kept.lock() = Kept::default();
    }

    fn keep(&self, dir: u64, listing: Arc<Listing>) {
        let mut kept = self.kept.lock();
        let kept = &mut *kept;
        kept.entries += listing.entries.len();
        if let Some(old) = kept.by_dir.insert(dir, listing) {
            kept.entries -= old.entries.len();
            kept.order.retain(|&d| d != dir);
        }
        kept.order.push_back(dir);
        // The newest listing stays even when it alone is over the limits.
        while kept.order.len() > 1 && (kept.order.len() > KEPT_DIRS || kept.entries > KEPT_ENTRIES)
        {
            if let Some(old) = kept.order.pop_front().and_then(|d| kept.by_dir.remove(&d)) {
                kept.entries -= old.entries.len();
            }
        }
    }
}

/// Lists the merged directory whose upper part is `upper` and lower parts `lowers`.
pub fn list(stack: &Stack, upper: Option<&Path>, lowers: &[LowerRef]) -> Result<Vec<DirEntry>> {
    let mut merge = Merge::default();
    if let (Some(layer), Some(path)) = (&stack.upper, upper) {
        let fd = layer
            .open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::from(e).context(layer.describe(path)))?;
        let upper = layer.read_contents(fd.as_fd(), path)?;
        let entries = upper
            .entries
            .iter()
            .map(|(n, t, i)| (n.as_os_str(), *t, *i));
        let whiteouts = upper.whiteouts.iter().map(|n| n.as_os_str());
        merge.add(entries, whiteouts, |ino| stack.dirent_ino(0, ino));
    }
    for lower in lowers {
        let layer = &stack.lowers[lower.layer];
        let listing = match layer.listing(&lower.path) {
            Ok(Some(l)) => l,
            // Lower layers always keep listings; a layer without one has nothing to add.
            Ok(None) => continue,
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        let whiteouts = (0..listing.whiteouts.len()).map(|i| listing.whiteouts.get(i));
        merge.add(listing.iter(), whiteouts, |ino| {
            stack.dirent_ino(lower.layer + 1, ino)
        });
    }
    Ok(merge.into_entries())
}

/// A merged listing under construction, top layer first: what each layer adds is decided
/// from the names alone (no layer is read here), so the merge is tested on name lists.
#[derive(Default)]
pub struct Merge {
    out: Vec<DirEntry>,
    seen: HashSet<OsString>,
    hidden: HashSet<OsString>,
}

impl Merge {
    /// Adds the entries of the next layer down: those no layer above had or deleted. Its
    /// whiteouts hide names of the layers below it, not its own. `ino` turns the layer's
    /// inode number into the one reported (`Stack::dirent_ino` of the layer's slot).
    pub fn add<'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a OsStr, u8, u64)>,
        whiteouts: impl Iterator<Item = &'a OsStr>,
        ino: impl Fn(u64) -> u64,
    ) {
        for (name, dtype, ino_raw) in entries {
            if self.hidden.contains(name) || self.seen.contains(name) {
                continue;
            }
            self.seen.insert(name.to_os_string());
            self.out.push(DirEntry {
                name: name.to_os_string(),
                dtype,
                ino: ino(ino_raw),
                cookie: 0,
            });
        }
        self.hidden.extend(whiteouts.map(OsStr::to_os_string));
    }

    /// The merged entries, top layer's first, each layer's in the order it listed them.
    pub fn into_entries(self) -> Vec<DirEntry> {
        self.out
    }
}

/// Whether the merged directory has any entry at all (rmdir's ENOTEMPTY).
pub fn is_empty(stack: &Stack, upper: Option<&Path>, lowers: &[LowerRef]) -> Result<bool> {
    Ok(list(stack, upper, lowers)?.is_empty())
}

impl Overlay {
    /// Makes the directory's upper part durable (its lower parts never change); nothing to
    /// do for a directory only in lower layers, or when the mount is volatile.
    pub fn fsyncdir(&self, id: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let tree = self.tree.read();
        let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
        if !node.upper || self.read_only {
            return Ok(());
        }
        let path = self.path(&tree, id)?;
        let upper = self.upper()?;
        let fd = upper.open_beneath(&path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(sys::fsync(fd.as_fd(), datasync)?)
    }

    /// The listing of directory `id` to answer a READDIR at `offset` from (see readdir.rs
    /// for why any kept listing may continue a read).
    pub fn listing(&self, id: u64, offset: u64) -> Result<Arc<Listing>> {
        let tree = self.tree.read();
        // Stable while the shared lock is held: changes take the exclusive one.
        let changes = self.changes.load(Ordering::Acquire);
        self.listings.get(id, offset, changes, || {
            let node = tree.get(id).ok_or_else(|| errno(libc::ENOENT))?;
            if !node.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            let upath = if node.upper {
                Some(self.path(&tree, id)?)
            } else {
                None
            };
            let parent_ino = node
                .aliases()
                .first()
                .and_then(|(p, _)| tree.get(*p))
                .map(|p| p.st_ino)
                .unwrap_or(node.st_ino);
            let dot = |name: &str, ino| DirEntry {
                name: name.into(),
                dtype: libc::DT_DIR,
                ino,
                cookie: 0,
            };
            let mut list = vec![dot(".", node.st_ino), dot("..", parent_ino)];
            list.extend(self::list(&self.stack, upath.as_deref(), &node.lower_dirs)?);
            Ok(list)
        })
    }

    /// Directory `id`, listed as `listing`, was read from the start; `from_disk` if
    /// serving that had to wait for the disk: its lower subdirectories may be read ahead
    /// (readahead.rs).
    pub fn listed(&self, id: u64, listing: &Listing, from_disk: bool) {
        let tree = self.tree.read();
        let Some(node) = tree.get(id) else { return };
        let subdirs = listing
            .after(DOTDOT_COOKIE)
            .iter()
            .filter(|e| e.dtype == libc::DT_DIR)
            .map(|e| e.name.as_os_str());
        self.readahead.listed(&node.lower_dirs, subdirs, from_disk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::fixture::{resolve, Layers, Lower, Upper};
    use std::path::PathBuf;

    /// One layer's part of a directory: entries as "NAME" (a regular file, inode number
    /// from the name's length) and whiteouts as "-NAME".
    fn part(spec: &[&'static str]) -> (Vec<(&'static OsStr, u8, u64)>, Vec<&'static OsStr>) {
        let mut entries = Vec::new();
        let mut whiteouts = Vec::new();
        for s in spec {
            match s.strip_prefix('-') {
                Some(n) => whiteouts.push(OsStr::new(n)),
                None => entries.push((OsStr::new(*s), libc::DT_REG, s.len() as u64)),
            }
        }
        (entries, whiteouts)
    }

    /// The merge of `layers` (top first) as "NAME@SLOT", the slot read back from the
    /// reported inode number.
    fn merged(layers: &[&[&'static str]]) -> Vec<String> {
        let mut m = Merge::default();
        for (slot, spec) in layers.iter().enumerate() {
            let (entries, whiteouts) = part(spec);
            m.add(entries.into_iter(), whiteouts.into_iter(), |ino| {
                ino + 1000 * slot as u64
            });
        }
        m.into_entries()
            .into_iter()
            .map(|e| format!("{}@{}", e.name.to_string_lossy(), e.ino / 1000))
            .collect()
    }

    #[test]
    fn the_top_layer_lists_a_name_once() {
        assert_eq!(
            merged(&[&["a", "b"], &["b", "c"], &["c", "a", "d"]]),
            ["a@0", "b@0", "c@1", "d@2"]
        );
    }

    #[test]
    fn whiteouts_hide_the_layers_below_only() {
        // Layer 1 deletes `x` and `y` of layer 2; layer 0 adds `y` back. A layer's own
        // whiteout does not hide its own entry of the name (an upper file made over a
        // lower whiteout keeps it until the whiteout is removed).
        assert_eq!(
            merged(&[&["y"], &["-x", "-y", "z", "-z"], &["x", "y", "z", "w"]]),
            ["y@0", "z@1", "w@2"]
        );
        assert!(merged(&[&["-a"], &["a"]]).is_empty());
    }

    #[test]
    fn a_whiteout_two_layers_up_still_hides() {
        assert_eq!(merged(&[&["-a"], &["b"], &["a", "c"]]), ["b@1", "c@2"]);
    }

    /// The merged listing of the merged directory `rel` of `l`, sorted, as "NAME:TYPE".
    fn ls(l: &Layers, rel: &str) -> Vec<String> {
        let stack = l.stack();
        let (upper, lowers) = if rel.is_empty() {
            (Some(PathBuf::new()), stack.root_lowers())
        } else {
            let f = resolve(&stack, rel).unwrap().expect("dir");
            (f.upper.then(|| PathBuf::from(rel)), f.lower_dirs)
        };
        let mut v: Vec<String> = list(&stack, upper.as_deref(), &lowers)
            .unwrap()
            .into_iter()
            .map(|e| {
                let t = match e.dtype {
                    libc::DT_DIR => "d",
                    libc::DT_REG => "f",
                    libc::DT_CHR => "c",
                    _ => "?",
                };
                format!("{}:{t}", e.name.to_string_lossy())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_listing_of_layers_on_disk_leaves_out_deleted_names_and_markers() {
        let l = Layers::new(2);
        l.file(Lower(1), "a", "")
            .file(Lower(1), "b", "")
            .dir(Lower(1), "c");
        l.file(Lower(1), "d", "").file(Lower(0), "e", "");
        l.whiteout_file(Lower(0), "a")
            .whiteout_chardev(Lower(0), "b");
        l.whiteout_chardev(Upper, "c").whiteout_file(Upper, "e");
        l.file(Upper, "u", "").dir(Upper, "d");
        assert_eq!(ls(&l, ""), ["d:d", "u:f"]);
        // A character device other than 0:0 is listed as what it is.
        let dir = std::fs::File::open(&l.lowers[1]).unwrap();
        let dev = sys::makedev(1, 3);
        sys::mknodat(dir.as_fd(), OsStr::new("null"), libc::S_IFCHR | 0o666, dev).unwrap();
        assert_eq!(ls(&l, ""), ["d:d", "null:c", "u:f"]);
    }

    #[test]
    fn an_opaque_directory_lists_only_its_own_layer_and_above() {
        let l = Layers::new(3);
        l.file(Lower(2), "o/deep", "").file(Lower(2), "m/deep", "");
        l.file(Lower(1), "o/mid", "").opaque_marker(Lower(1), "o");
        l.file(Lower(1), "m/mid", "").opaque_xattr(Lower(1), "m");
        l.file(Lower(0), "o/top", "").file(Lower(0), "m/top", "");
        assert_eq!(ls(&l, "o"), ["mid:f", "top:f"]);
        assert_eq!(ls(&l, "m"), ["mid:f", "top:f"]);
        l.opaque_xattr(Upper, "m").file(Upper, "m/up", "");
        assert_eq!(ls(&l, "m"), ["up:f"]);
    }

    #[test]
    fn a_redirected_directory_lists_where_its_redirect_leads() {
        let l = Layers::new(1);
        l.file(Lower(0), "old/f", "").file(Lower(0), "old/g", "");
        l.redirect(Upper, "new", b"old")
            .whiteout_file(Upper, "new/g");
        l.whiteout_file(Upper, "old");
        assert_eq!(ls(&l, "new"), ["f:f"]);
        assert_eq!(ls(&l, ""), ["new:d"]);
    }

    #[test]
    fn a_directory_whose_lower_names_are_all_deleted_is_empty() {
        let l = Layers::new(1);
        l.file(Lower(0), "d/x", "").file(Lower(0), "d/y", "");
        l.whiteout_file(Upper, "d/x").whiteout_chardev(Upper, "d/y");
        let stack = l.stack();
        let f = resolve(&stack, "d").unwrap().unwrap();
        assert!(is_empty(&stack, Some(Path::new("d")), &f.lower_dirs).unwrap());
        l.file(Lower(0), "e/x", "");
        let stack = l.stack();
        let f = resolve(&stack, "e").unwrap().unwrap();
        assert!(!is_empty(&stack, None, &f.lower_dirs).unwrap());
    }

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            name: name.into(),
            dtype: libc::DT_REG,
            ino: 1,
            cookie: 0,
        }
    }

    fn names(entries: &[DirEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_listing_retaken_after_a_change_continues_a_reader() {
        let kept = Listings::default();
        let take = |ns: &[&str]| {
            let v: Vec<DirEntry> = ns.iter().map(|n| entry(n)).collect();
            move || Ok(v)
        };
        let first = kept
            .get(7, 0, 1, take(&[".", "..", "a", "b", "c", "d"]))
            .unwrap();
        assert_eq!(names(&first.after(0)[..2]), [".", ".."]);
        // A reader stops after its second name; `b` goes and `e` comes meanwhile.
        let stop = first.after(DOTDOT_COOKIE)[1].clone();
        let seen: Vec<String> = names(&first.after(0)[..4]);
        let second = kept
            .get(7, 0, 2, take(&[".", "..", "a", "c", "d", "e"]))
            .unwrap();
        let rest = names(second.after(stop.cookie));
        // Every name present in both listings is seen exactly once.
        for n in ["a", "c", "d"] {
            let times = seen.iter().chain(&rest).filter(|s| *s == n).count();
            assert_eq!(times, 1, "{n}: {seen:?} then {rest:?}");
        }
        // Cookies are the names', the same in every listing.
        let cookie = |l: &Listing, n: &str| l.after(0).iter().find(|e| e.name == n).unwrap().cookie;
        assert_eq!(cookie(&first, "c"), cookie(&second, "c"));
        assert!(second
            .after(0)
            .windows(2)
            .all(|w| w[0].cookie < w[1].cookie));
    }

    #[test]
    fn a_kept_listing_serves_a_continuation_but_not_a_new_read_after_a_change() {
        let kept = Listings::default();
        let one = || Ok(vec![entry("."), entry(".."), entry("a")]);
        kept.get(3, 0, 5, one).unwrap();
        let again = kept.get(3, 0, 5, || panic!("retaken with nothing changed"));
        assert_eq!(names(again.unwrap().after(DOTDOT_COOKIE)), ["a"]);
        let cont = kept.get(3, DOTDOT_COOKIE, 6, || panic!("retaken for a continuation"));
        assert_eq!(names(cont.unwrap().after(DOTDOT_COOKIE)), ["a"]);
        let fresh = kept.get(3, 0, 6, || Ok(vec![entry("."), entry(".."), entry("b")]));
        assert_eq!(names(fresh.unwrap().after(DOTDOT_COOKIE)), ["b"]);
    }
}
