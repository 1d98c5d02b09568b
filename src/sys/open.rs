//! Opening: `openat2` confined beneath a layer's handle, `openat` of one name, an O_PATH
//! handle reopened through /proc. An open that fails for want of descriptors is retried
//! once after the fd relief has freed cached handles.

use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::{check, cstr, proc_path};

/// How `openat2` may resolve a relative path inside a layer: never above the layer root,
/// never through a symlink or a /proc magic link.
const RESOLVE_INSIDE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// What frees descriptors when an open fails for want of them (the layers' cached
/// directory handles, `layers/layer.rs`).
static FD_RELIEF: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what to call when an open fails with EMFILE or ENFILE; the open is then retried
/// once. The first call wins.
pub fn set_fd_relief(relief: fn()) {
    let _ = FD_RELIEF.set(relief);
}

/// `open()`, and once more after relief when it failed for want of descriptors: a full fd
/// table must cost cached handles, never the request.
fn with_fd_relief(mut open: impl FnMut() -> io::Result<OwnedFd>) -> io::Result<OwnedFd> {
    match open() {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            match FD_RELIEF.get() {
                Some(relief) => {
                    relief();
                    open()
                }
                None => Err(e),
            }
        }
        r => r,
    }
}

/// `openat2(dir, path, flags, mode)` confined to `dir`.
pub fn openat_beneath(dir: BorrowedFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    with_fd_relief(|| openat_beneath_once(dir, path, flags, mode))
}

fn openat_beneath_once(dir: BorrowedFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c = cstr(path.as_os_str())?;
    // SAFETY: open_how is plain old data; all-zero is its documented "no options" value.
    let mut how: libc::open_how = unsafe { MaybeUninit::zeroed().assume_init() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = RESOLVE_INSIDE;
    loop {
        // SAFETY: `c` is a valid NUL-terminated string and `how` a valid open_how whose size
        // we pass; the returned fd is fresh and owned by nobody else.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let err = io::Error::last_os_error();
        // openat2 answers EAGAIN when a concurrent rename raced the resolution; retrying is
        // the documented remedy.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// `openat(dir, name, flags)` for a single name (no '/'); does not follow a final symlink
/// unless the caller leaves out O_NOFOLLOW on purpose.
pub fn openat(dir: BorrowedFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    with_fd_relief(|| {
        // SAFETY: valid C string; the returned fd is fresh.
        let fd = check(unsafe {
            libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode)
        })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// Reopens an O_PATH fd with real access `flags` (through /proc, as the kernel allows).
pub fn reopen(fd: BorrowedFd, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_path(fd, OsStr::new(""))?;
    with_fd_relief(|| {
        // SAFETY: valid C string; the returned fd is fresh.
        let r = check(unsafe {
            libc::open(p.as_ptr(), (flags | libc::O_CLOEXEC) & !libc::O_NOFOLLOW, 0)
        })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    })
}
