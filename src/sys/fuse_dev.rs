//! The /dev/fuse side of passthrough: backing files registered and unregistered with the
//! session's ioctls, and fuser's OPEN and CREATE replies that name a backing id.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)` (16 bytes).
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, u32)`.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// Registers `file` as a passthrough backing file of the FUSE session on `dev`; the kernel
/// answers with the id that OPEN and CREATE replies name.
pub fn backing_open(dev: BorrowedFd, file: BorrowedFd) -> io::Result<u32> {
    #[repr(C)]
    struct BackingMap {
        fd: i32,
        flags: u32,
        padding: u64,
    }
    let map = BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: the ioctl reads one `fuse_backing_map` (this layout) from a live local.
    let id = check(unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, &map) })?;
    Ok(id as u32)
}

/// Unregisters a backing id made by [`backing_open`] on the same session.
pub fn backing_close(dev: BorrowedFd, id: u32) -> io::Result<()> {
    // SAFETY: the ioctl reads one u32 from a live local.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE, &id) })?;
    Ok(())
}

/// Replies to an OPEN through fuser with a backing id registered by [`backing_open`],
/// which stays registered (fuse/passthrough.rs closes it with the node's last handle).
pub fn reply_opened_passthrough(
    reply: fuser::ReplyOpen,
    fh: fuser::FileHandle,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY: `id` is open on this session and outlives this call; `into_raw` below hands
    // it back without closing it.
    let backing = unsafe { reply.wrap_backing(id) };
    reply.opened_passthrough(fh, flags, &backing);
    backing.into_raw();
}

/// The same for a CREATE reply.
pub fn reply_created_passthrough(
    reply: fuser::ReplyCreate,
    entry: (&std::time::Duration, &fuser::FileAttr, fuser::Generation),
    fh: fuser::FileHandle,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY: as in `reply_opened_passthrough`.
    let backing = unsafe { reply.wrap_backing(id) };
    reply.created_passthrough(entry.0, entry.1, entry.2, fh, flags, &backing);
    backing.into_raw();
}
