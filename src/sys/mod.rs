//! Raw syscalls. Every `unsafe` block of the crate lives under this module,
//! each with a `// SAFETY:` line. Callers get `io::Result` and owned fds.
//!
//! Paths handed to these functions are always a directory fd plus a single name (or a
//! relative path resolved with `openat2(RESOLVE_BENEATH)`), never a joined string: a layer
//! cannot make the daemon touch anything outside itself. The calls are split by what they
//! act on (`open`, `path`, `file`, `xattr`, `fuse_dev`) and all named from here, so callers
//! write `sys::fstatat` whichever file holds it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

mod file;
mod fuse_dev;
pub mod mountinfo;
mod open;
mod path;
pub mod process;
pub mod uring;
mod xattr;

pub use file::{
    copy_file_range, fallocate, fchmod, fchown, ficlone, fstat, fstatvfs, fsync, ftruncate,
    futimens, lseek, makedev, pread, pwrite, read_dir, zeroed_stat,
};
pub use fuse_dev::{
    backing_close, backing_open, reply_created_passthrough, reply_opened_passthrough,
};
pub use open::{openat, openat_beneath, reopen, set_fd_relief};
pub use path::{
    fchmodat, fchmodat_nofollow, fchownat, fstatat, linkat, mkdirat, mknodat, readlinkat,
    renameat2, symlinkat, unlinkat, utimensat, Timespec, RENAME_EXCHANGE, RENAME_NOREPLACE,
    UTIME_NOW, UTIME_OMIT,
};
pub use process::trim_heap;
pub use xattr::{getxattr, listxattr, removexattr, setxattr};

pub type Stat = libc::stat;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The /proc magic link of `dir`, plus `name` when there is one.
fn proc_path(dir: BorrowedFd, name: &OsStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
