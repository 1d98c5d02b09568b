//! The `fuser::Filesystem` implementation: requests read from `/dev/fuse` by fuser,
//! answered by [`Ops`]. It converts arguments and replies and holds no overlay logic; with
//! FUSE over io_uring (`ring.rs`) the same operations answer requests from the ring.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fuse::ops::{self, Answer, Ctx, DirPlusSink, DirSink, Ops, ReadSink, Xattr};
use crate::fuse::{ring, wire};
use crate::overlay::SetAttr;
use crate::sys::{self, Stat};
use crate::{Config, Result};

pub struct LayerFs {
    ops: Arc<Ops>,
    /// Whether to move requests onto FUSE over io_uring when the kernel offers it.
    want_ring: bool,
}

impl LayerFs {
    /// Opens every layer of `config` and prepares the overlay; no mount happens here.
    pub fn new(config: &Config) -> Result<LayerFs> {
        Ok(LayerFs {
            ops: Arc::new(Ops::new(config)?),
            want_ring: config.io_uring,
        })
    }

    /// The operations, shared with the other transport.
    pub fn ops(&self) -> &Arc<Ops> {
        &self.ops
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
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

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn entry(ttl: Duration, a: Answer<ops::Entry>, reply: ReplyEntry) {
    match a {
        Ok(e) => {
            // fuser names the node by `attr.ino`: node ids are the reported inode numbers.
            reply.entry_with_ttls(&ttl, &ttl, &to_attr(&e.st), Generation(e.generation))
        }
        Err(e) => reply.error(errno(e)),
    }
}

fn attr(ttl: Duration, a: Answer<Stat>, reply: ReplyAttr) {
    match a {
        Ok(st) => reply.attr(&ttl, &to_attr(&st)),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty(a: Answer<()>, reply: ReplyEmpty) {
    match a {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn opened(a: Answer<ops::Opened>, reply: ReplyOpen) {
    match a {
        Ok(o) => {
            let flags = FopenFlags::from_bits_retain(o.flags & !ops::FOPEN_PASSTHROUGH);
            match o.backing {
                Some(id) => sys::reply_opened_passthrough(reply, FileHandle(o.fh), flags, id),
                None => reply.opened(FileHandle(o.fh), flags),
            }
        }
        Err(e) => reply.error(errno(e)),
    }
}

fn xattr(a: Answer<Xattr>, reply: ReplyXattr) {
    match a {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(v)) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

thread_local! {
    /// Each worker thread's buffer for READ replies, grown to the largest read it served.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ReadSink for Vec<u8> {
    fn buffer(&mut self, size: usize) -> &mut [u8] {
        // Reused per worker thread: a fresh zeroed buffer per request cost more than the
        // read itself (a 128 KiB one is an mmap and munmap in glibc).
        if self.len() < size {
            self.resize(size, 0);
        }
        &mut self[..size]
    }
}

impl DirSink for ReplyDirectory {
    fn add(&mut self, ino: u64, cookie: u64, dtype: u8, name: &OsStr) -> bool {
        ReplyDirectory::add(self, INodeNo(ino), cookie, dtype_to_file_type(dtype), name)
    }
}

impl DirPlusSink for ReplyDirectoryPlus {
    fn add(&mut self, e: &ops::Entry, ttl: Duration, cookie: u64, name: &OsStr) -> bool {
        ReplyDirectoryPlus::add(
            self,
            INodeNo(e.id),
            cookie,
            name,
            &ttl,
            &to_attr(&e.st),
            Generation(e.generation),
        )
    }
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
        let decline_opendir = config
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
        let passthrough = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if !passthrough {
            log::debug!("kernel offers no FUSE passthrough: I/O goes through the daemon");
        }
        let mut ring = false;
        if self.want_ring {
            if !config
                .capabilities()
                .contains(InitFlags::FUSE_OVER_IO_URING)
            {
                log::debug!(
                    "kernel offers no FUSE over io_uring (fuse module parameter enable_uring): \
                     requests come through /dev/fuse"
                );
            } else if let Err(e) = ring::available() {
                log::warn!("cannot use FUSE over io_uring ({e}); requests come through /dev/fuse");
            } else {
                // The rings' buffers are sized for the largest request; 1 MiB is what the
                // kernel sends at most anyway (256 pages).
                let _ = config.set_max_write(wire::MAX_PAYLOAD as u32);
                ring = config
                    .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                    .is_ok();
            }
        }
        self.ops.negotiated(decline_opendir, passthrough, ring);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        ops::guarded("lookup", || {
            entry(self.ops.ttl(), self.ops.lookup(parent.0, name), reply)
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        ops::guarded("forget", || {
            self.ops.forget(ino.0, nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        ops::guarded("getattr", || {
            attr(
                self.ops.ttl(),
                self.ops.getattr(ino.0, fh.map(|f| f.0)),
                reply,
            )
        });
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
        ops::guarded("setattr", || {
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(timespec),
                mtime: mtime.map(timespec),
                fh: fh.map(|f| f.0),
            };
            attr(self.ops.ttl(), self.ops.setattr(ino.0, set), reply)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        ops::guarded("readlink", || match self.ops.readlink(ino.0) {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(errno(e)),
        });
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
        ops::guarded("mknod", || {
            let a = self.ops.mknod(ctx(req), parent.0, name, mode, umask, rdev);
            entry(self.ops.ttl(), a, reply)
        });
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
        ops::guarded("mkdir", || {
            let a = self.ops.mkdir(ctx(req), parent.0, name, mode, umask);
            entry(self.ops.ttl(), a, reply)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        ops::guarded("unlink", || empty(self.ops.unlink(parent.0, name), reply));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        ops::guarded("rmdir", || empty(self.ops.rmdir(parent.0, name), reply));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        ops::guarded("symlink", || {
            let a = self
                .ops
                .symlink(ctx(req), parent.0, link_name, target.as_os_str());
            entry(self.ops.ttl(), a, reply)
        });
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
        ops::guarded("rename", || {
            let a = self
                .ops
                .rename(parent.0, name, newparent.0, newname, flags.bits());
            empty(a, reply)
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        ops::guarded("link", || {
            entry(
                self.ops.ttl(),
                self.ops.link(ino.0, newparent.0, newname),
                reply,
            )
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        ops::guarded("open", || opened(self.ops.open(ino.0, flags.0), reply));
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
        ops::guarded("read", || {
            READ_BUF.with_borrow_mut(|buf| match self.ops.read(fh.0, offset, size, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(e)),
            });
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
        ops::guarded("write", || match self.ops.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        ops::guarded("flush", || empty(self.ops.flush(), reply));
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
        ops::guarded("release", || empty(self.ops.release(fh.0), reply));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        ops::guarded("fsync", || empty(self.ops.fsync(fh.0, datasync), reply));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        ops::guarded("opendir", || opened(self.ops.opendir(), reply));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        ops::guarded("readdir", || {
            match self.ops.readdir(ino.0, offset, &mut reply) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        ops::guarded("readdirplus", || {
            match self.ops.readdirplus(ino.0, offset, &mut reply) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        ops::guarded("fsyncdir", || {
            empty(self.ops.fsyncdir(ino.0, datasync), reply)
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        ops::guarded("statfs", || match self.ops.statfs() {
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
            Err(e) => reply.error(errno(e)),
        });
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
        ops::guarded("setxattr", || {
            empty(self.ops.setxattr(ino.0, name, value, flags), reply)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        ops::guarded("getxattr", || {
            xattr(self.ops.getxattr(ino.0, name, size), reply)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        ops::guarded("listxattr", || {
            xattr(self.ops.listxattr(ino.0, size), reply)
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        ops::guarded("removexattr", || {
            empty(self.ops.removexattr(ino.0, name), reply)
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        ops::guarded("access", || empty(self.ops.access(ino.0), reply));
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
        ops::guarded("create", || {
            let ttl = self.ops.ttl();
            match self
                .ops
                .create(ctx(req), parent.0, name, mode, umask, flags)
            {
                Ok((e, o)) => {
                    let attr = to_attr(&e.st);
                    let flags = FopenFlags::from_bits_retain(o.flags & !ops::FOPEN_PASSTHROUGH);
                    let gen = Generation(e.generation);
                    match o.backing {
                        Some(id) => sys::reply_created_passthrough(
                            reply,
                            (&ttl, &attr, gen),
                            FileHandle(o.fh),
                            flags,
                            id,
                        ),
                        None => reply.created(&ttl, &attr, gen, FileHandle(o.fh), flags),
                    }
                }
                Err(e) => reply.error(errno(e)),
            }
        });
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
        ops::guarded("ioctl", || {
            reply.error(Errno::ENOTTY);
        });
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
        ops::guarded("fallocate", || {
            empty(self.ops.fallocate(fh.0, offset, length, mode), reply)
        });
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
        ops::guarded("lseek", || match self.ops.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(errno(e)),
        });
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
        ops::guarded("copy_file_range", || {
            match self
                .ops
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
            {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}
