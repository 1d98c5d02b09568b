//! Raw syscalls. Every `unsafe` block of the crate lives under this module,
//! each with a `// SAFETY:` line. Callers get `io::Result` and owned fds.
//!
//! Paths handed to these functions are always a directory fd plus a single name (or a
//! relative path resolved with `openat2(RESOLVE_BENEATH)`), never a joined string: a layer
//! cannot make the daemon touch anything outside itself.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub mod process;
pub mod uring;

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

pub fn fstatat(dir: BorrowedFd, name: &OsStr) -> io::Result<Stat> {
    let c = cstr(name)?;
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one stat; the kernel fills it on success.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

pub fn fstat(fd: BorrowedFd) -> io::Result<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: `st` is a valid out-pointer; AT_EMPTY_PATH stats the fd itself (O_PATH too).
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdirat(dir: BorrowedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })?;
    Ok(())
}

pub fn mknodat(dir: BorrowedFd, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) })?;
    Ok(())
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings and fd.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })?;
    Ok(())
}

pub fn readlinkat(dir: BorrowedFd, name: &OsStr) -> io::Result<OsString> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for its whole length, which we pass.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

pub fn linkat(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
) -> io::Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings and fds; flags 0 never follows a symlink source.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string and fd.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })?;
    Ok(())
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

pub fn renameat2(
    olddir: BorrowedFd,
    oldname: &OsStr,
    newdir: BorrowedFd,
    newname: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    // SAFETY: valid C strings and fds.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// chown of `name` in `dir` without following a symlink; `u32::MAX` leaves an id unchanged.
pub fn fchownat(dir: BorrowedFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn fchown(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

/// chmod of `name` in `dir`. Symlinks have no mode of their own: the caller never asks.
pub fn fchmodat(dir: BorrowedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode, 0) })?;
    Ok(())
}

/// chmod of `name` in `dir` that never follows a symlink (`fchmodat2`, Linux 6.6, with
/// `AT_SYMLINK_NOFOLLOW`). Where the kernel lacks it, the name is checked not to be a
/// symlink first; callers use it on entries they have just made in a private directory.
pub fn fchmodat_nofollow(dir: BorrowedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd; fchmodat2 takes (dirfd, path, mode, flags).
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::c_long,
            libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    if fstatat(dir, name)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    fchmodat(dir, name, mode)
}

pub fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    Ok(())
}

/// Timestamps as `utimensat` takes them: (seconds, nanoseconds), or UTIME_NOW/UTIME_OMIT
/// in the nanoseconds field.
pub type Timespec = libc::timespec;

pub const UTIME_NOW: i64 = libc::UTIME_NOW;
pub const UTIME_OMIT: i64 = libc::UTIME_OMIT;

pub fn utimensat(dir: BorrowedFd, name: &OsStr, times: &[Timespec; 2]) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd; `times` points at two timespecs.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn futimens(fd: BorrowedFd, times: &[Timespec; 2]) -> io::Result<()> {
    // SAFETY: valid fd; `times` points at two timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

/// How the xattr calls below reach `name` inside `dir` without any lookup outside it.
///
/// With a name, Linux 6.13's `*xattrat` calls take `dir` and the name directly, with
/// `AT_SYMLINK_NOFOLLOW`; that saves the walk through /proc of the fallback (1.4 us against
/// 2.6 us per call here, and a LOOKUP or `ls -l` entry makes one or two). The fallback, for
/// older kernels and for `dir` itself (`*xattrat` refuses an `O_PATH` fd with an empty
/// path), is the fd's /proc magic link plus the name, with the `l` variants so a final
/// symlink is not followed; with an empty name the magic link itself names the object and
/// must be followed (the `l` variants would act on the /proc link).
enum XattrPath {
    At { dir: RawFd, name: CString },
    Proc { path: CString, follow: bool },
}

/// `setxattrat`, `getxattrat`, `listxattrat`, `removexattrat`: numbers shared by every
/// architecture that takes new system calls from the common table (not yet in `libc`).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
mod xattrat {
    pub const SET: libc::c_long = 463;
    pub const GET: libc::c_long = 464;
    pub const LIST: libc::c_long = 465;
    pub const REMOVE: libc::c_long = 466;
    pub const SUPPORTED: bool = true;
}
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
mod xattrat {
    pub const SET: libc::c_long = -1;
    pub const GET: libc::c_long = -1;
    pub const LIST: libc::c_long = -1;
    pub const REMOVE: libc::c_long = -1;
    pub const SUPPORTED: bool = false;
}

/// Set once a `*xattrat` call answers ENOSYS (a kernel before 6.13, or a seccomp filter
/// that does not know them): from then on everything goes through /proc.
static NO_XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `struct xattr_args`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn xattr_path(dir: BorrowedFd, name: &OsStr) -> io::Result<XattrPath> {
    if xattrat::SUPPORTED
        && !name.is_empty()
        && !NO_XATTRAT.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(XattrPath::At {
            dir: dir.as_raw_fd(),
            name: cstr(name)?,
        });
    }
    proc_xattr_path(dir, name)
}

fn proc_xattr_path(dir: BorrowedFd, name: &OsStr) -> io::Result<XattrPath> {
    Ok(XattrPath::Proc {
        path: proc_path(dir, name)?,
        follow: name.is_empty(),
    })
}

/// Runs an xattr call on `p`; if `*xattrat` turns out to be missing, notes it and runs
/// the call again through /proc.
fn with_xattr_path(
    dir: BorrowedFd,
    name: &OsStr,
    mut call: impl FnMut(&XattrPath) -> libc::ssize_t,
) -> io::Result<libc::ssize_t> {
    let p = xattr_path(dir, name)?;
    let n = call(&p);
    if n < 0
        && matches!(p, XattrPath::At { .. })
        && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
    {
        NO_XATTRAT.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(call(&proc_xattr_path(dir, name)?));
    }
    Ok(n)
}

fn proc_path(dir: BorrowedFd, name: &OsStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// (pointer, length) for a buffer that may be empty (a size query).
fn out_buf(buf: &mut [u8]) -> (*mut libc::c_void, usize) {
    if buf.is_empty() {
        (std::ptr::null_mut(), 0)
    } else {
        (buf.as_mut_ptr().cast(), buf.len())
    }
}

fn raw_getxattr(p: &XattrPath, attr: &CStr, buf: &mut [u8]) -> libc::ssize_t {
    let (ptr, len) = out_buf(buf);
    match p {
        XattrPath::At { dir, name } => {
            let args = XattrArgs {
                value: ptr as u64,
                size: len.min(u32::MAX as usize) as u32,
                flags: 0,
            };
            // SAFETY: valid fd number and C strings; `args` names a buffer that is null
            // with size 0 (a size query) or writable for `size`, and is passed with its size.
            unsafe {
                libc::syscall(
                    xattrat::GET,
                    *dir as libc::c_long,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
                    attr.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                ) as libc::ssize_t
            }
        }
        // SAFETY: valid C strings; `ptr` is null with size 0 (a size query) or writable for `len`.
        XattrPath::Proc { path, follow } => unsafe {
            if *follow {
                libc::getxattr(path.as_ptr(), attr.as_ptr(), ptr, len)
            } else {
                libc::lgetxattr(path.as_ptr(), attr.as_ptr(), ptr, len)
            }
        },
    }
}

fn raw_listxattr(p: &XattrPath, buf: &mut [u8]) -> libc::ssize_t {
    let (ptr, len) = out_buf(buf);
    match p {
        // SAFETY: valid fd number and C string; `ptr` is null with size 0 (a size query)
        // or writable for `len`.
        XattrPath::At { dir, name } => unsafe {
            libc::syscall(
                xattrat::LIST,
                *dir as libc::c_long,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
                ptr,
                len,
            ) as libc::ssize_t
        },
        // SAFETY: valid C string; `ptr` is null with size 0 (a size query) or writable for `len`.
        XattrPath::Proc { path, follow } => unsafe {
            if *follow {
                libc::listxattr(path.as_ptr(), ptr.cast(), len)
            } else {
                libc::llistxattr(path.as_ptr(), ptr.cast(), len)
            }
        },
    }
}

/// Value of xattr `attr` of `name` in `dir` (`name` empty: of `dir` itself).
pub fn getxattr(dir: BorrowedFd, name: &OsStr, attr: &OsStr) -> io::Result<Vec<u8>> {
    let a = cstr(attr)?;
    let mut buf = vec![0u8; 256];
    loop {
        let n = with_xattr_path(dir, name, |p| raw_getxattr(p, &a, &mut buf))?;
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
        let need = check_size(with_xattr_path(dir, name, |p| {
            raw_getxattr(p, &a, &mut [])
        })?)?;
        buf.resize(need.max(buf.len() * 2), 0);
    }
}

pub fn setxattr(
    dir: BorrowedFd,
    name: &OsStr,
    attr: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let a = cstr(attr)?;
    let n = with_xattr_path(dir, name, |p| match p {
        XattrPath::At { dir, name } => {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len().min(u32::MAX as usize) as u32,
                flags: flags as u32,
            };
            // SAFETY: valid fd number and C strings; `args` names `value`, readable for its
            // length, and is passed with its size.
            unsafe {
                libc::syscall(
                    xattrat::SET,
                    *dir as libc::c_long,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
                    a.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                ) as libc::ssize_t
            }
        }
        // SAFETY: valid C strings; `value` readable for its length.
        XattrPath::Proc { path, follow } => unsafe {
            let f = if *follow {
                libc::setxattr
            } else {
                libc::lsetxattr
            };
            f(
                path.as_ptr(),
                a.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            ) as libc::ssize_t
        },
    })?;
    check_size(n)?;
    Ok(())
}

pub fn removexattr(dir: BorrowedFd, name: &OsStr, attr: &OsStr) -> io::Result<()> {
    let a = cstr(attr)?;
    let n = with_xattr_path(dir, name, |p| match p {
        // SAFETY: valid fd number and C strings.
        XattrPath::At { dir, name } => unsafe {
            libc::syscall(
                xattrat::REMOVE,
                *dir as libc::c_long,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
                a.as_ptr(),
            ) as libc::ssize_t
        },
        // SAFETY: valid C strings.
        XattrPath::Proc { path, follow } => unsafe {
            if *follow {
                libc::removexattr(path.as_ptr(), a.as_ptr()) as libc::ssize_t
            } else {
                libc::lremovexattr(path.as_ptr(), a.as_ptr()) as libc::ssize_t
            }
        },
    })?;
    check_size(n)?;
    Ok(())
}

/// Names of all xattrs of `name` in `dir`.
pub fn listxattr(dir: BorrowedFd, name: &OsStr) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        let n = with_xattr_path(dir, name, |p| raw_listxattr(p, &mut buf))?;
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
        let need = check_size(with_xattr_path(dir, name, |p| raw_listxattr(p, &mut []))?)?;
        buf.resize(need.max(buf.len() * 2), 0);
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect())
}

/// Entries of the directory open as `fd` (O_RDONLY|O_DIRECTORY), without "." and "..",
/// as (name, d_type, d_ino), read from its current position on. Straight `getdents64`:
/// `fdopendir` would cost three more syscalls per directory (fstat, two fcntl), and the
/// overlay reads a directory of every layer for each listing.
pub fn read_dir(fd: BorrowedFd) -> io::Result<Vec<(OsString, u8, u64)>> {
    // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
    const NAME_AT: usize = 19;
    let mut buf = vec![0u8; 32 * 1024];
    let mut out = Vec::new();
    loop {
        // SAFETY: `buf` is a live, writable buffer of the length passed; the kernel writes
        // at most that many bytes of whole records into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let filled = &buf[..n as usize];
        if filled.is_empty() {
            return Ok(out);
        }
        let mut at = 0;
        while at + NAME_AT <= filled.len() {
            let rec = &filled[at..];
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            if reclen < NAME_AT || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let ino = u64::from_ne_bytes(rec[..8].try_into().unwrap_or_default());
            let dtype = rec[18];
            let name = &rec[NAME_AT..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                out.push((OsStr::from_bytes(name).to_os_string(), dtype, ino));
            }
            at += reclen;
        }
    }
}

pub fn fstatvfs(fd: BorrowedFd) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is a valid out-pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

pub fn pread(fd: BorrowedFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe {
        libc::pread64(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as i64,
        )
    })
}

pub fn pwrite(fd: BorrowedFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    check_size(unsafe {
        libc::pwrite64(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as i64,
        )
    })
}

pub fn fsync(fd: BorrowedFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })?;
    Ok(())
}

pub fn ftruncate(fd: BorrowedFd, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::ftruncate64(fd.as_raw_fd(), size as i64) })?;
    Ok(())
}

pub fn fallocate(fd: BorrowedFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset as i64, len as i64) })?;
    Ok(())
}

pub fn lseek(fd: BorrowedFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn copy_file_range(
    fd_in: BorrowedFd,
    off_in: u64,
    fd_out: BorrowedFd,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut i = off_in as i64;
    let mut o = off_out as i64;
    // SAFETY: valid fds; the offsets are local variables the kernel may update.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut i,
            fd_out.as_raw_fd(),
            &mut o,
            len,
            0,
        )
    })
}

/// Shares all of `src`'s blocks with `dst` (reflink), where the filesystem can.
pub fn ficlone(dst: BorrowedFd, src: BorrowedFd) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument; both fds are valid.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) })?;
    Ok(())
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

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// An all-zero `stat`, for synthesised attributes.
pub fn zeroed_stat() -> Stat {
    // SAFETY: `stat` is plain old data; all-zero bytes are a valid value of it.
    unsafe { MaybeUninit::<Stat>::zeroed().assume_init() }
}

/// Hands freed heap memory back to the system, so the daemon shrinks after the kernel
/// forgets many nodes.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator; it cannot fail.
    unsafe {
        libc::malloc_trim(0);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;

    /// Both ways of reaching an xattr (`*xattrat` and /proc) give the same answers: a file's
    /// xattrs by name, a directory's own with an empty name, and a final symlink not
    /// followed.
    #[test]
    fn xattr_calls_agree_with_and_without_xattrat() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("ln")).unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let dir = dir.as_fd();
        let name = OsStr::new;
        for proc_only in [false, true] {
            NO_XATTRAT.store(proc_only, Ordering::Relaxed);
            let how = if proc_only { "/proc" } else { "xattrat" };
            setxattr(dir, name("f"), name("user.k"), b"v1", 0).unwrap();
            assert_eq!(
                getxattr(dir, name("f"), name("user.k")).unwrap(),
                b"v1",
                "{how}"
            );
            let long = vec![b'z'; 3000];
            setxattr(dir, name("f"), name("user.long"), &long, 0).unwrap();
            assert_eq!(
                getxattr(dir, name("f"), name("user.long")).unwrap(),
                long,
                "{how}"
            );
            let mut names = listxattr(dir, name("f")).unwrap();
            names.sort();
            assert_eq!(names, ["user.k", "user.long"], "{how}");
            let err = setxattr(dir, name("f"), name("user.k"), b"v2", libc::XATTR_CREATE);
            assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EEXIST), "{how}");
            removexattr(dir, name("f"), name("user.k")).unwrap();
            removexattr(dir, name("f"), name("user.long")).unwrap();
            let err = getxattr(dir, name("f"), name("user.k")).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODATA), "{how}");
            // The symlink itself, not its target: user.* cannot be set on a symlink.
            let err = setxattr(dir, name("ln"), name("user.k"), b"v", 0).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{how}");
            assert!(listxattr(dir, name("ln")).unwrap().is_empty(), "{how}");
            // The directory itself.
            setxattr(dir, name(""), name("user.d"), b"dir", 0).unwrap();
            assert_eq!(
                getxattr(dir, name(""), name("user.d")).unwrap(),
                b"dir",
                "{how}"
            );
            removexattr(dir, name(""), name("user.d")).unwrap();
        }
        NO_XATTRAT.store(false, Ordering::Relaxed);
    }
}
