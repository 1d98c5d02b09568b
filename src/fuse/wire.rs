//! The FUSE wire format as FUSE over io_uring carries it (include/uapi/linux/fuse.h): the
//! request structs the ring decodes, declared `#[repr(C)]` once so every field is read at
//! the offset the compiler computes for it, the opcodes, and the reply bodies it writes.
//!
//! Decoding copies fields out of the byte buffer (`Decode::read`) rather than casting the
//! buffer: no `unsafe`, no alignment requirement on the kernel's buffer, and a request
//! shorter than the struct (an older kernel's) reads its missing fields as zero, as the
//! kernel's own compat handling does.

use std::ffi::OsStr;
use std::mem::offset_of;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::fuse::ops;
use crate::sys::Stat;

/// The largest request or reply body: the kernel's default limit of 256 pages per request.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// A field of a wire struct, read from native-endian bytes.
pub trait Field: Sized {
    fn at(b: &[u8], offset: usize) -> Self;
    fn put(self, b: &mut [u8], offset: usize);
}

macro_rules! field {
    ($t:ty) => {
        impl Field for $t {
            fn at(b: &[u8], offset: usize) -> $t {
                const N: usize = std::mem::size_of::<$t>();
                b.get(offset..offset + N)
                    .and_then(|s| <[u8; N]>::try_from(s).ok())
                    .map_or(0, <$t>::from_ne_bytes)
            }

            fn put(self, b: &mut [u8], offset: usize) {
                const N: usize = std::mem::size_of::<$t>();
                if let Some(s) = b.get_mut(offset..offset + N) {
                    s.copy_from_slice(&self.to_ne_bytes());
                }
            }
        }
    };
}
field!(u16);
field!(u32);
field!(i32);
field!(u64);

/// Declares a `#[repr(C)]` wire struct and its `read` (each field at its `offset_of!`)
/// and `write`, and checks its size against the kernel header's.
macro_rules! wire {
    ($(#[$m:meta])* $name:ident ($size:expr) { $($field:ident: $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $(pub $field: $t),*
        }

        impl $name {
            /// Decodes the struct from the start of `b`; bytes past the end read as zero.
            #[allow(dead_code)]
            pub fn read(b: &[u8]) -> $name {
                $name { $($field: <$t as Field>::at(b, offset_of!($name, $field))),* }
            }

            /// Encodes the struct at the start of `b` (fields past its end are left out).
            #[allow(dead_code)]
            pub fn write(&self, b: &mut [u8]) {
                $(Field::put(self.$field, b, offset_of!($name, $field));)*
            }
        }

        const _: () = assert!(std::mem::size_of::<$name>() == $size);
    };
}

wire!(
    /// `struct fuse_in_header`.
    InHeader(40) {
        len: u32,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        uid: u32,
        gid: u32,
        pid: u32,
        total_extlen: u16,
        padding: u16,
    }
);

wire!(
    /// `struct fuse_out_header`.
    OutHeader(16) {
        len: u32,
        error: i32,
        unique: u64,
    }
);

wire!(
    /// `struct fuse_uring_ent_in_out`: what the kernel and the daemon tell each other
    /// about one ring entry besides the request itself.
    EntInOut(32) {
        flags: u64,
        commit_id: u64,
        payload_sz: u32,
        padding: u32,
        reserved: u64,
    }
);

/// `struct fuse_uring_req_header`, the header buffer of one ring entry: the in (request)
/// or out (reply) header, the opcode-specific struct, and the entry's own fields.
#[repr(C)]
pub struct RingHeader {
    pub in_out: [u8; 128],
    pub op_in: [u8; 128],
    pub ent: EntInOut,
}

/// Where the parts of a [`RingHeader`] start in the entry's header buffer.
pub const IN_OUT: usize = offset_of!(RingHeader, in_out);
pub const OP_IN: usize = offset_of!(RingHeader, op_in);
pub const OP_IN_LEN: usize = 128;
pub const ENT_IN_OUT: usize = offset_of!(RingHeader, ent);

wire!(
    /// `struct fuse_getattr_in`.
    GetattrIn(16) { getattr_flags: u32, dummy: u32, fh: u64 }
);

wire!(
    /// `struct fuse_setattr_in`.
    SetattrIn(88) {
        valid: u32,
        padding: u32,
        fh: u64,
        size: u64,
        lock_owner: u64,
        atime: u64,
        mtime: u64,
        ctime: u64,
        atimensec: u32,
        mtimensec: u32,
        ctimensec: u32,
        mode: u32,
        unused4: u32,
        uid: u32,
        gid: u32,
        unused5: u32,
    }
);

wire!(
    /// `struct fuse_mknod_in`.
    MknodIn(16) { mode: u32, rdev: u32, umask: u32, padding: u32 }
);

wire!(
    /// `struct fuse_mkdir_in`.
    MkdirIn(8) { mode: u32, umask: u32 }
);

wire!(
    /// `struct fuse_rename2_in`; RENAME's `fuse_rename_in` is its first field.
    Rename2In(16) { newdir: u64, flags: u32, padding: u32 }
);

wire!(
    /// `struct fuse_link_in`.
    LinkIn(8) { oldnodeid: u64 }
);

wire!(
    /// `struct fuse_open_in`.
    OpenIn(8) { flags: u32, open_flags: u32 }
);

wire!(
    /// `struct fuse_create_in`.
    CreateIn(16) { flags: u32, mode: u32, umask: u32, open_flags: u32 }
);

wire!(
    /// `struct fuse_read_in`; READDIR and READDIRPLUS send it too.
    ReadIn(40) {
        fh: u64,
        offset: u64,
        size: u32,
        read_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32,
    }
);

wire!(
    /// `struct fuse_write_in`.
    WriteIn(40) {
        fh: u64,
        offset: u64,
        size: u32,
        write_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32,
    }
);

wire!(
    /// `struct fuse_release_in`.
    ReleaseIn(24) { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 }
);

wire!(
    /// `struct fuse_fsync_in`; FSYNCDIR sends it too.
    FsyncIn(16) { fh: u64, fsync_flags: u32, padding: u32 }
);

wire!(
    /// The 8-byte compat `struct fuse_setxattr_in` (FUSE_SETXATTR_EXT is not asked for).
    SetxattrIn(8) { size: u32, flags: u32 }
);

wire!(
    /// `struct fuse_getxattr_in`; LISTXATTR sends it too.
    GetxattrIn(8) { size: u32, padding: u32 }
);

wire!(
    /// `struct fuse_fallocate_in`.
    FallocateIn(32) { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 }
);

wire!(
    /// `struct fuse_lseek_in`.
    LseekIn(24) { fh: u64, offset: u64, whence: u32, padding: u32 }
);

wire!(
    /// `struct fuse_copy_file_range_in`.
    CopyFileRangeIn(56) {
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    }
);

// Opcodes (enum fuse_opcode).
pub const LOOKUP: u32 = 1;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const DESTROY: u32 = 38;
pub const IOCTL: u32 = 39;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;

// SETATTR's `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;

pub const FUSE_GETATTR_FH: u32 = 1;
pub const FUSE_FSYNC_FDATASYNC: u32 = 1;

/// The request's name, for the log line of a request that panicked.
pub fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        LOOKUP => "LOOKUP",
        GETATTR => "GETATTR",
        SETATTR => "SETATTR",
        READLINK => "READLINK",
        SYMLINK => "SYMLINK",
        MKNOD => "MKNOD",
        MKDIR => "MKDIR",
        UNLINK => "UNLINK",
        RMDIR => "RMDIR",
        RENAME | RENAME2 => "RENAME",
        LINK => "LINK",
        OPEN => "OPEN",
        READ => "READ",
        WRITE => "WRITE",
        CREATE => "CREATE",
        SETXATTR => "SETXATTR",
        GETXATTR => "GETXATTR",
        LISTXATTR => "LISTXATTR",
        REMOVEXATTR => "REMOVEXATTR",
        READDIR => "READDIR",
        READDIRPLUS => "READDIRPLUS",
        _ => "FUSE",
    }
}

/// The NUL-terminated names at the start of a request payload.
pub struct Names<'a>(pub &'a [u8]);

impl<'a> Iterator for Names<'a> {
    type Item = &'a OsStr;

    fn next(&mut self) -> Option<&'a OsStr> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let name = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(OsStr::from_bytes(name))
    }
}

impl<'a> Names<'a> {
    /// What follows the names taken so far (SETXATTR's value).
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// Reply bodies, laid out as the kernel reads them.
pub struct Out<'a>(pub &'a mut Vec<u8>);

impl Out<'_> {
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }

    /// `struct fuse_attr` (88 bytes).
    pub fn attr(&mut self, st: &Stat) {
        self.u64(st.st_ino);
        self.u64(st.st_size as u64);
        self.u64(st.st_blocks as u64);
        self.u64(st.st_atime as u64);
        self.u64(st.st_mtime as u64);
        self.u64(st.st_ctime as u64);
        self.u32(st.st_atime_nsec as u32);
        self.u32(st.st_mtime_nsec as u32);
        self.u32(st.st_ctime_nsec as u32);
        self.u32(st.st_mode);
        self.u32(st.st_nlink as u32);
        self.u32(st.st_uid);
        self.u32(st.st_gid);
        self.u32(st.st_rdev as u32);
        self.u32(st.st_blksize as u32);
        self.u32(0);
    }

    /// `struct fuse_entry_out` (128 bytes).
    pub fn entry(&mut self, e: &ops::Entry, ttl: Duration) {
        self.u64(e.id);
        self.u64(e.generation);
        self.u64(ttl.as_secs());
        self.u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos());
        self.u32(ttl.subsec_nanos());
        self.attr(&e.st);
    }

    /// `struct fuse_open_out` (16 bytes).
    pub fn open(&mut self, o: &ops::Opened) {
        self.u64(o.fh);
        self.u32(o.flags);
        self.u32(o.backing.unwrap_or(0));
    }

    /// `struct fuse_dirent` and its name, padded to 8 bytes.
    pub fn dirent(&mut self, ino: u64, cookie: u64, dtype: u32, name: &OsStr) {
        self.u64(ino);
        self.u64(cookie);
        self.u32(name.len() as u32);
        self.u32(dtype);
        self.0.extend_from_slice(name.as_bytes());
        let pad = (8 - name.len() % 8) % 8;
        self.0.extend_from_slice(&[0u8; 8][..pad]);
    }
}

pub fn dirent_size(name: &OsStr) -> usize {
    (24 + name.len()).div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::at(b, at)
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::at(b, at)
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        let mut buf = Vec::new();
        Out(&mut buf).dirent(7, 9, 4, OsStr::new("abc"));
        assert_eq!(buf.len(), 32);
        assert_eq!(buf.len(), dirent_size(OsStr::new("abc")));
        assert_eq!(u64_at(&buf, 0), 7);
        assert_eq!(u64_at(&buf, 8), 9);
        assert_eq!(u32_at(&buf, 16), 3);
        assert_eq!(&buf[24..27], b"abc");
        assert_eq!(dirent_size(OsStr::new("12345678")), 32);
        assert_eq!(dirent_size(OsStr::new("123456789")), 40);
    }

    #[test]
    fn entry_and_attr_have_the_kernel_sizes() {
        let mut buf = Vec::new();
        let mut st = sys::zeroed_stat();
        st.st_ino = 42;
        st.st_mode = libc::S_IFREG | 0o644;
        let e = ops::Entry {
            id: 42,
            generation: 3,
            st,
        };
        Out(&mut buf).entry(&e, Duration::from_millis(1500));
        assert_eq!(buf.len(), 128);
        assert_eq!(u64_at(&buf, 0), 42);
        assert_eq!(u64_at(&buf, 16), 1);
        assert_eq!(u32_at(&buf, 32), 500_000_000);
        // attr.mode sits after ino, size, blocks, three times and three nanoseconds.
        assert_eq!(u32_at(&buf, 40 + 60), libc::S_IFREG | 0o644);
    }

    /// The structs put each field where the hand-counted offsets of the kernel header did.
    #[test]
    fn structs_have_the_kernel_layout() {
        assert_eq!((IN_OUT, OP_IN, ENT_IN_OUT), (0, 128, 256));
        assert_eq!(offset_of!(InHeader, opcode), 4);
        assert_eq!(offset_of!(InHeader, nodeid), 16);
        assert_eq!(offset_of!(InHeader, gid), 28);
        assert_eq!(ENT_IN_OUT + offset_of!(EntInOut, commit_id), 256 + 8);
        assert_eq!(ENT_IN_OUT + offset_of!(EntInOut, payload_sz), 256 + 16);
        assert_eq!(offset_of!(SetattrIn, mode), 68);
        assert_eq!(offset_of!(SetattrIn, uid), 76);
        assert_eq!(offset_of!(SetattrIn, atimensec), 56);
        assert_eq!(offset_of!(CopyFileRangeIn, fh_out), 24);
        assert_eq!(offset_of!(FallocateIn, mode), 24);
        let mut b = [0u8; 16];
        let h = OutHeader {
            len: 16,
            error: -2,
            unique: 9,
        };
        h.write(&mut b);
        assert_eq!(OutHeader::read(&b), h);
        assert_eq!(
            MknodIn::read(&[1, 0, 0, 0]).rdev,
            0,
            "short input reads as zero"
        );
    }

    #[test]
    fn names_split_at_nul() {
        let mut n = Names(b"old\0new\0rest");
        assert_eq!(n.next(), Some(OsStr::new("old")));
        assert_eq!(n.next(), Some(OsStr::new("new")));
        assert_eq!(n.rest(), b"rest");
        assert_eq!(n.next(), None);
    }
}
