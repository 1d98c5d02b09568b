//! The FUSE operations, independent of how requests arrive: each takes a request's
//! arguments and answers with plain data or an errno. `fs.rs` (requests read from
//! `/dev/fuse` by fuser) and `ring.rs` (FUSE over io_uring) turn these answers into replies.
//! Owners are translated by the id options here, so both transports report the same thing.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::fuse::idmap::{self, IdMap};
use crate::fuse::passthrough::{Mode, Passthrough};
use crate::layers::acl;
use crate::overlay::readdir::Listing;
use crate::overlay::{Caller, NewKind, Overlay, SetAttr};
use crate::sys::{self, Stat};
use crate::{Config, Error, Result};

/// An operation's answer: the value, or the errno to reply with.
pub type Answer<T> = std::result::Result<T, i32>;

/// Who sent a request (ids as the kernel sees them, before any id mapping).
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
}

/// A node handed to the kernel: `id` 0 is a negative entry (the name does not exist).
pub struct Entry {
    pub id: u64,
    pub generation: u64,
    /// Attributes as callers see them (owners translated).
    pub st: Stat,
}

/// How an opened file is served.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opened {
    pub fh: u64,
    /// FOPEN_* flags for the reply.
    pub flags: u32,
    /// The backing id when the file passes through to a layer file.
    pub backing: Option<u32>,
}

pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// A GETXATTR/LISTXATTR answer: the size when the caller asked for it (size 0), else the
/// bytes.
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// Where READDIR entries go; `add` says whether the reply is full (the entry not taken).
pub trait DirSink {
    fn add(&mut self, ino: u64, cookie: u64, dtype: u8, name: &OsStr) -> bool;
}

/// Where READDIRPLUS entries go; `add` says whether the reply is full.
pub trait DirPlusSink {
    fn add(&mut self, entry: &Entry, ttl: Duration, cookie: u64, name: &OsStr) -> bool;
}

/// The transport's buffer a READ is read into.
pub trait ReadSink {
    fn buffer(&mut self, size: usize) -> &mut [u8];
}

pub struct Ops {
    overlay: Overlay,
    ttl: Duration,
    passthrough: Passthrough,
    ids: IdMap,
    /// Whether the kernel opens directories by itself when OPENDIR says ENOSYS.
    decline_opendir: AtomicBool,
    /// Whether INIT agreed to FUSE over io_uring: the rings must then be registered.
    ring: AtomicBool,
    /// The session's `/dev/fuse`, where backing files are registered.
    device: OnceLock<Arc<OwnedFd>>,
    /// Debug builds only: a lookup of this name panics (`LAYERFS_TEST_PANIC_LOOKUP`), so
    /// the tests can check that a panicking request costs only its own answer.
    panic_lookup: Option<std::ffi::OsString>,
}

thread_local! {
    /// Set while a request is answered: the panic hook then leaves the message here for
    /// [`guarded`] to log with the request's name, instead of printing it.
    static PANIC: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// Installs the daemon's panic hook: a panic while answering a request is kept for
/// [`guarded`] to log in one line; any other panic is logged in one line as it happens.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        let kept = PANIC.with_borrow_mut(|slot| match slot {
            Some(m) => {
                *m = Some(msg.clone());
                true
            }
            None => false,
        });
        if !kept {
            log::error!("{msg}");
        }
    }));
}

/// Runs the answer to one request, catching a panic: the daemon must not abort on one
/// bad request. `None` when it panicked, logged once; the caller answers EIO (fuser's
/// replies do so by themselves when dropped unsent), and the mount keeps serving. The
/// namespace lock does not poison (parking_lot), so later requests go on.
pub fn guarded<T>(op: &str, answer: impl FnOnce() -> T) -> Option<T> {
    let outer = PANIC.with_borrow_mut(|slot| slot.replace(None));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(answer));
    let msg = PANIC.with_borrow_mut(|slot| std::mem::replace(slot, outer));
    match r {
        Ok(v) => Some(v),
        Err(_) => {
            let msg = msg.flatten().unwrap_or_else(|| "panic".to_string());
            log::error!("{op} request failed: {msg}; answered EIO, the mount keeps serving");
            None
        }
    }
}

fn fail(e: Error) -> i32 {
    log::debug!("{e}");
    e.errno()
}

fn result<T>(r: Result<T>) -> Answer<T> {
    r.map_err(fail)
}

impl Ops {
    /// Opens every layer of `config` and prepares the overlay; no mount happens here.
    pub fn new(config: &Config) -> Result<Ops> {
        Ok(Ops {
            overlay: Overlay::new(config)?,
            ttl: Duration::from_secs_f64(config.timeout.max(0.0)),
            passthrough: Passthrough::new(),
            ids: IdMap::new(config),
            decline_opendir: AtomicBool::new(false),
            ring: AtomicBool::new(false),
            device: OnceLock::new(),
            panic_lookup: cfg!(debug_assertions)
                .then(|| std::env::var_os("LAYERFS_TEST_PANIC_LOOKUP"))
                .flatten(),
        })
    }

    /// How long the kernel may keep entries and attributes.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Settled at INIT: what the kernel agreed to.
    pub fn negotiated(&self, decline_opendir: bool, passthrough: bool, ring: bool) {
        self.decline_opendir
            .store(decline_opendir, Ordering::Release);
        if passthrough {
            self.passthrough.enable();
        }
        self.ring.store(ring, Ordering::Release);
    }

    /// Whether INIT agreed to FUSE over io_uring.
    pub fn ring_agreed(&self) -> bool {
        self.ring.load(Ordering::Acquire)
    }

    /// The session's device, once mounted: backing files are registered on it.
    pub fn set_device(&self, dev: Arc<OwnedFd>) {
        let _ = self.device.set(dev);
    }

    /// Attributes as callers see them: owners translated by the id options.
    fn owners_out(&self, mut st: Stat) -> Stat {
        st.st_uid = self.ids.uid_out(st.st_uid);
        st.st_gid = self.ids.gid_out(st.st_gid);
        st
    }

    fn entry(&self, id: u64, st: Stat) -> Entry {
        Entry {
            id,
            generation: self.overlay.generation(id),
            st: self.owners_out(st),
        }
    }

    /// The caller's ids on disk. An id the mapping cannot represent is written as the
    /// overflow id (65534), as fuse-overlayfs does: podman's own root (outside a
    /// `--uidmap 0:1:N` range) creates /etc/mtab and the like through the mount.
    fn caller(&self, ctx: Ctx) -> Answer<Caller> {
        let uid = self.ids.uid_in(ctx.uid).unwrap_or(idmap::OVERFLOW_ID);
        let gid = self.ids.gid_in(ctx.gid).unwrap_or(idmap::OVERFLOW_ID);
        Ok(Caller { uid, gid })
    }

    /// A chown target on disk; an id outside the mapping becomes the overflow id, as in
    /// fuse-overlayfs.
    fn owner_in(&self, uid: Option<u32>, gid: Option<u32>) -> Answer<(Option<u32>, Option<u32>)> {
        let uid = uid.map(|u| self.ids.uid_in(u).unwrap_or(idmap::OVERFLOW_ID));
        let gid = gid.map(|g| self.ids.gid_in(g).unwrap_or(idmap::OVERFLOW_ID));
        Ok((uid, gid))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Answer<Entry> {
        if self.panic_lookup.as_deref() == Some(name) {
            panic!("lookup of {name:?}: LAYERFS_TEST_PANIC_LOOKUP asked for a panic");
        }
        match self.overlay.lookup(parent, name) {
            Ok((id, st)) => Ok(self.entry(id, st)),
            // A negative entry (node id 0) lets the kernel remember the absence too;
            // anything created through the mount replaces it.
            Err(e) if e.errno() == libc::ENOENT => Ok(Entry {
                id: 0,
                generation: 0,
                st: sys::zeroed_stat(),
            }),
            Err(e) => Err(fail(e)),
        }
    }

    pub fn forget(&self, id: u64, nlookup: u64) {
        self.overlay.forget(id, nlookup);
    }

    pub fn getattr(&self, id: u64, fh: Option<u64>) -> Answer<Stat> {
        result(self.overlay.getattr(id, fh)).map(|st| self.owners_out(st))
    }

    /// `attr` carries owners as the kernel sent them.
    pub fn setattr(&self, id: u64, mut attr: SetAttr) -> Answer<Stat> {
        let (uid, gid) = self.owner_in(attr.uid, attr.gid)?;
        attr.uid = uid;
        attr.gid = gid;
        result(self.overlay.setattr(id, &attr)).map(|st| self.owners_out(st))
    }

    pub fn readlink(&self, id: u64) -> Answer<std::ffi::OsString> {
        result(self.overlay.readlink(id))
    }

    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Answer<Entry> {
        // A character device 0:0 in the upper layer is a whiteout: made through the mount
        // it would vanish (and hide a lower entry of that name) instead of existing.
        // Kernel overlayfs refuses it with EPERM, even for root.
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            return Err(libc::EPERM);
        }
        let kind = if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            NewKind::File {
                flags: libc::O_RDONLY,
            }
        } else {
            NewKind::Special { rdev: rdev as u64 }
        };
        self.create_entry(ctx, parent, name, kind, mode, umask)
    }

    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Answer<Entry> {
        self.create_entry(ctx, parent, name, NewKind::Dir, mode, umask)
    }

    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &OsStr, target: &OsStr) -> Answer<Entry> {
        self.create_entry(ctx, parent, name, NewKind::Symlink { target }, 0o777, 0)
    }

    fn create_entry(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        kind: NewKind,
        mode: u32,
        umask: u32,
    ) -> Answer<Entry> {
        let caller = self.caller(ctx)?;
        let (id, st, _) = result(self.overlay.create(parent, name, kind, mode, umask, caller))?;
        Ok(self.entry(id, st))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Answer<()> {
        result(self.overlay.unlink(parent, name))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Answer<()> {
        result(self.overlay.rmdir(parent, name))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Answer<()> {
        result(self.overlay.rename(parent, name, newparent, newname, flags))
    }

    pub fn link(&self, id: u64, newparent: u64, newname: &OsStr) -> Answer<Entry> {
        let (id, st) = result(self.overlay.link(id, newparent, newname))?;
        Ok(self.entry(id, st))
    }

    /// Whether a change to node `id` would first copy its data up (and may take long).
    pub fn would_copy_data_up(&self, id: u64) -> bool {
        self.overlay.would_copy_data_up(id)
    }

    pub fn open(&self, id: u64, flags: i32) -> Answer<Opened> {
        let fh = result(self.overlay.open(id, flags))?;
        let on_lower = self.overlay.handle_on_lower(fh);
        Ok(self.serve_open(id, fh, on_lower))
    }

    /// Decides how handle `fh` of node `id` is served: passthrough, uncached or cached.
    fn serve_open(&self, id: u64, fh: u64, on_lower: bool) -> Opened {
        let mode = match (self.overlay.file_fd(fh), self.device.get()) {
            (Ok(fd), Some(dev)) => self.passthrough.open(id, fh, fd.as_fd(), on_lower, dev),
            _ => Mode::Cached,
        };
        match mode {
            Mode::Passthrough(backing) => Opened {
                fh,
                flags: FOPEN_PASSTHROUGH,
                backing: Some(backing),
            },
            Mode::DirectIo => Opened {
                fh,
                flags: FOPEN_DIRECT_IO,
                backing: None,
            },
            // Every change of a file's data goes through this mount (lower layers are
            // immutable), so the kernel's page cache stays valid across opens.
            Mode::Cached => Opened {
                fh,
                flags: FOPEN_KEEP_CACHE,
                backing: None,
            },
        }
    }

    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Answer<(Entry, Opened)> {
        let caller = self.caller(ctx)?;
        let kind = NewKind::File { flags };
        match self.overlay.create(parent, name, kind, mode, umask, caller) {
            Ok((id, st, Some(fd))) => {
                let fh = self.overlay.add_open_file(id, fd);
                let opened = self.serve_open(id, fh, false);
                Ok((self.entry(id, st), opened))
            }
            Ok((_, _, None)) => Err(libc::EIO),
            Err(e) => Err(fail(e)),
        }
    }

    /// Reads into the transport's buffer; answers how many bytes were read.
    pub fn read(&self, fh: u64, offset: u64, size: u32, sink: &mut dyn ReadSink) -> Answer<usize> {
        let fd = result(self.overlay.read_fd(fh))?;
        let size = size as usize;
        let buf = sink.buffer(size);
        let mut done = 0;
        while done < size {
            match sys::pread(fd.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                // A short read of a regular file is its end: asking again to be told 0
                // would cost a syscall per READ of every small file.
                Ok(n) if n < size - done => {
                    done += n;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(fail(e.into())),
            }
        }
        Ok(done)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Answer<u32> {
        let fd = result(self.overlay.file_fd(fh))?;
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if done > 0 => {
                    log::debug!("short write: {e}");
                    break;
                }
                Err(e) => return Err(fail(e.into())),
            }
        }
        Ok(done as u32)
    }

    /// Nothing to do at close (data goes to the layer file at once; POSIX locks are the
    /// kernel's): ENOSYS tells the kernel so, and it stops sending FLUSH altogether,
    /// saving a round trip on every close.
    pub fn flush(&self) -> Answer<()> {
        Err(libc::ENOSYS)
    }

    pub fn release(&self, fh: u64) -> Answer<()> {
        self.passthrough.release(fh);
        self.overlay.release(fh);
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Answer<()> {
        result(self.overlay.fsync(fh, datasync))
    }

    /// Directories need no handle (readdir.rs): declined, the kernel opens them without
    /// asking and never sends RELEASEDIR, two round trips fewer per directory opened, and
    /// keeps their listings cached as the flags below ask. Listings change only through
    /// this mount, and the kernel drops one whenever it changes an entry.
    pub fn opendir(&self) -> Answer<Opened> {
        if self.decline_opendir.load(Ordering::Acquire) {
            return Err(libc::ENOSYS);
        }
        Ok(Opened {
            fh: 0,
            flags: FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE,
            backing: None,
        })
    }

    pub fn readdir(&self, id: u64, offset: u64, sink: &mut dyn DirSink) -> Answer<()> {
        let disk_before = (offset == 0).then(sys::process::thread_blocks_read);
        let listing = result(self.overlay.listing(id, offset))?;
        for e in listing.after(offset) {
            if sink.add(e.ino, e.cookie, e.dtype, &e.name) {
                break;
            }
        }
        self.listing_served(id, disk_before, &listing);
        Ok(())
    }

    pub fn readdirplus(&self, id: u64, offset: u64, sink: &mut dyn DirPlusSink) -> Answer<()> {
        // Whether this listing, with its entries' lookups, waited for the disk.
        let disk_before = (offset == 0).then(sys::process::thread_blocks_read);
        let listing = self.serve_readdirplus(id, offset, sink)?;
        self.listing_served(id, disk_before, &listing);
        Ok(())
    }

    /// Tells the overlay a listing was served from the start (`disk_before`: the blocks
    /// this thread had read before), and whether serving it read the disk.
    fn listing_served(&self, id: u64, disk_before: Option<u64>, listing: &Listing) {
        if let Some(before) = disk_before {
            let from_disk = sys::process::thread_blocks_read() > before;
            self.overlay.listed(id, listing, from_disk);
        }
    }

    fn serve_readdirplus(
        &self,
        id: u64,
        offset: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Answer<Arc<Listing>> {
        let listing = result(self.overlay.listing(id, offset))?;
        for e in listing.after(offset) {
            let name = e.name.as_os_str();
            if name == "." || name == ".." {
                // The kernel takes no reference on these: answered without a counted lookup
                // (node id 0 for "..": the kernel fills nothing in for it).
                let st = if name == "." {
                    self.overlay.getattr(id, None).ok()
                } else {
                    None
                };
                let entry = match st {
                    Some(st) => Entry {
                        id,
                        generation: 0,
                        st: self.owners_out(st),
                    },
                    None => {
                        let mut st = sys::zeroed_stat();
                        st.st_ino = e.ino;
                        st.st_mode = libc::S_IFDIR;
                        Entry {
                            id: 0,
                            generation: 0,
                            st,
                        }
                    }
                };
                if sink.add(&entry, Duration::ZERO, e.cookie, name) {
                    break;
                }
                continue;
            }
            match self.overlay.lookup(id, name) {
                Ok((child, st)) => {
                    if sink.add(&self.entry(child, st), self.ttl, e.cookie, name) {
                        // The entry did not fit: the kernel never saw this lookup.
                        self.overlay.forget(child, 1);
                        break;
                    }
                }
                // Gone since the listing was taken.
                Err(e) if e.errno() == libc::ENOENT => continue,
                // There, but its lookup fails (an invalid redirect, say): listed with no
                // attributes (node id 0), as a plain READDIR lists it; a lookup of it
                // then reports the error.
                Err(_) => {
                    let mut st = sys::zeroed_stat();
                    st.st_ino = e.ino;
                    st.st_mode = dtype_mode(e.dtype);
                    let entry = Entry {
                        id: 0,
                        generation: 0,
                        st,
                    };
                    if sink.add(&entry, Duration::ZERO, e.cookie, name) {
                        break;
                    }
                }
            }
        }
        Ok(listing)
    }

    pub fn fsyncdir(&self, id: u64, datasync: bool) -> Answer<()> {
        result(self.overlay.fsyncdir(id, datasync))
    }

    pub fn statfs(&self) -> Answer<libc::statvfs> {
        result(self.overlay.statfs())
    }

    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> Answer<()> {
        let value = if acl::is_acl(name) {
            match self.ids.acl_in(value) {
                Ok(v) => v,
                Err(e) => {
                    log::debug!("setxattr {name:?} on node {id}: {e:?} ACL");
                    return Err(libc::EINVAL);
                }
            }
        } else {
            Cow::Borrowed(value)
        };
        result(self.overlay.setxattr(id, name, &value, flags))
    }

    pub fn getxattr(&self, id: u64, name: &OsStr, size: u32) -> Answer<Xattr> {
        let value = result(self.overlay.getxattr(id, name))?;
        if acl::is_acl(name) {
            match self.ids.acl_out(value) {
                Ok(v) => xattr(v, size),
                Err(e) => {
                    log::warn!("node {id}: {name:?} on disk is a {e:?} ACL");
                    Err(libc::EIO)
                }
            }
        } else {
            xattr(value, size)
        }
    }

    pub fn listxattr(&self, id: u64, size: u32) -> Answer<Xattr> {
        let names = result(self.overlay.listxattr(id))?;
        let mut buf = Vec::new();
        for n in names {
            buf.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()));
            buf.push(0);
        }
        xattr(buf, size)
    }

    pub fn removexattr(&self, id: u64, name: &OsStr) -> Answer<()> {
        result(self.overlay.removexattr(id, name))
    }

    /// Permission checks are the kernel's (default_permissions); this only confirms the
    /// object still exists.
    pub fn access(&self, id: u64) -> Answer<()> {
        result(self.overlay.getattr(id, None)).map(drop)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Answer<()> {
        let fd = result(self.overlay.file_fd(fh))?;
        result(sys::fallocate(fd.as_fd(), mode, offset, length).map_err(Error::from))
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Answer<i64> {
        let fd = result(self.overlay.read_fd(fh))?;
        result(sys::lseek(fd.as_fd(), offset, whence).map_err(Error::from))
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Answer<u64> {
        let fin = result(self.overlay.read_fd(fh_in))?;
        let fout = result(self.overlay.file_fd(fh_out))?;
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = sys::copy_file_range(fin.as_fd(), offset_in, fout.as_fd(), offset_out, len);
        result(n.map_err(Error::from)).map(|n| n as u64)
    }
}

fn xattr(value: Vec<u8>, size: u32) -> Answer<Xattr> {
    if size == 0 {
        Ok(Xattr::Size(value.len() as u32))
    } else if value.len() > size as usize {
        Err(libc::ERANGE)
    } else {
        Ok(Xattr::Data(value))
    }
}

/// The `S_IFMT` bits of a `DT_*` type.
fn dtype_mode(dtype: u8) -> u32 {
    match dtype {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => libc::S_IFREG,
    }
}
