//! Process-wide state of the daemon: signals, resource limits, umask, sessions, pipes.
//!
//! These are thin wrappers so that `daemon.rs` stays free of `unsafe`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The effective user id of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective group id of this process.
pub fn getegid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Sets the file mode creation mask and returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
///
/// Every open file in the mount and every cached layer handle costs a descriptor, so the
/// daemon wants as many as it is allowed.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill in.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit whose soft limit does not exceed its hard limit.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// Starts a new session so that the background daemon has no controlling terminal and
/// does not receive the caller's terminal signals.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions; failure is reported through errno.
    check(unsafe { libc::setsid() }).map(drop)
}

/// A set of signals that are blocked in every thread and received with [`SignalSet::wait`].
#[derive(Clone, Copy)]
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks `signals` in the calling thread. Threads started afterwards inherit the mask,
    /// so call this before any thread exists for the signals to reach only `wait`.
    pub fn block(signals: &[libc::c_int]) -> io::Result<SignalSet> {
        // SAFETY: sigset_t is plain data; sigemptyset below initialises it fully.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable sigset_t.
        check(unsafe { libc::sigemptyset(&mut set) })?;
        for &sig in signals {
            // SAFETY: `set` was initialised by sigemptyset; an invalid `sig` gives EINVAL.
            check(unsafe { libc::sigaddset(&mut set, sig) })?;
        }
        // SAFETY: `set` is an initialised sigset_t and a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SignalSet { set })
    }

    /// Waits until one of the signals is pending and returns its number.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised sigset_t and `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

/// A pipe whose read end is close-on-exec and whose write end is inherited by a child
/// process started afterwards.
pub fn inheritable_pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints as pipe2 requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_cloexec(write.as_raw_fd(), false)?;
    Ok((read, write))
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD only reads the flags of `fd`; a closed fd gives EBADF.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: F_SETFD only changes the descriptor flags of `fd`.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }).map(drop)
}

/// Takes ownership of a descriptor inherited from the parent process (named in the
/// environment), checking that it is open, and marks it close-on-exec so that programs
/// the daemon starts (fusermount3) do not keep it open.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<File> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    set_cloexec(fd, true)?;
    // SAFETY: the fd is open (fcntl above succeeded) and was handed to this process for its
    // sole use by the parent; nothing else in this process refers to it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Detaches the mount at `path` even if it is busy; used when a clean unmount fails on
/// SIGTERM so that the daemon can still leave.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// An eventfd (counter mode, blocking, close-on-exec).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the fd returned is new and owned by nobody else.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just opened by this call.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking whoever reads it.
pub fn eventfd_signal(fd: BorrowedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: valid fd; the buffer is 8 readable bytes, as an eventfd write takes.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restricts the calling thread to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is within the set, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is a live local of the size passed; pid 0 is the calling thread.
    check(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })
        .map(drop)
}

/// Blocks the calling thread has had read from storage so far (`ru_inblock`): a change
/// across a call means the call waited for the disk. 0 if it cannot be told.
pub fn thread_blocks_read() -> u64 {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live local for getrusage to fill in; RUSAGE_THREAD names the
    // calling thread.
    match check(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }) {
        Ok(_) => u64::try_from(ru.ru_inblock).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Hands freed heap memory back to the system, so the daemon shrinks after the kernel
/// forgets many nodes.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator; it cannot fail.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipe_write_end_is_inheritable_and_read_end_is_not() {
        let (mut read, write) = inheritable_pipe().unwrap();
        // SAFETY: F_GETFD on descriptors we own.
        let (rf, wf) = unsafe {
            (
                libc::fcntl(read.as_raw_fd(), libc::F_GETFD),
                libc::fcntl(write.as_raw_fd(), libc::F_GETFD),
            )
        };
        assert_ne!(rf & libc::FD_CLOEXEC, 0);
        assert_eq!(wf & libc::FD_CLOEXEC, 0);
        let mut w = File::from(write);
        w.write_all(b"ready\n").unwrap();
        drop(w);
        let mut s = String::new();
        read.read_to_string(&mut s).unwrap();
        assert_eq!(s, "ready\n");
    }

    #[test]
    fn umask_round_trips() {
        let old = set_umask(0o022);
        assert_eq!(set_umask(old), 0o022);
    }

    #[test]
    fn adopting_a_closed_fd_fails() {
        assert!(adopt_inherited_fd(987_654).is_err());
        assert!(adopt_inherited_fd(1).is_err());
    }
}
