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
        merge.add(stack, 0, entries, whiteouts);
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
        merge.add(stack, lower.layer + 1, listing.iter(), whiteouts);
    }
    Ok(merge.out)
}

/// A merged listing under construction, top layer first.
#[derive(Default)]
struct Merge {
    out: Vec<DirEntry>,
    seen: HashSet<OsString>,
    hidden: HashSet<OsString>,
}

impl Merge {
    /// Adds the entries of the layer in `slot`: those no layer above had or deleted. Its
    /// whiteouts hide names of the layers below it, not its own.
    fn add<'a>(
        &mut self,
        stack: &Stack,
        slot: usize,
        entries: impl Iterator<Item = (&'a OsStr, u8, u64)>,
        whiteouts: impl Iterator<Item = &'a OsStr>,
    ) {
        for (name, dtype, ino) in entries {
            if self.hidden.contains(name) || self.seen.contains(name) {
                continue;
            }
            self.seen.insert(name.to_os_string());
            self.out.push(DirEntry {
                name: name.to_os_string(),
                dtype,
                ino: stack.dirent_ino(slot, ino),
                cookie: 0,
            });
        }
        self.hidden.extend(whiteouts.map(OsStr::to_os_string));
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
