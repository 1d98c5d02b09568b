//! One layer directory, reached only through a directory handle: every path below is
//! resolved relative to it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so
//! nothing a layer contains can lead the daemon outside it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::error::{Context, Error, Result};
use crate::layers::whiteout;
use crate::sys::{self, Stat};

/// How many directory handles one layer keeps open at most by default; past that the cache
/// starts over, so open fds stay bounded whatever the size of the tree. The daemon lowers
/// it to fit the open file limit ([`size_dir_caches`]).
const DIR_CACHE_DEFAULT: usize = 1024;
/// The smallest per-layer cache worth keeping: a lookup's parent and a few siblings.
const DIR_CACHE_MIN: usize = 8;
/// Descriptors kept out of the caches' share: `/dev/fuse` clones, stdio, the workdir's
/// handles, the read-ahead's; the daemon adds a few per io_uring queue.
const FD_RESERVE: u64 = 64;
/// Paths up to this long are opened with one `openat2`; longer ones from an ancestor's
/// handle, one component at a time.
const ONE_WALK_MAX: usize = 2048;
/// How often a walk down a deep tree leaves a cached handle behind (`open_deep_dir`).
const DEEP_CHECKPOINT: usize = 32;

static DIR_CACHE_MAX: AtomicUsize = AtomicUsize::new(DIR_CACHE_DEFAULT);

/// Every layer's handle cache, so that running out of descriptors anywhere can empty them.
static DIR_CACHES: Mutex<Vec<Weak<DirCache>>> = Mutex::new(Vec::new());

/// Keyed by the path's bytes: `Path`'s own hash walks its components, which costs more
/// than the lookup it serves in a deep tree (the paths come from the node table, always in
/// one spelling).
type DirCache = RwLock<HashMap<OsString, Arc<OwnedFd>>>;

/// Sizes the layers' directory-handle caches from the open file limit (`nofile`, after
/// the daemon raised its soft limit) and the number of layer directories: together they
/// take at most half of what is left after a fixed reserve, the other half being for
/// files open through the mount; `extra_reserve` more are kept out first (the rings'
/// descriptors). Under `ulimit -n 1024` and three layers: 160 each.
pub fn size_dir_caches(nofile: u64, layers: usize, extra_reserve: u64) -> usize {
    let reserve = FD_RESERVE.saturating_add(extra_reserve);
    let share = nofile.saturating_sub(reserve) / 2 / layers.max(1) as u64;
    let max = usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(DIR_CACHE_MIN, DIR_CACHE_DEFAULT);
    DIR_CACHE_MAX.store(max, Ordering::Relaxed);
    max
}

/// Closes every cached directory handle of every layer; `sys` calls it when an open
/// fails with EMFILE or ENFILE, then retries once. A cache another thread holds locked is
/// left alone (its holder may be this thread).
fn drop_all_dir_handles() {
    let caches: Vec<Arc<DirCache>> = DIR_CACHES.lock().iter().filter_map(Weak::upgrade).collect();
    let mut closed = 0;
    for cache in caches {
        if let Some(mut dirs) = cache.try_write() {
            closed += dirs.len();
            dirs.clear();
        }
    }
    log::debug!("out of file descriptors: closed {closed} cached directory handles");
}

fn register_dir_cache(cache: &Arc<DirCache>) {
    let mut all = DIR_CACHES.lock();
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(cache));
    sys::set_fd_relief(drop_all_dir_handles);
}
/// How many names one layer keeps in directory listings at most (about 25 bytes each);
/// past that the cache starts over, so memory stays bounded whatever the size of the tree.
const LISTING_CACHE_MAX_NAMES: usize = 200_000;

/// What one directory of an immutable layer holds, read once: lookups of names it does not
/// have, and whiteouts next to names, are answered without a syscall, and merged listings
/// take its entries from here instead of reading the directory again.
#[derive(Debug, Default)]
pub struct CachedDir {
    /// Names (whiteouts and the opaque marker excluded).
    pub entries: NameSet,
    /// Per name of `entries`, in its order: the type and inode number the layer listed.
    kinds: Box<[u8]>,
    inos: Box<[u64]>,
    /// Names deleted here: by a `.wh.NAME` file or a character device 0:0 of the name.
    pub whiteouts: NameSet,
    /// Opaque by marker file or xattr.
    pub opaque: bool,
    /// The directory's own redirect xattr value (kernel `redirect_dir`), unparsed.
    pub redirect: Option<Box<[u8]>>,
}

impl CachedDir {
    /// Every entry as (name, `DT_*` type, inode number).
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, u8, u64)> {
        (0..self.entries.len()).map(|i| {
            (
                OsStr::from_bytes(self.entries.name(i)),
                self.kinds[i],
                self.inos[i],
            )
        })
    }
}

/// A set of names in two allocations (the names back to back, sorted, and where each
/// ends): a few bytes per name over the name itself, where a hash set of strings costs
/// about a hundred, and no scattered small allocations that would pin heap pages long
/// after the tree that looked them up is forgotten.
#[derive(Debug, Default)]
pub struct NameSet {
    bytes: Box<[u8]>,
    ends: Box<[u32]>,
}

impl NameSet {
    fn from_names(mut names: Vec<OsString>) -> NameSet {
        names.sort_unstable();
        names.dedup();
        let mut bytes = Vec::with_capacity(names.iter().map(|n| n.len()).sum());
        let mut ends = Vec::with_capacity(names.len());
        for n in &names {
            bytes.extend_from_slice(n.as_bytes());
            // A directory's names total far below 4 GiB (each is at most 255 bytes).
            ends.push(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        }
        NameSet {
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// The `i`th name in byte order.
    pub fn get(&self, i: usize) -> &OsStr {
        OsStr::from_bytes(self.name(i))
    }

    fn name(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// A directory entry as a layer lists it: (name, `DT_*` type, inode number).
pub type RawEntry = (OsString, u8, u64);

/// One layer directory's contents, as `Layer::read_contents` sorts them.
#[derive(Debug, Default)]
pub struct DirContents {
    pub entries: Vec<RawEntry>,
    /// Names deleted by a whiteout here.
    pub whiteouts: Vec<OsString>,
    /// The directory holds the opaque marker file.
    pub opaque_marker: bool,
}

#[derive(Default)]
struct CachedDirs {
    /// Keyed by the path's bytes, as [`DirCache`].
    dirs: HashMap<OsString, Arc<CachedDir>>,
    names: usize,
}

pub struct Layer {
    /// Where the user said the layer is (for messages).
    pub path: PathBuf,
    root: OwnedFd,
    pub dev: u64,
    /// O_PATH handles of directories looked at recently, so that a lookup costs one
    /// `fstatat` instead of a path walk. A handle follows its directory, not its path:
    /// whoever renames or removes a directory in this layer calls `forget_dirs_under`.
    dirs: Arc<DirCache>,
    /// Directory listings, kept for immutable (lower) layers only.
    listings: Option<RwLock<CachedDirs>>,
    /// The override_stat xattr this layer keeps owners and modes in
    /// (`whiteout::OVERRIDE_STAT_XATTRS`), as fuse-overlayfs decides for a layer: the
    /// first of them its root carries; `xattr_permissions=` picks the upper layer's.
    pub stat_override: Option<&'static str>,
}

impl Layer {
    pub fn open(path: &Path) -> Result<Layer> {
        let root = std::fs::File::open(path)
            .map(OwnedFd::from)
            .context(format!("layer {}", path.display()))?;
        let st = sys::fstat(root.as_fd()).context(format!("layer {}", path.display()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Error::new(
                libc::ENOTDIR,
                format!("layer {}", path.display()),
            ));
        }
        let dirs = Arc::new(RwLock::new(HashMap::new()));
        register_dir_cache(&dirs);
        let stat_override = whiteout::OVERRIDE_STAT_XATTRS
            .iter()
            .copied()
            .find(|attr| sys::getxattr(root.as_fd(), OsStr::new("."), OsStr::new(attr)).is_ok());
        Ok(Layer {
            path: path.to_path_buf(),
            root,
            dev: st.st_dev,
            dirs,
            listings: None,
            stat_override,
        })
    }

    /// A layer that does not change while mounted (a lower layer): its directory listings
    /// are cached.
    pub fn open_immutable(path: &Path) -> Result<Layer> {
        let mut layer = Layer::open(path)?;
        layer.listings = Some(RwLock::new(CachedDirs::default()));
        Ok(layer)
    }

    /// The listing of directory `rel`; `None` for a layer that may change.
    pub fn listing(&self, rel: &Path) -> Result<Option<Arc<CachedDir>>> {
        let Some(cache) = &self.listings else {
            return Ok(None);
        };
        if let Some(l) = cache.read().dirs.get(rel.as_os_str()) {
            return Ok(Some(l.clone()));
        }
        let fd = self
            .open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::from(e).context(self.describe(rel)))?;
        let listing = Arc::new(self.read_listing(fd.as_fd(), rel)?);
        self.keep_listing(rel, listing.clone());
        Ok(Some(listing))
    }

    /// The listing of directory `rel` if it is cached, without reading it.
    pub fn cached_listing(&self, rel: &Path) -> Option<Arc<CachedDir>> {
        self.listings
            .as_ref()?
            .read()
            .dirs
            .get(rel.as_os_str())
            .cloned()
    }

    fn keep_listing(&self, rel: &Path, listing: Arc<CachedDir>) {
        let Some(cache) = &self.listings else {
            return;
        };
        let mut cache = cache.write();
        if cache.names + listing.entries.len() > LISTING_CACHE_MAX_NAMES {
            cache.dirs.clear();
            cache.names = 0;
        }
        cache.names += listing.entries.len();
        if let Some(old) = cache.dirs.insert(rel.as_os_str().to_os_string(), listing) {
            cache.names -= old.entries.len();
        }
    }

    /// Reads the directory `fd` (opened as `rel`, for messages).
    fn read_listing(&self, fd: BorrowedFd, rel: &Path) -> Result<CachedDir> {
        let (xattr_opaque, redirect) = overlay_xattrs(fd);
        let DirContents {
            mut entries,
            whiteouts,
            opaque_marker,
        } = self.read_contents(fd, rel)?;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let kinds = entries.iter().map(|e| e.1).collect();
        let inos = entries.iter().map(|e| e.2).collect();
        let names = entries.into_iter().map(|e| e.0).collect();
        Ok(CachedDir {
            entries: NameSet::from_names(names),
            kinds,
            inos,
            whiteouts: NameSet::from_names(whiteouts),
            opaque: xattr_opaque || opaque_marker,
            redirect,
        })
    }

    /// What the directory `fd` (opened as `rel`, for messages) holds, in any layer: its
    /// entries, the names its whiteouts (`.wh.NAME` files, character devices 0:0) delete,
    /// and whether it has the opaque marker file; other markers are left out. An entry the
    /// layer lists without a type gets the one its stat tells.
    pub fn read_contents(&self, fd: BorrowedFd, rel: &Path) -> Result<DirContents> {
        let raw = sys::read_dir(fd).map_err(|e| Error::from(e).context(self.describe(rel)))?;
        let mut out = DirContents {
            entries: Vec::with_capacity(raw.len()),
            ..DirContents::default()
        };
        for (name, mut dtype, ino) in raw {
            if name.as_os_str() == OsStr::new(whiteout::OPAQUE_MARKER) {
                out.opaque_marker = true;
                continue;
            }
            if let Some(target) = whiteout::whiteout_target(&name) {
                out.whiteouts.push(target.to_os_string());
                continue;
            }
            if whiteout::is_marker_name(&name) {
                continue;
            }
            if dtype == libc::DT_CHR || dtype == libc::DT_UNKNOWN {
                match sys::fstatat(fd, &name) {
                    Ok(st) if whiteout::is_chardev_whiteout(&st) => {
                        out.whiteouts.push(name);
                        continue;
                    }
                    Ok(st) => dtype = dtype_of(&st),
                    Err(_) => {}
                }
            }
            out.entries.push((name, dtype, ino));
        }
        Ok(out)
    }

    /// Brings what listing the directory `rel` through the mount will read into the caches
    /// ahead of it (see overlay/readahead.rs): its blocks, the inode of every entry, the listing
    /// an immutable layer keeps of it and of each of its subdirectories.
    pub fn read_ahead(&self, rel: &Path) -> Result<()> {
        let fd = self
            .open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::from(e).context(self.describe(rel)))?;
        let listing = Arc::new(self.read_listing(fd.as_fd(), rel)?);
        for (name, _, _) in listing.iter() {
            let _ = sys::fstatat(fd.as_fd(), name);
        }
        self.keep_listing(rel, listing.clone());
        // Listing `rel` looks each subdirectory up, which reads its listing (is it
        // opaque, what does it hide).
        for (name, dtype, _) in listing.iter() {
            if dtype == libc::DT_DIR {
                let _ = self.listing(&rel.join(name));
            }
        }
        Ok(())
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// An `O_PATH` handle on the directory `rel` (empty: the layer root).
    pub fn dir(&self, rel: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.dirs.read().get(rel.as_os_str()) {
            return Ok(fd.clone());
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fd = if rel.as_os_str().len() <= ONE_WALK_MAX {
            sys::openat_beneath(self.root(), rel, flags, 0)
        } else {
            self.open_deep_dir(rel)
        };
        let fd = Arc::new(fd.map_err(|e| Error::from(e).context(self.describe(rel)))?);
        self.keep_dir(rel, fd.clone());
        Ok(fd)
    }

    fn keep_dir(&self, rel: &Path, fd: Arc<OwnedFd>) {
        let mut dirs = self.dirs.write();
        if dirs.len() >= DIR_CACHE_MAX.load(Ordering::Relaxed) {
            dirs.clear();
        }
        dirs.insert(rel.as_os_str().to_os_string(), fd);
    }

    /// Opens the directory `rel`, too long for one `openat2`: from its nearest ancestor
    /// that is cached or short enough, then one component at a time. A loop, so the depth
    /// of a tree never deepens the stack. Every [`DEEP_CHECKPOINT`]th directory on the way
    /// down is cached, so that the next walk near it (the parent's attributes after an
    /// rmdir, a sibling) starts close by instead of from the top: without them removing a
    /// 3,000-deep tree bottom up walked it again for every level.
    fn open_deep_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut below: Vec<&OsStr> = Vec::new();
        let mut base = rel;
        let mut cur: Option<OwnedFd> = None;
        let mut cached: Option<Arc<OwnedFd>> = None;
        while let (Some(parent), Some(name)) = (base.parent(), base.file_name()) {
            below.push(name);
            base = parent;
            if let Some(fd) = self.dirs.read().get(base.as_os_str()) {
                cached = Some(fd.clone());
                break;
            }
            if base.as_os_str().len() <= ONE_WALK_MAX {
                cur = Some(sys::openat_beneath(self.root(), base, flags, 0)?);
                break;
            }
        }
        let mut at = base.to_path_buf();
        for (i, name) in below.iter().rev().enumerate() {
            let from = match (&cur, &cached) {
                (Some(fd), _) => fd.as_fd(),
                (None, Some(fd)) => fd.as_fd(),
                (None, None) => self.root(),
            };
            let next = sys::openat_beneath(from, Path::new(name), flags, 0)?;
            at.push(name);
            if i % DEEP_CHECKPOINT == DEEP_CHECKPOINT - 1 && i + 1 < below.len() {
                let keep = Arc::new(next);
                self.keep_dir(&at, keep.clone());
                cur = None;
                cached = Some(keep);
            } else {
                cur = Some(next);
            }
        }
        match (cur, cached) {
            (Some(fd), _) => Ok(fd),
            // `rel` itself was cached: its parent is (the walk started there).
            (None, Some(fd)) => sys::openat_beneath(fd.as_fd(), Path::new("."), flags, 0),
            (None, None) => sys::openat_beneath(self.root(), rel, flags, 0),
        }
    }

    /// Opens `rel` with `flags`, confined to the layer. A path too long for one syscall is
    /// opened from its parent's (cached) handle, so trees deeper than PATH_MAX work.
    pub fn open_beneath(&self, rel: &Path, flags: i32) -> std::io::Result<OwnedFd> {
        if rel.as_os_str().len() <= ONE_WALK_MAX {
            return sys::openat_beneath(self.root(), rel, flags, 0);
        }
        let (parent, Some(name)) = split(rel) else {
            return sys::openat_beneath(self.root(), rel, flags, 0);
        };
        let dir = self
            .dir(parent)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        sys::openat_beneath(dir.as_fd(), Path::new(name), flags, 0)
    }

    /// Drops the cached handles of directory `rel` and of everything below it: it moved or
    /// went, and a handle would follow it.
    pub fn forget_dirs_under(&self, rel: &Path) {
        let rel = rel.as_os_str().as_bytes();
        // Byte prefixes, shortest test first: in a deep tree most cached paths are the
        // moved directory's ancestors, shorter than it.
        let under = |p: &Path| {
            let p = p.as_os_str().as_bytes();
            rel.is_empty()
                || (p.len() >= rel.len()
                    && p.starts_with(rel)
                    && (p.len() == rel.len() || p[rel.len()] == b'/'))
        };
        self.dirs.write().retain(|p, _| !under(Path::new(p)));
    }

    /// `lstat` of `rel`, without following a final symlink.
    pub fn stat(&self, rel: &Path) -> Result<Stat> {
        let (parent, name) = split(rel);
        match name {
            None => sys::fstat(self.root()).map_err(|e| Error::from(e).context(self.describe(rel))),
            Some(name) => {
                let dir = self.dir(parent)?;
                sys::fstatat(dir.as_fd(), name)
                    .map_err(|e| Error::from(e).context(self.describe(rel)))
            }
        }
    }

    /// Opens `rel` (not following a final symlink) with `flags`.
    pub fn open_file(&self, rel: &Path, flags: i32) -> Result<OwnedFd> {
        self.open_beneath(rel, flags | libc::O_NOFOLLOW)
            .map_err(|e| Error::from(e).context(self.describe(rel)))
    }

    /// "layer PATH: REL" for error messages.
    pub fn describe(&self, rel: &Path) -> String {
        format!("{}/{}", self.path.display(), rel.display())
    }
}

/// Splits a layer-relative path into its parent and final name; the root has no name.
pub fn split(rel: &Path) -> (&Path, Option<&OsStr>) {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => (parent, Some(name)),
        _ => (Path::new(""), None),
    }
}

/// Whether the directory `fd` carries an opaque xattr set to "y", and its redirect
/// xattr's value. Most directories have no xattr at all: one listxattr tells, where
/// asking for each xattr would take four getxattr calls. ("." rather than an empty name
/// keeps the call on the handle.)
fn overlay_xattrs(fd: BorrowedFd) -> (bool, Option<Box<[u8]>>) {
    let dot = OsStr::new(".");
    let Ok(names) = sys::listxattr(fd, dot) else {
        return (false, None);
    };
    let has = |attr: &str| names.iter().any(|n| n == attr);
    let opaque = whiteout::OPAQUE_XATTRS
        .iter()
        .any(|attr| has(attr) && sys::getxattr(fd, dot, OsStr::new(attr)).is_ok_and(|v| v == b"y"));
    let redirect = whiteout::REDIRECT_XATTRS
        .iter()
        .filter(|attr| has(attr))
        .find_map(|attr| sys::getxattr(fd, dot, OsStr::new(attr)).ok())
        .map(Vec::into_boxed_slice);
    (opaque, redirect)
}

/// The `DT_*` type of what `st` describes.
pub fn dtype_of(st: &Stat) -> u8 {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_UNKNOWN,
    }
}

pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_sets_find_exactly_their_names() {
        let names = ["b", "a", "ab", "", "z\u{e9}", "a"]
            .map(OsString::from)
            .to_vec();
        let set = NameSet::from_names(names);
        assert_eq!(set.len(), 5);
        for n in ["a", "ab", "b", "", "z\u{e9}"] {
            assert!(set.contains(OsStr::new(n)), "{n:?}");
        }
        for n in ["aa", "c", "z", "B"] {
            assert!(!set.contains(OsStr::new(n)), "{n:?}");
        }
        assert!(!NameSet::default().contains(OsStr::new("a")));
    }
}
