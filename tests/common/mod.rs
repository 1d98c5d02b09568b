//! Shared helpers for the integration tests: layer trees in fresh temp dirs, mounting
//! (layerfs or kernel overlayfs) with a guard that always unmounts, whiteout/opaque
//! encodings, raw syscalls std lacks, and a tree snapshot for comparisons. The helpers for
//! tests that act as an unprivileged user are in [`rootless`].
//!
//! Environment:
//! - `LAYERFS_BIN`: the daemon under test (default: this workspace's `layerfs`).
//!   Any fuse-overlayfs compatible binary works, e.g. `/usr/bin/fuse-overlayfs`.
//! - `LAYERFS_TEST_BACKEND=kernel`: mount kernel overlayfs instead (to validate the
//!   tests themselves against the reference implementation).
//! - `LAYERFS_TEST_TMPDIR`: where temp dirs go (default: the system temp dir).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub mod rootless;

// ---------------------------------------------------------------------------
// Environment checks
// ---------------------------------------------------------------------------

/// Mount tests need root and /dev/fuse. They never skip: they fail loudly.
pub fn require_mount_privileges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests mount filesystems and must run as root (euid is {euid}); \
         they are never skipped"
    );
    if backend() == Backend::Layerfs {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: FUSE tests cannot run (they are never skipped)"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Layerfs,
    Kernel,
}

pub fn backend() -> Backend {
    match std::env::var("LAYERFS_TEST_BACKEND").as_deref() {
        Ok("kernel") => Backend::Kernel,
        Ok("layerfs") | Ok("") | Err(_) => Backend::Layerfs,
        Ok(other) => panic!("LAYERFS_TEST_BACKEND={other}: expected `layerfs` or `kernel`"),
    }
}

pub fn layerfs_bin() -> PathBuf {
    match std::env::var_os("LAYERFS_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_layerfs")),
    }
}

pub fn tmp_base() -> PathBuf {
    std::env::var_os("LAYERFS_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

// ---------------------------------------------------------------------------
// Layer stacks and mounts
// ---------------------------------------------------------------------------

/// A fresh directory holding `l0..lN` (l0 is the top-most lower), `upper`, `work`, `mnt`.
pub struct Stack {
    pub root: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    pub fn new(nlowers: usize) -> Stack {
        require_mount_privileges();
        let root = tempfile::Builder::new()
            .prefix("layerfs-test-")
            .tempdir_in(tmp_base())
            .expect("create temp dir");
        let lowers: Vec<PathBuf> = (0..nlowers)
            .map(|i| root.path().join(format!("l{i}")))
            .collect();
        for l in &lowers {
            fs::create_dir(l).unwrap();
        }
        let upper = root.path().join("upper");
        let work = root.path().join("work");
        let mnt = root.path().join("mnt");
        for d in [&upper, &work, &mnt] {
            fs::create_dir(d).unwrap();
        }
        // Layer roots are 0755 root:root regardless of the umask.
        for d in lowers.iter().chain([&upper]) {
            chmod(d, 0o755).unwrap();
        }
        Stack {
            root,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    /// Path inside lower layer `i` (0 = top-most lower).
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        join(&self.lowers[i], rel)
    }

    /// Path inside the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        join(&self.upper, rel)
    }

    /// Mount with the selected backend (layerfs by default).
    pub fn mount(&self) -> Mount {
        self.mount_opts(&[])
    }

    /// Mount with extra options (`redirect_dir=off`, ...).
    pub fn mount_opts(&self, opts: &[&str]) -> Mount {
        match backend() {
            Backend::Layerfs => self.mount_layerfs(opts, true),
            Backend::Kernel => self.mount_kernel(opts, true),
        }
    }

    /// Read-only mount: lowers only, no upperdir.
    pub fn mount_ro(&self) -> Mount {
        match backend() {
            Backend::Layerfs => self.mount_layerfs(&[], false),
            Backend::Kernel => self.mount_kernel(&[], false),
        }
    }

    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn mount_layerfs(&self, opts: &[&str], with_upper: bool) -> Mount {
        self.mount_program(&layerfs_bin(), opts, with_upper)
    }

    /// Mount with any fuse-overlayfs compatible program (`/usr/bin/fuse-overlayfs` for the
    /// tests that compare the two).
    pub fn mount_program(&self, bin: &Path, opts: &[&str], with_upper: bool) -> Mount {
        let mut o = format!("lowerdir={}", self.lowerdir());
        if with_upper {
            o += &format!(
                ",upperdir={},workdir={}",
                self.upper.display(),
                self.work.display()
            );
        }
        for x in opts {
            o += ",";
            o += x;
        }
        let out = Command::new(bin)
            .arg("-o")
            .arg(&o)
            .arg(&self.mnt)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{} -o {o} {} failed: {:?}\nstdout: {}\nstderr: {}",
            bin.display(),
            self.mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&self.mnt),
            "{} returned success but {} is not a mount point",
            bin.display(),
            self.mnt.display()
        );
        Mount {
            path: self.mnt.clone(),
            backend: Backend::Layerfs,
            mounted: true,
        }
    }

    pub fn mount_kernel(&self, opts: &[&str], with_upper: bool) -> Mount {
        let mut o = format!("lowerdir={}", self.lowerdir());
        if with_upper {
            o += &format!(
                ",upperdir={},workdir={}",
                self.upper.display(),
                self.work.display()
            );
            // The reference configuration: what layerfs promises by default.
            let mut redirect = "redirect_dir=on";
            for x in opts {
                if x.starts_with("redirect_dir=") {
                    redirect = x;
                }
            }
            o += ",index=on,metacopy=off,";
            o += redirect;
        }
        for x in opts {
            if !x.starts_with("redirect_dir=") {
                o += ",";
                o += x;
            }
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(&self.mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay -o {o} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            path: self.mnt.clone(),
            backend: Backend::Kernel,
            mounted: true,
        }
    }

    /// A read-only kernel overlayfs mount of the lowers with exactly `opts` added
    /// (`redirect_dir=follow`, say; `mount_kernel` picks its own redirect_dir).
    pub fn mount_kernel_lowers(&self, opts: &[&str]) -> Mount {
        let mut o = format!("lowerdir={}", self.lowerdir());
        for x in opts {
            o += ",";
            o += x;
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(&self.mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay -o {o} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            path: self.mnt.clone(),
            backend: Backend::Kernel,
            mounted: true,
        }
    }

    /// A mount already made by the caller (a foreground daemon, say), unmounted like
    /// the others.
    pub fn adopt_mount(&self, backend: Backend) -> Mount {
        Mount {
            path: self.mnt.clone(),
            backend,
            mounted: true,
        }
    }

    /// Empties workdir of whatever the previous mount left that is not ours to check
    /// (kernel overlayfs keeps `work/work` and `work/index`).
    pub fn work_entries(&self) -> Vec<String> {
        let mut names = Vec::new();
        walk_names(&self.work, "", &mut names);
        names
    }
}

fn walk_names(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(name.clone());
        if is_dir {
            walk_names(&e.path(), &format!("{name}/"), out);
        }
    }
}

pub fn join(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() || rel == "." {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = layerfs::sys::mountinfo::own().unwrap();
    mounts.iter().any(|m| m.point == canon)
}

/// A mounted union. Dropping it always unmounts (lazily if something is still busy).
pub struct Mount {
    pub path: PathBuf,
    pub backend: Backend,
    mounted: bool,
}

impl Mount {
    pub fn p(&self, rel: &str) -> PathBuf {
        join(&self.path, rel)
    }

    /// Unmount and check it worked; waits for a FUSE daemon serving it to exit.
    pub fn unmount(mut self) {
        self.mounted = false;
        // The kernel lets go of a just-closed file a moment after close() returns, and
        // until then the mount is busy: retry for a bounded time, then fail loudly.
        let mut ok = false;
        for _ in 0..50 {
            ok = match self.backend {
                Backend::Layerfs => run_quiet("fusermount3", &["-u"], &self.path),
                Backend::Kernel => run_quiet("umount", &[], &self.path),
            };
            if ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            ok,
            "unmount of {} failed (still busy after 5 s)",
            self.path.display()
        );
        assert!(
            !is_mounted(&self.path),
            "{} still mounted",
            self.path.display()
        );
        if self.backend == Backend::Layerfs {
            wait_daemon_gone(&self.path);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        match self.backend {
            Backend::Layerfs => {
                if !run_quiet("fusermount3", &["-u"], &self.path) {
                    run_quiet("fusermount3", &["-uz"], &self.path);
                }
                wait_daemon_gone(&self.path);
            }
            Backend::Kernel => {
                if !run_quiet("umount", &[], &self.path) {
                    run_quiet("umount", &["-l"], &self.path);
                }
            }
        }
    }
}

fn run_quiet(cmd: &str, args: &[&str], path: &Path) -> bool {
    Command::new(cmd)
        .args(args)
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// After an unmount the daemon finishes its last requests and exits; wait for the
/// process whose command line names this mount point to go, so a remount of the same
/// layers never races the old daemon. Not an assertion on speed: a generous bound only
/// keeps a wedged daemon from hanging the suite forever.
fn wait_daemon_gone(mnt: &Path) {
    let needle = mnt.as_os_str().as_bytes().to_vec();
    for _ in 0..6000 {
        if !daemon_running(&needle) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("daemon for {} did not exit after unmount", mnt.display());
}

fn daemon_running(needle: &[u8]) -> bool {
    let me = std::process::id().to_string();
    let Ok(rd) = fs::read_dir("/proc") else {
        return false;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|arg| arg == needle) {
            // Zombies have an empty cmdline, so a match is a live process.
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Building layers
// ---------------------------------------------------------------------------

/// Create a file (and its parent dirs) with `content`.
pub fn put(path: impl AsRef<Path>, content: &[u8]) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn mkdirs(path: impl AsRef<Path>) {
    fs::create_dir_all(path.as_ref()).unwrap();
}

/// Kernel overlayfs encoding: a character device 0:0 named NAME.
pub fn whiteout_chardev(dir: impl AsRef<Path>, name: &str) {
    mkdirs(dir.as_ref());
    mknod(dir.as_ref().join(name), libc::S_IFCHR, 0, 0).unwrap();
}

/// OCI/AUFS encoding: an empty file `.wh.NAME`.
pub fn whiteout_file(dir: impl AsRef<Path>, name: &str) {
    put(dir.as_ref().join(format!(".wh.{name}")), b"");
}

pub fn opaque_trusted(dir: impl AsRef<Path>) {
    mkdirs(dir.as_ref());
    lsetxattr(dir.as_ref(), "trusted.overlay.opaque", b"y").unwrap();
}

pub fn opaque_user(dir: impl AsRef<Path>) {
    mkdirs(dir.as_ref());
    lsetxattr(dir.as_ref(), "user.overlay.opaque", b"y").unwrap();
}

pub fn opaque_file(dir: impl AsRef<Path>) {
    put(dir.as_ref().join(".wh..wh..opq"), b"");
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    fs::read(path.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

pub fn read_str(path: impl AsRef<Path>) -> String {
    String::from_utf8(read(path)).unwrap()
}

pub fn exists(path: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(path.as_ref()).is_ok()
}

pub fn lstat(path: impl AsRef<Path>) -> fs::Metadata {
    fs::symlink_metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.as_ref().display()))
}

/// Sorted names in a directory (no `.`/`..`).
pub fn ls(path: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path.as_ref())
        .unwrap_or_else(|e| panic!("readdir {}: {e}", path.as_ref().display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts that a finished command succeeded; its stderr is the failure message.
#[track_caller]
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn errno_of<T>(r: &io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32) {
    match r {
        Ok(v) => panic!("expected errno {errno}, got success {v:?}"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "expected errno {errno}, got {e}"
        ),
    }
}

// ---------------------------------------------------------------------------
// Raw syscalls std lacks
// ---------------------------------------------------------------------------

pub fn cstr(p: impl AsRef<OsStr>) -> CString {
    CString::new(p.as_ref().as_bytes()).unwrap()
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_size(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

pub fn mknod(
    path: impl AsRef<Path>,
    kind: libc::mode_t,
    perm: libc::mode_t,
    dev: u64,
) -> io::Result<()> {
    let c = cstr(path.as_ref());
    // SAFETY: c is a valid NUL-terminated path.
    check(unsafe { libc::mknod(c.as_ptr(), kind | perm, dev as libc::dev_t) })
}

pub fn mkdir(path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(path.as_ref());
    // SAFETY: c is a valid NUL-terminated path.
    check(unsafe { libc::mkdir(c.as_ptr(), mode) })
}

pub fn chmod(path: impl AsRef<Path>, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(path.as_ref());
    // SAFETY: c is a valid NUL-terminated path.
    check(unsafe { libc::chmod(c.as_ptr(), mode) })
}

pub fn lchown(path: impl AsRef<Path>, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(path.as_ref());
    // SAFETY: c is a valid NUL-terminated path.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(mask) }
}

/// utimensat without following symlinks; `None` means UTIME_OMIT, `Some((0, UTIME_NOW))`
/// means now.
pub fn utimens(
    path: impl AsRef<Path>,
    atime: Option<(i64, i64)>,
    mtime: Option<(i64, i64)>,
) -> io::Result<()> {
    let ts = |t: Option<(i64, i64)>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some((s, ns)) => libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: ns as libc::c_long,
        },
    };
    let times = [ts(atime), ts(mtime)];
    let c = cstr(path.as_ref());
    // SAFETY: valid path and a 2-element timespec array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub const NOW: Option<(i64, i64)> = Some((0, libc::UTIME_NOW));

pub fn renameat2(from: impl AsRef<Path>, to: impl AsRef<Path>, flags: u32) -> io::Result<()> {
    let a = cstr(from.as_ref());
    let b = cstr(to.as_ref());
    // SAFETY: valid paths; renameat2 via raw syscall for portability across libcs.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags as libc::c_uint,
        )
    };
    check(r as libc::c_int)
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
    let c = cstr(path.as_ref());
    let n = cstr(name);
    // SAFETY: valid path/name; value pointer and length describe a live slice.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
}

pub fn lgetxattr(path: impl AsRef<Path>, name: &str) -> io::Result<Vec<u8>> {
    let c = cstr(path.as_ref());
    let n = cstr(name);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid path/name; buf is writable for its length.
    let len = check_size(unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    })?;
    buf.truncate(len);
    Ok(buf)
}

/// An xattr's value as text, or None when it is not set (or cannot be read).
pub fn lgetxattr_str(path: impl AsRef<Path>, name: &str) -> Option<String> {
    lgetxattr(path, name)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

pub fn llistxattr(path: impl AsRef<Path>) -> io::Result<Vec<String>> {
    let c = cstr(path.as_ref());
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid path; buf is writable for its length.
    let len = check_size(unsafe {
        libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
    })?;
    buf.truncate(len);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn lremovexattr(path: impl AsRef<Path>, name: &str) -> io::Result<()> {
    let c = cstr(path.as_ref());
    let n = cstr(name);
    // SAFETY: valid path/name.
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

pub fn fallocate(f: &fs::File, mode: i32, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: f is an open file descriptor.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
}

pub fn lseek(f: &fs::File, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: f is an open file descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn copy_file_range(
    src: &fs::File,
    soff: i64,
    dst: &fs::File,
    doff: i64,
    len: usize,
) -> io::Result<usize> {
    let mut so = soff as libc::loff_t;
    let mut d = doff as libc::loff_t;
    // SAFETY: both fds are open; offsets are valid pointers to locals.
    check_size(unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d, len, 0)
    } as isize)
}

pub fn statvfs(path: impl AsRef<Path>) -> libc::statvfs {
    let c = cstr(path.as_ref());
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    check(unsafe { libc::statvfs(c.as_ptr(), &mut s) }).unwrap();
    s
}

pub fn access(path: impl AsRef<Path>, mode: i32) -> io::Result<()> {
    let c = cstr(path.as_ref());
    // SAFETY: valid path.
    check(unsafe { libc::access(c.as_ptr(), mode) })
}

/// fcntl with a flock struct (F_SETLK, F_GETLK, F_OFD_SETLK, F_OFD_GETLK...).
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

pub fn fstat(f: &fs::File) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: f is open; st is valid.
    check(unsafe { libc::fstat(f.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// Run a shell command as an unprivileged user (65534) and return its exit status.
pub fn as_nobody(script: &str) -> i32 {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "sh",
            "-c",
            script,
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run setpriv")
        .code()
        .unwrap_or(-1)
}

// ---------------------------------------------------------------------------
// Tree snapshot
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' dir, 'l' symlink, 'c' char dev, 'b' block dev, 'p' fifo, 's' socket
    pub kind: char,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub target: Option<String>,
    pub rdev: u64,
    pub nlink: u64,
    /// Xattrs except the overlay's own (`trusted.overlay.*`, `user.overlay.*`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub ino: u64,
    pub mtime: (i64, i64),
}

pub type Snapshot = BTreeMap<String, Entry>;

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind_of(ft: fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        'f'
    }
}

pub fn entry(path: &Path) -> Entry {
    let md = lstat(path);
    let kind = kind_of(md.file_type());
    let sha256 = if kind == 'f' {
        let mut f = fs::File::open(path).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        Some(sha256_hex(&buf))
    } else {
        None
    };
    let target = if kind == 'l' {
        Some(fs::read_link(path).unwrap().to_string_lossy().into_owned())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    for name in llistxattr(path).unwrap_or_default() {
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        if let Ok(v) = lgetxattr(path, &name) {
            xattrs.insert(name, v);
        }
    }
    Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        sha256,
        target,
        rdev: if kind == 'c' || kind == 'b' {
            md.rdev()
        } else {
            0
        },
        nlink: md.nlink(),
        xattrs,
        ino: md.ino(),
        mtime: (md.mtime(), md.mtime_nsec()),
    }
}

/// Every entry below `root` (root itself as ""), keyed by relative path.
pub fn snapshot(root: impl AsRef<Path>) -> Snapshot {
    let mut out = BTreeMap::new();
    out.insert(String::new(), entry(root.as_ref()));
    snap_dir(root.as_ref(), "", &mut out);
    out
}

fn snap_dir(dir: &Path, prefix: &str, out: &mut Snapshot) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = format!("{prefix}{}", n.to_string_lossy());
        let e = entry(&p);
        let is_dir = e.kind == 'd';
        out.insert(rel.clone(), e);
        if is_dir {
            snap_dir(&p, &format!("{rel}/"), out);
        }
    }
}

/// Every name under `root` (as "KIND PATH", sorted), KIND a type letter: `d`, `l`, `p`,
/// `f` (anything else), or `c<major>:<minor>` for a character device.
pub fn type_tree(root: impl AsRef<Path>) -> Vec<String> {
    let mut out: Vec<String> = snapshot(root)
        .into_iter()
        .filter(|(rel, _)| !rel.is_empty())
        .map(|(rel, e)| match e.kind {
            'c' => {
                let (major, minor) = (libc::major(e.rdev), libc::minor(e.rdev));
                format!("c{major}:{minor} {rel}")
            }
            'd' | 'l' | 'p' => format!("{} {rel}", e.kind),
            _ => format!("f {rel}"),
        })
        .collect();
    out.sort();
    out
}

/// Drop what legitimately differs between two mounts of the same tree: inode numbers,
/// times, directory sizes and directory link counts (kernel overlayfs reports 1 for a
/// merged directory).
pub fn comparable(s: &Snapshot) -> Snapshot {
    s.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            e.ino = 0;
            e.mtime = (0, 0);
            if e.kind == 'd' {
                e.size = 0;
                e.nlink = 0;
            }
            (k.clone(), e)
        })
        .collect()
}

/// Human-readable diff of two snapshots (empty when equal).
pub fn diff(a: &Snapshot, b: &Snapshot, an: &str, bn: &str) -> String {
    let mut s = String::new();
    for (k, e) in a {
        match b.get(k) {
            None => s += &format!("only in {an}: {k:?} {e:?}\n"),
            Some(f) if f != e => s += &format!("differs {k:?}:\n  {an}: {e:?}\n  {bn}: {f:?}\n"),
            _ => {}
        }
    }
    for (k, e) in b {
        if !a.contains_key(k) {
            s += &format!("only in {bn}: {k:?} {e:?}\n");
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Hang detection
// ---------------------------------------------------------------------------

/// Fails a test loudly when it stops making progress: a FUSE request that never gets an
/// answer cannot be cancelled from the blocked thread, so a helper thread watches a
/// heartbeat and, after `timeout` without one, prints what was running and exits the
/// whole test process (status 3). Only catches hangs; never a timing assertion.
pub struct Watchdog {
    state: std::sync::Arc<(
        std::sync::Mutex<(std::time::Instant, String)>,
        std::sync::atomic::AtomicBool,
    )>,
}

impl Watchdog {
    pub fn new(label: &str, timeout: std::time::Duration) -> Watchdog {
        let state = std::sync::Arc::new((
            std::sync::Mutex::new((std::time::Instant::now(), String::from("start"))),
            std::sync::atomic::AtomicBool::new(false),
        ));
        let s = state.clone();
        let label = label.to_string();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            if s.1.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let (last, what) = s.0.lock().unwrap().clone();
            if last.elapsed() > timeout {
                eprintln!(
                    "HANG in {label}: no progress for {:?} while: {what}\n(a FUSE request never got an answer, or the daemon deadlocked)",
                    last.elapsed()
                );
                std::process::exit(3);
            }
        });
        Watchdog { state }
    }

    /// Records progress; `what` is printed if the next step hangs.
    pub fn beat(&self, what: &str) {
        let mut g = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        *g = (std::time::Instant::now(), what.to_string());
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state
            .1
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Process ids of daemons whose command line names `mnt` (the test process excluded).
pub fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let needle = mnt.as_os_str().as_bytes();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|arg| arg == needle) {
            out.push(pid);
        }
    }
    out
}

/// The one daemon serving `mnt`; panics unless exactly one is found.
pub fn daemon_pid(mnt: &Path) -> i32 {
    let pids = daemon_pids(mnt);
    assert_eq!(
        pids.len(),
        1,
        "expected one daemon for {}, found {pids:?}",
        mnt.display()
    );
    pids[0]
}

/// SIGKILL a process and wait until it is gone (reaped by whoever owns it, or a zombie).
pub fn kill9(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}: {}", io::Error::last_os_error());
    for _ in 0..6000 {
        let gone = match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('Z'))
                .unwrap_or(true),
        };
        if gone {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} survived SIGKILL");
}

/// VmRSS in kB and the number of open fds of a process.
pub fn rss_and_fds(pid: i32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss, fds)
}

impl Mount {
    /// For a mount whose daemon is dead: detach the stale mount point (fusermount3 -u
    /// works on a dead FUSE connection).
    pub fn clear_stale(mut self) {
        self.mounted = false;
        if !run_quiet("fusermount3", &["-u"], &self.path) {
            assert!(
                run_quiet("fusermount3", &["-uz"], &self.path),
                "cannot detach stale mount {}",
                self.path.display()
            );
        }
        assert!(
            !is_mounted(&self.path),
            "{} still mounted",
            self.path.display()
        );
    }
}

/// Starts the copy-up of a 512 MiB lower file (`printf x >>` it) and, while it runs, stats
/// 50 other files; asserts those were answered before the copy-up ended. With `cpu`, both
/// run pinned to that CPU (one FUSE over io_uring queue).
pub fn lookups_during_a_large_copy_up(cpu: Option<usize>) {
    let s = Stack::new(1);
    let big = vec![7u8; 512 << 20];
    put(s.l(0, "big"), &big);
    let names: Vec<String> = (0..50).map(|i| format!("n{i:02}")).collect();
    for n in &names {
        put(s.l(0, n), b"small");
    }
    let m = s.mount_layerfs(&[], true);
    let pinned = |argv: &[&str]| {
        let mut c = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        c.stdin(std::process::Stdio::null());
        c
    };
    let mut copy = pinned(&["sh", "-c", "printf x >> \"$0\""])
        .arg(m.path.join("big"))
        .spawn()
        .unwrap();
    // The copy-up is under way once its file appears in the work directory.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let in_progress = |s: &Stack| {
        s.work_entries()
            .iter()
            .any(|n| !n.starts_with("index") && s.work.join(n).is_file())
    };
    while !in_progress(&s) {
        assert!(
            copy.try_wait().unwrap().is_none(),
            "the copy-up ended before it was seen in the work directory"
        );
        assert!(std::time::Instant::now() < deadline, "no copy-up started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let out = pinned(&["stat", "-c", "%n %s"])
        .args(names.iter().map(|n| m.path.join(n)))
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        names.len()
    );
    assert!(
        copy.try_wait().unwrap().is_none(),
        "50 lookups made during a 512 MiB copy-up were answered only after it (cpu {cpu:?})"
    );
    assert!(copy.wait().unwrap().success());
    assert_eq!(
        fs::metadata(s.u("big")).unwrap().len(),
        big.len() as u64 + 1
    );
    assert_eq!(fs::metadata(s.l(0, "big")).unwrap().len(), big.len() as u64);
    m.unmount();
}
