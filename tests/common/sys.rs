//! The system calls tests make on paths, as calls into the daemon's own syscall layer
//! (`layerfs::sys`, which names a file by a directory handle and a name): each function
//! here opens the path's parent (`O_PATH`, following symlinks as a path walk does) and
//! hands the final name over, so a path call and its `*at` form behave alike. Only
//! `access` and `fcntl_lock` have no counterpart there and call libc themselves.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use layerfs::sys;

pub fn cstr(p: impl AsRef<OsStr>) -> CString {
    CString::new(p.as_ref().as_bytes()).unwrap()
}

/// An `O_PATH` handle on `path` (a final symlink followed).
fn open_path(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
}

/// `path` as `layerfs::sys` names it: its parent's handle and its final name. A path
/// without a final name (`/`, one ending in `..`) is its own handle and the empty name,
/// which the xattr calls take to mean the handle's object.
fn at(path: &Path) -> io::Result<(fs::File, OsString)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok((open_path(parent)?, name.to_os_string()))
        }
        _ => Ok((open_path(path)?, OsString::new())),
    }
}

pub fn mknod(
    path: impl AsRef<Path>,
    kind: libc::mode_t,
    perm: libc::mode_t,
    dev: u64,
) -> io::Result<()> {
    let (dir, name) = at(path.as_ref())?;
    sys::mknodat(dir.as_fd(), &name, kind | perm, dev)
}

pub fn mkdir(path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<()> {
    let (dir, name) = at(path.as_ref())?;
    sys::mkdirat(dir.as_fd(), &name, mode)
}

/// chmod, following a final symlink as chmod(2) does.
pub fn chmod(path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<()> {
    let (dir, name) = at(path.as_ref())?;
    sys::fchmodat(dir.as_fd(), &name, mode)
}

pub fn lchown(path: impl AsRef<Path>, uid: u32, gid: u32) -> io::Result<()> {
    let (dir, name) = at(path.as_ref())?;
    sys::fchownat(dir.as_fd(), &name, uid, gid)
}

pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    sys::process::set_umask(mask)
}

/// utimensat without following symlinks; `None` means UTIME_OMIT, `Some((0, UTIME_NOW))`
/// means now.
pub fn utimens(
    path: impl AsRef<Path>,
    atime: Option<(i64, i64)>,
    mtime: Option<(i64, i64)>,
) -> io::Result<()> {
    let ts = |t: Option<(i64, i64)>| match t {
        None => sys::Timespec {
            tv_sec: 0,
            tv_nsec: sys::UTIME_OMIT,
        },
        Some((s, ns)) => sys::Timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: ns as libc::c_long,
        },
    };
    let (dir, name) = at(path.as_ref())?;
    sys::utimensat(dir.as_fd(), &name, &[ts(atime), ts(mtime)])
}

pub const NOW: Option<(i64, i64)> = Some((0, sys::UTIME_NOW));

pub fn renameat2(from: impl AsRef<Path>, to: impl AsRef<Path>, flags: u32) -> io::Result<()> {
    let (fdir, fname) = at(from.as_ref())?;
    let (tdir, tname) = at(to.as_ref())?;
    sys::renameat2(fdir.as_fd(), &fname, tdir.as_fd(), &tname, flags)
}

pub fn lsetxattr(path: impl AsRef<Path>, name: &str, value: &[u8]) -> io::Result<()> {
    lsetxattr_flags(path, name, value, 0)
}

/// lsetxattr with XATTR_CREATE / XATTR_REPLACE flags.
pub fn lsetxattr_flags(
    path: impl AsRef<Path>,
    name: &str,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let (dir, file) = at(path.as_ref())?;
    sys::setxattr(dir.as_fd(), &file, OsStr::new(name), value, flags)
}

pub fn lgetxattr(path: impl AsRef<Path>, name: &str) -> io::Result<Vec<u8>> {
    let (dir, file) = at(path.as_ref())?;
    sys::getxattr(dir.as_fd(), &file, OsStr::new(name))
}

/// An xattr's value as text, or None when it is not set (or cannot be read).
pub fn lgetxattr_str(path: impl AsRef<Path>, name: &str) -> Option<String> {
    lgetxattr(path, name)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The names of a path's xattrs, sorted.
pub fn llistxattr(path: impl AsRef<Path>) -> io::Result<Vec<String>> {
    let (dir, file) = at(path.as_ref())?;
    let mut names: Vec<String> = sys::listxattr(dir.as_fd(), &file)?
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn lremovexattr(path: impl AsRef<Path>, name: &str) -> io::Result<()> {
    let (dir, file) = at(path.as_ref())?;
    sys::removexattr(dir.as_fd(), &file, OsStr::new(name))
}

// The offsets below go through `layerfs::sys` as u64 and back to the kernel's signed
// type unchanged, so a test may still hand a negative one in to see it refused.

pub fn fallocate(f: &fs::File, mode: i32, off: i64, len: i64) -> io::Result<()> {
    sys::fallocate(f.as_fd(), mode, off as u64, len as u64)
}

pub fn lseek(f: &fs::File, off: i64, whence: i32) -> io::Result<i64> {
    sys::lseek(f.as_fd(), off, whence)
}

pub fn copy_file_range(
    src: &fs::File,
    soff: i64,
    dst: &fs::File,
    doff: i64,
    len: usize,
) -> io::Result<usize> {
    sys::copy_file_range(src.as_fd(), soff as u64, dst.as_fd(), doff as u64, len)
}

pub fn statvfs(path: impl AsRef<Path>) -> libc::statvfs {
    let f = open_path(path.as_ref()).unwrap();
    sys::fstatvfs(f.as_fd()).unwrap()
}

pub fn fstat(f: &fs::File) -> io::Result<libc::stat> {
    sys::fstat(f.as_fd())
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    sys::makedev(major, minor)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// access(2): the daemon never asks it, so `layerfs::sys` has none.
pub fn access(path: impl AsRef<Path>, mode: i32) -> io::Result<()> {
    let c = cstr(path.as_ref());
    // SAFETY: valid path.
    check(unsafe { libc::access(c.as_ptr(), mode) })
}

/// fcntl with a flock struct (F_SETLK, F_GETLK, F_OFD_SETLK, F_OFD_GETLK...); the daemon
/// leaves locks to the kernel, so `layerfs::sys` has none.
pub fn fcntl_lock(
    f: &fs::File,
    cmd: i32,
    ltype: i16,
    start: i64,
    len: i64,
) -> io::Result<libc::flock> {
    // SAFETY: zeroed flock is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ltype;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: f is open; fl is a valid flock.
    check(unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) })?;
    Ok(fl)
}
