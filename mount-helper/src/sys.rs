//! Raw syscalls the standard library does not wrap: xattrs, mknod, lchown, utimensat,
//! flock, syncfs, umount2. Every `unsafe` block of the crate lives here.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// Names of the extended attributes of `path` (not following symlinks). Filesystems
/// without xattr support answer with an empty list.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `p` is NUL-terminated; `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect())
}

/// Value of one extended attribute, `None` when it is absent.
pub fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let n = cstr(OsStr::from_bytes(name))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `p`/`n` are NUL-terminated; `buf` is valid for `buf.len()` bytes.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = cstr(OsStr::from_bytes(name))?;
    // SAFETY: pointers are valid for the lengths given.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a device node or FIFO. `kind` is `libc::S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
pub fn mknod(path: &Path, kind: u32, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cpath(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `p` is NUL-terminated.
    let r = unsafe { libc::mknod(p.as_ptr(), (kind | (perm & 0o7777)) as libc::mode_t, dev) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn dev_major(rdev: u64) -> u32 {
    libc::major(rdev)
}

pub fn dev_minor(rdev: u64) -> u32 {
    libc::minor(rdev)
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Sets atime and mtime (seconds + nanoseconds) without following a final symlink.
pub fn set_times(path: &Path, mtime: i64, mtime_nsec: i64) -> io::Result<()> {
    let p = cpath(path)?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: mtime_nsec as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: `p` is NUL-terminated; `times` holds two timespecs as utimensat requires.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Tries once to take an exclusive flock on `file`: Ok(false) when another process holds
/// it. Released on close, so a killed writer never leaves the store locked. Never blocks:
/// the caller decides how long to wait.
pub fn flock_try_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: the fd is open for the lifetime of `file`.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Flushes the whole filesystem that `file` lives on. One syncfs before a rename is far
/// cheaper than an fsync per file of a large layer and gives the same guarantee.
pub fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: the fd is open for the lifetime of `file`.
    let r = unsafe { libc::syncfs(file.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Detaches a kernel (non-FUSE) mount, e.g. kernel overlayfs used as the mount program.
pub fn umount(path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: `p` is NUL-terminated.
    let r = unsafe { libc::umount2(p.as_ptr(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Write end of the pipe the signal handler reports to (-1: none installed).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn report_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `b` lives for the call. A full pipe drops the
    // byte, which is fine: one pending report is enough.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// Makes `signals` write their number (one byte) into a pipe instead of killing the
/// process; returns the pipe's read end. The handler does nothing but that write, so the
/// work (removing temp files) happens on an ordinary thread reading the pipe. Handlers are
/// reset by exec, so child processes still get the default dispositions.
pub fn signals_to_pipe(signals: &[libc::c_int]) -> io::Result<File> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints as pipe2 requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; the read end is owned by nobody else. The write end stays
    // open for the life of the process (the handler may fire at any time).
    let read = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    // The reader blocks; only the handler's writes must never block.
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { libc::fcntl(fds[0], libc::F_SETFL, 0) };
    SIGNAL_PIPE.store(fds[1], std::sync::atomic::Ordering::Relaxed);
    for &sig in signals {
        // SAFETY: sigaction is plain data, fully initialised here; the handler only calls
        // write(2).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = report_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(read)
}

/// Ends the process the way `sig` would have by default (so that a shell sees "killed by
/// SIGINT"), falling back to exit status 128 + sig.
pub fn die_by_signal(sig: libc::c_int) -> ! {
    // SAFETY: restoring the default disposition and raising a signal have no memory
    // preconditions.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// Sets `sig`'s disposition to ignore (true) or back to `old`; returns the previous one.
/// `run` ignores SIGINT/SIGTERM while the container runs so that Ctrl-C reaches only the
/// container and this process lives on to unmount.
pub fn set_signal(sig: libc::c_int, disposition: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: SIG_IGN, SIG_DFL and a value returned by an earlier call are all valid
    // dispositions; no handler code is involved beyond `report_signal`.
    unsafe { libc::signal(sig, disposition) }
}

pub fn getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// True when `pid` names a live process (kill with signal 0: EPERM still means alive).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for the process's existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory preconditions; a bad pid gives ESRCH.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The device (major, minor) of the file `path` names, from the attributes the kernel
/// already has (`AT_STATX_DONT_SYNC`): a FUSE file system is not asked, so a hung daemon
/// of some other mount cannot block the caller. Used on /proc/PID/{cwd,root,fd/N}, whose
/// magic links lead straight to the open file, whatever mount namespace holds it.
pub fn dev_of_cached(path: &Path) -> io::Result<(u32, u32)> {
    let p = cpath(path)?;
    // SAFETY: statx is plain data; all-zero is a valid value for it to overwrite.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a NUL-terminated path that outlives the call; `stx` is writable.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stx.stx_dev_major, stx.stx_dev_minor))
}

/// A descriptor that names process `pid` for good: signals sent through it can never
/// reach a later process that reuses the number (pid_max may be as low as 32768).
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// Sends `sig` to the process `fd` names (ESRCH once it has exited).
pub fn pidfd_signal(fd: std::os::fd::BorrowedFd, sig: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
