//! The `fuser::Filesystem` implementation: a thin adapter from FUSE requests onto
//! [`Overlay`]. It converts arguments and replies and holds no overlay logic.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::acl;
use crate::idmap::IdMap;
use crate::overlay::{Caller, NewKind, Overlay, SetAttr};
use crate::passthrough::{Mode, Passthrough};
use crate::sys::{self, Stat};
use crate::{Config, Error, Result};

pub struct LayerFs {
    overlay: Overlay,
    ttl: Duration,
    passthrough: Passthrough,
    ids: IdMap,
    /// Whether the kernel opens directories by itself when OPENDIR says ENOSYS.
    decline_opendir: bool,
}

impl LayerFs {
    /// Opens every layer of `config` and prepares the overlay; no mount happens here.
    pub fn new(config: &Config) -> Result<LayerFs> {
        Ok(LayerFs {
            overlay: Overlay::new(config)?,
            ttl: Duration::from_secs_f64(config.timeout.max(0.0)),
            passthrough: Passthrough::new(),
            ids: IdMap::new(config),
            decline_opendir: false,
        })
    }

    /// Attributes as callers see them: owners translated by the id options.
    fn attr(&self, st: &Stat) -> FileAttr {
        let mut attr = to_attr(st);
        attr.uid = self.ids.uid_out(attr.uid);
        attr.gid = self.ids.gid_out(attr.gid);
        attr
    }

    /// Creates `name` in `parent` for the caller of `req` and answers with the new entry
    /// (mknod, mkdir, symlink).
    #[allow(clippy::too_many_arguments)]
    fn create_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: NewKind,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let caller = match self.caller(req) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        match self
            .overlay
            .create(parent.0, name, kind, mode, umask, caller)
        {
            Ok((id, st, _)) => {
                reply.entry_with_ttls(&self.ttl, &self.ttl, &self.attr(&st), self.gen(id))
            }
            Err(e) => reply.error(fail(e)),
        }
    }

    /// The generation of node `id`: tells the kernel a reused inode number is a new object.
    fn gen(&self, id: u64) -> Generation {
        Generation(self.overlay.generation(id))
    }

    /// The caller's ids on disk. A caller the id mapping cannot represent may not create
    /// anything: EOVERFLOW, as the kernel answers on an idmapped mount.
    fn caller(&self, req: &Request) -> std::result::Result<Caller, Errno> {
        match (self.ids.uid_in(req.uid()), self.ids.gid_in(req.gid())) {
            (Some(uid), Some(gid)) => Ok(Caller { uid, gid }),
            _ => {
                log::debug!("caller {}:{} has no id mapping", req.uid(), req.gid());
                Err(Errno::EOVERFLOW)
            }
        }
    }

    /// A chown target on disk; an id outside the mapping is EINVAL, as chown(2) answers
    /// for an id the caller's user namespace cannot map.
    fn owner_in(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> std::result::Result<(Option<u32>, Option<u32>), Errno> {
        let uid = match uid {
            Some(u) => Some(self.ids.uid_in(u).ok_or(Errno::EINVAL)?),
            None => None,
        };
        let gid = match gid {
            Some(g) => Some(self.ids.gid_in(g).ok_or(Errno::EINVAL)?),
            None => None,
        };
        Ok((uid, gid))
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dtype_to_file_type(dtype: u8) -> FileType {
    match dtype {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub fn to_attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn timespec(t: TimeOrNow) -> sys::Timespec {
    match t {
        TimeOrNow::Now => sys::Timespec {
            tv_sec: 0,
            tv_nsec: sys::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => sys::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                sys::Timespec {
                    tv_sec: -(d.as_secs() as i64),
                    tv_nsec: 0,
                }
            }
        },
    }
}

fn fail(e: Error) -> Errno {
    log::debug!("{e}");
    e.to_fuse()
}

const GEN: Generation = Generation(0);

thread_local! {
    /// Each worker thread's buffer for READ replies, grown to the largest read it served.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags;
        // Readdirplus fills the kernel's caches in one round trip per directory block.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // The overlay applies the caller's umask itself, exactly once, and not at all
        // under a default ACL.
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        let _ = config.add_capabilities(InitFlags::FUSE_EXPORT_SUPPORT);
        // Lookups in one directory need not wait for each other: the overlay locks itself.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        self.decline_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        // With FUSE_POSIX_ACL the kernel caches each inode's ACLs (without it every
        // system.posix_acl_* read, two per `ls -l` entry, is a round trip) and checks them
        // in permission checks, where default_permissions alone looks at the mode bits.
        // The layers' filesystem keeps mode and ACL in step; the overlay applies default
        // ACLs on create (`Overlay::create`). Under uidmapping=/gidmapping= the kernel
        // sees and sends ACL entries with inside ids: getxattr/setxattr translate them
        // (`IdMap::acl_out`/`acl_in`) as attributes translate owners.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        // Depth 1: the layers are on an ordinary filesystem, and the mount may itself be a
        // layer of kernel overlayfs.
        if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
        } else {
            log::debug!("kernel offers no FUSE passthrough: I/O goes through the daemon");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.overlay.lookup(parent.0, name) {
            Ok((id, st)) => {
                reply.entry_with_ttls(&self.ttl, &self.ttl, &self.attr(&st), self.gen(id))
            }
            Err(e) if e.errno() == libc::ENOENT => {
                // A negative entry (node id 0) lets the kernel remember the absence too;
                // anything created through the mount replaces it.
                let mut attr = to_attr(&zero_stat());
                attr.ino = INodeNo(0);
                reply.entry_with_ttls(&self.ttl, &self.ttl, &attr, GEN)
            }
            Err(e) => reply.error(fail(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.overlay.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.overlay.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&self.ttl, &self.attr(&st)),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (uid, gid) = match self.owner_in(uid, gid) {
            Ok(ids) => ids,
            Err(e) => return reply.error(e),
        };
        let attr = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(timespec),
            mtime: mtime.map(timespec),
            fh: fh.map(|f| f.0),
        };
        match self.overlay.setattr(ino.0, &attr) {
            Ok(st) => reply.attr(&self.ttl, &self.attr(&st)),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.overlay.readlink(ino.0) {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // A character device 0:0 in the upper layer is a whiteout: made through the mount
        // it would vanish (and hide a lower entry of that name) instead of existing.
        // Kernel overlayfs refuses it with EPERM, even for root.
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            return reply.error(Errno::EPERM);
        }
        let kind = if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            NewKind::File {
                flags: libc::O_RDONLY,
            }
        } else {
            NewKind::Special { rdev: rdev as u64 }
        };
        self.create_entry(req, parent, name, kind, mode, umask, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.create_entry(req, parent, name, NewKind::Dir, mode, umask, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.overlay.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.overlay.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let kind = NewKind::Symlink {
            target: target.as_os_str(),
        };
        self.create_entry(req, parent, link_name, kind, 0o777, 0, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .overlay
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.overlay.link(ino.0, newparent.0, newname) {
            Ok((id, st)) => {
                reply.entry_with_ttls(&self.ttl, &self.ttl, &self.attr(&st), self.gen(id))
            }
            Err(e) => reply.error(fail(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fh = match self.overlay.open(ino.0, flags.0) {
            Ok(fh) => fh,
            Err(e) => return reply.error(fail(e)),
        };
        let mode = match self.overlay.file_fd(fh) {
            Ok(fd) => {
                let on_lower = self.overlay.handle_on_lower(fh);
                self.passthrough
                    .open(ino.0, fh, fd.as_fd(), on_lower, |fd| reply.open_backing(fd))
            }
            Err(_) => Mode::Cached,
        };
        match mode {
            Mode::Passthrough(id) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
            }
            Mode::DirectIo => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            // Every change of a file's data goes through this mount (lower layers are
            // immutable), so the kernel's page cache stays valid across opens.
            Mode::Cached => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fd = match self.overlay.read_fd(fh.0) {
            Ok(fd) => fd,
            Err(e) => return reply.error(fail(e)),
        };
        READ_BUF.with_borrow_mut(|buf| {
            // Reused per worker thread: a fresh zeroed buffer per request cost more than the
            // read itself (a 128 KiB one is an mmap and munmap in glibc).
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let buf = &mut buf[..size];
            let mut done = 0;
            while done < size {
                match sys::pread(fd.as_fd(), &mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    // A short read of a regular file is its end: asking again to be told
                    // 0 would cost a syscall per READ of every small file.
                    Ok(n) if n < size - done => {
                        done += n;
                        break;
                    }
                    Ok(n) => done += n,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return reply.error(fail(e.into())),
                }
            }
            reply.data(&buf[..done]);
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fd = match self.overlay.file_fd(fh.0) {
            Ok(fd) => fd,
            Err(e) => return reply.error(fail(e)),
        };
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if done > 0 => {
                    log::debug!("short write: {e}");
                    break;
                }
                Err(e) => return reply.error(fail(e.into())),
            }
        }
        reply.written(done as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (data goes to the layer file at once; POSIX locks are the
        // kernel's): ENOSYS tells the kernel so, and it stops sending FLUSH altogether,
        // saving a round trip on every close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.overlay.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.overlay.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Directories need no handle (readdir.rs): declined, the kernel opens them without
        // asking and never sends RELEASEDIR, two round trips fewer per directory opened,
        // and keeps their listings cached as the flags below ask. Listings change only
        // through this mount, and the kernel drops one whenever it changes an entry.
        if self.decline_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        )
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.overlay.listing(ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(fail(e)),
        };
        for e in listing.after(offset) {
            if reply.add(
                INodeNo(e.ino),
                e.cookie,
                dtype_to_file_type(e.dtype),
                &e.name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.overlay.listing(ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(fail(e)),
        };
        for e in listing.after(offset) {
            let next = e.cookie;
            let name = e.name.as_os_str();
            if name == "." || name == ".." {
                // The kernel takes no reference on these: answer without a counted lookup.
                let id = if name == "." { Some(ino.0) } else { None };
                let st = id.and_then(|id| self.overlay.getattr(id, None).ok());
                let full = match st {
                    Some(st) => reply.add(
                        INodeNo(id.unwrap_or(0)),
                        next,
                        name,
                        &Duration::ZERO,
                        &self.attr(&st),
                        GEN,
                    ),
                    None => {
                        let mut attr = to_attr(&zero_stat());
                        attr.ino = INodeNo(e.ino);
                        attr.kind = FileType::Directory;
                        reply.add(INodeNo(0), next, name, &Duration::ZERO, &attr, GEN)
                    }
                };
                if full {
                    break;
                }
                continue;
            }
            match self.overlay.lookup(ino.0, name) {
                Ok((id, st)) => {
                    if reply.add(
                        INodeNo(id),
                        next,
                        name,
                        &self.ttl,
                        &self.attr(&st),
                        self.gen(id),
                    ) {
                        // The entry did not fit: the kernel never saw this lookup.
                        self.overlay.forget(id, 1);
                        break;
                    }
                }
                // Gone since the listing was taken.
                Err(_) => continue,
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.overlay.fsyncdir(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.overlay.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let value = if acl::is_acl(name) {
            match self.ids.acl_in(value) {
                Ok(v) => v,
                Err(e) => {
                    log::debug!("setxattr {name:?} on node {}: {e:?} ACL", ino.0);
                    return reply.error(Errno::EINVAL);
                }
            }
        } else {
            Cow::Borrowed(value)
        };
        match self.overlay.setxattr(ino.0, name, &value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.overlay.getxattr(ino.0, name) {
            Ok(v) if acl::is_acl(name) => match self.ids.acl_out(v) {
                Ok(v) => xattr_reply(reply, &v, size),
                Err(e) => {
                    log::warn!("node {}: {name:?} on disk is a {e:?} ACL", ino.0);
                    reply.error(Errno::EIO)
                }
            },
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.overlay.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()));
                    buf.push(0);
                }
                xattr_reply(reply, &buf, size)
            }
            Err(e) => reply.error(fail(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.overlay.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); this only confirms the
        // object still exists.
        match self.overlay.getattr(ino.0, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = match self.caller(req) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        match self
            .overlay
            .create(parent.0, name, NewKind::File { flags }, mode, umask, caller)
        {
            Ok((id, st, Some(fd))) => {
                let fh = self.overlay.add_open_file(id, fd);
                let mode = match self.overlay.file_fd(fh) {
                    Ok(fd) => self
                        .passthrough
                        .open(id, fh, fd.as_fd(), false, |fd| reply.open_backing(fd)),
                    Err(_) => Mode::Cached,
                };
                let (ttl, attr, fh) = (&self.ttl, &self.attr(&st), FileHandle(fh));
                match mode {
                    Mode::Passthrough(b) => reply.created_passthrough(
                        ttl,
                        attr,
                        self.gen(id),
                        fh,
                        FopenFlags::empty(),
                        &b,
                    ),
                    Mode::DirectIo => {
                        reply.created(ttl, attr, self.gen(id), fh, FopenFlags::FOPEN_DIRECT_IO)
                    }
                    Mode::Cached => {
                        reply.created(ttl, attr, self.gen(id), fh, FopenFlags::FOPEN_KEEP_CACHE)
                    }
                }
            }
            Ok((_, _, None)) => reply.error(Errno::EIO),
            Err(e) => reply.error(fail(e)),
        }
    }

    /// No ioctl is served: ENOTTY, as kernel overlayfs answers commands it does not know.
    /// Answered here because fuser's default logs a warning for each one, and every
    /// `isatty()` on an open file (Python's `open()` does one) is an IOCTL.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .overlay
            .file_fd(fh.0)
            .and_then(|fd| Ok(sys::fallocate(fd.as_fd(), mode, offset, length)?));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = self
            .overlay
            .read_fd(fh.0)
            .and_then(|fd| Ok(sys::lseek(fd.as_fd(), offset, whence)?));
        match r {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(fail(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self.overlay.read_fd(fh_in.0).and_then(|fin| {
            let fout = self.overlay.file_fd(fh_out.0)?;
            let len = len.min(u32::MAX as u64 & !0xfff) as usize;
            Ok(sys::copy_file_range(
                fin.as_fd(),
                offset_in,
                fout.as_fd(),
                offset_out,
                len,
            )?)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fail(e)),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

fn zero_stat() -> Stat {
    sys::zeroed_stat()
}
