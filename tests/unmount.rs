//! The daemon exits once its file system is unmounted, also when the unmount comes while
//! requests are still in flight, and it keeps serving as long as any mount namespace still
//! holds a copy of the mount.
//!
//! The second point explains the rare "daemon did not exit after unmount" of long fuzz
//! runs: a mount namespace created anywhere on the host while a test mount exists
//! (`unshare -m`, a rootless podman pause process, a runtime test running in parallel)
//! gets its own copy of that mount. Where `/` is a private mount, `fusermount3 -u` removes
//! only the caller's copy; the kernel keeps the FUSE connection up while any copy lives, so
//! the daemon is rightly still serving. It exits when the last copy goes.
//!
//! Each test therefore runs in a thread with a private mount namespace of its own, which
//! no namespace created elsewhere can copy its mounts from.

mod common;
use common::*;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Bound on the daemon's exit after its mount is gone. Only catches a hang: it normally
/// takes milliseconds.
const EXIT_BOUND: Duration = Duration::from_secs(30);

/// Runs `f` in a new thread that has a private mount namespace of its own; processes the
/// thread starts (the daemon, fusermount3) and threads it starts share it.
fn in_private_mount_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    require_mount_privileges();
    let handle = thread::spawn(move || {
        // SAFETY: unshare only detaches the calling thread's mount namespace (and fs
        // context); no pointer is involved.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        );
        let root = CString::new("/").unwrap();
        // SAFETY: `root` is a valid C string; null source, type and data are allowed when
        // only changing propagation.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "make / rprivate: {}",
            std::io::Error::last_os_error()
        );
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The mount table of the calling thread's namespace (/proc/self shows the main thread's).
fn mounted_here(mnt: &Path) -> bool {
    let table = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let want = mnt.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

fn alive(pid: i32) -> bool {
    // A zombie has an empty command line: it has exited.
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

struct Layers {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Layers {
    fn new() -> Layers {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-unmount-")
            .tempdir_in(tmp_base())
            .unwrap();
        // Canonical, so that it matches mountinfo and the daemon's command line.
        let root = fs::canonicalize(dir.path()).unwrap();
        for d in ["lower", "upper", "work", "mnt"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        for i in 0..3 {
            for j in (0..8).step_by(2) {
                put(root.join(format!("lower/d{i}/f{j}")), b"lower file");
            }
        }
        for i in 0..16 {
            put(root.join(format!("lower/big/l{i}")), &vec![b'L'; i * 4096]);
        }
        Layers { _dir: dir, root }
    }

    fn mnt(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// Mounts through the background daemon; returns its pid and the mount's device.
    fn mount(&self) -> (i32, u64) {
        let r = |d: &str| self.root.join(d).to_str().unwrap().to_string();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            r("lower"),
            r("upper"),
            r("work")
        );
        let status = Command::new(layerfs_bin())
            .args(["-o", &opts])
            .arg(self.mnt())
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "layerfs failed: {status}");
        assert!(
            mounted_here(&self.mnt()),
            "not mounted after layerfs returned"
        );
        let dev = fs::metadata(self.mnt()).unwrap().dev();
        (daemon_pid(&self.mnt()), dev)
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        let mnt = self.mnt();
        if mounted_here(&mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&mnt)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `fusermount3 -u`, retried while the mount is busy (files open in the workers); after
/// `patience` the workers are told to stop, so that their files close.
fn unmount(mnt: &Path, stop: &AtomicBool, patience: Duration) {
    let start = Instant::now();
    loop {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .output()
            .unwrap();
        if out.status.success() {
            assert!(
                !mounted_here(mnt),
                "fusermount3 -u succeeded, still mounted"
            );
            return;
        }
        if start.elapsed() > patience {
            stop.store(true, Ordering::Relaxed);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fusermount3 -u {} kept failing: {}",
            mnt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Everything that tells why daemon `pid` is still running: its threads' stacks, and the
/// processes whose mount namespace still holds the FUSE mount (device `dev`).
fn diagnose(pid: i32, dev: u64) -> String {
    let mut out = String::new();
    let majmin = format!("{}:{}", libc::major(dev), libc::minor(dev));
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(table) = fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        if table.lines().any(|l| l.split(' ').nth(2) == Some(&majmin)) {
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            out += &format!("mount {majmin} still in the namespace of pid {p}: {cmd}\n");
        }
    }
    match Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output()
    {
        Ok(o) => out += &String::from_utf8_lossy(&o.stdout),
        Err(e) => out += &format!("(no gdb: {e})\n"),
    }
    out
}

fn wait_exit(pid: i32, dev: u64, what: &str) {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > EXIT_BOUND {
            panic!(
                "HANG: daemon {pid} still running {EXIT_BOUND:?} after {what}\n{}",
                diagnose(pid, dev)
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Mixed operations until `stop` or the mount goes away. With `open_files` the worker
/// also reads and writes through open files (which keep the mount busy); without, it only
/// makes requests by path, which an unmount does not wait for.
fn worker(mnt: PathBuf, stop: Arc<AtomicBool>, seed: u64, open_files: bool) {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    while !stop.load(Ordering::Relaxed) {
        let a = mnt.join(format!("d{}/f{}", next(3), next(8)));
        let b = mnt.join(format!("d{}/f{}", next(3), next(8)));
        let big = mnt.join(format!("big/l{}", next(16)));
        let op = if open_files { next(13) } else { next(7) };
        let r: std::io::Result<()> = match op {
            0 => fs::rename(&a, &b),
            1 => fs::remove_file(&a),
            2 => fs::create_dir(mnt.join(format!("d{}/sub{}", next(3), next(3)))),
            3 => fs::remove_dir(mnt.join(format!("d{}/sub{}", next(3), next(3)))),
            4 => fs::rename(
                mnt.join(format!("d{}", next(3))),
                mnt.join(format!("d{}", next(3))),
            ),
            5 => fs::hard_link(&a, &b),
            // A metadata change copies a lower file up.
            6 => fs::set_permissions(&big, fs::Permissions::from_mode(0o600 | next(0o100) as u32))
                .and_then(|_| fs::symlink_metadata(&b).map(drop)),
            7 => fs::write(&a, vec![b'w'; 1 + next(70_000) as usize]),
            8 => fs::read_dir(mnt.join(format!("d{}", next(3)))).map(|rd| {
                for e in rd.flatten() {
                    let _ = e.metadata();
                }
            }),
            9 | 10 => (|| {
                // Open, unlink, then write and read through the orphan.
                let mut f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&a)?;
                fs::remove_file(&a)?;
                f.write_all(&vec![b'o'; 1 + next(9000) as usize])?;
                f.sync_data()?;
                f.metadata().map(drop)
            })(),
            11 => fs::read(&big).map(drop),
            _ => fs::OpenOptions::new()
                .append(true)
                .open(&big)
                .and_then(|mut f| f.write_all(b"copied up")),
        };
        if let Err(e) = r {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                return;
            }
        }
    }
}

#[test]
fn daemon_exits_when_unmounted_with_requests_in_flight() {
    in_private_mount_namespace(|| {
        for round in 0..12u64 {
            let layers = Layers::new();
            let mnt = layers.mnt();
            let (pid, dev) = layers.mount();
            // Two workers with open files, two by path only.
            let stop_files = Arc::new(AtomicBool::new(false));
            let stop_paths = Arc::new(AtomicBool::new(false));
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let mnt = mnt.clone();
                    let open_files = t < 2;
                    let stop = if open_files { &stop_files } else { &stop_paths }.clone();
                    thread::spawn(move || worker(mnt, stop, round * 16 + t + 1, open_files))
                })
                .collect();
            thread::sleep(Duration::from_millis(20 + 25 * (round % 5)));
            if round % 4 == 0 {
                // Right after a burst rather than during it.
                stop_files.store(true, Ordering::Relaxed);
                stop_paths.store(true, Ordering::Relaxed);
            }
            // The workers with open files keep the mount busy; the unmount succeeds once
            // they let go (or are told to), while the others' requests are in flight. Those
            // then work on the bare mount point directory.
            unmount(&mnt, &stop_files, Duration::from_millis(100));
            stop_paths.store(true, Ordering::Relaxed);
            wait_exit(pid, dev, &format!("fusermount3 -u (round {round})"));
            for w in workers {
                w.join().unwrap();
            }
        }
    });
}

/// Starts a process in a mount namespace of its own, copied from this thread's with the
/// mount of device `dev` in it; it lives until its stdin closes.
// The caller waits for the child it gets back.
#[allow(clippy::zombie_processes)]
fn namespace_holding(dev: u64) -> std::process::Child {
    let mut holder = Command::new("unshare")
        .args(["-m", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run unshare");
    let pid = holder.id();
    let majmin = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let start = Instant::now();
    loop {
        let own_ns = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
            != fs::read_link("/proc/thread-self/ns/mnt").ok();
        let table = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        if own_ns && table.lines().any(|l| l.split(' ').nth(2) == Some(&majmin)) {
            return holder;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("unshare -m never held the mount");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn daemon_serves_until_the_last_namespace_copy_is_unmounted() {
    in_private_mount_namespace(|| {
        let layers = Layers::new();
        let mnt = layers.mnt();
        let (pid, dev) = layers.mount();
        fs::write(mnt.join("d0/f0"), b"written before").unwrap();
        let mut holder = namespace_holding(dev);

        unmount(&mnt, &AtomicBool::new(true), Duration::ZERO);
        // Gone here, but the copy keeps the connection up: the daemon must go on serving it.
        thread::sleep(Duration::from_millis(300));
        assert!(
            alive(pid),
            "the daemon exited while a copy of its mount was in use"
        );
        let through_copy = format!("/proc/{}/root{}/d0/f0", holder.id(), mnt.display());
        assert_eq!(fs::read(&through_copy).unwrap(), b"written before");

        // The namespace goes with its last process; so does the last copy of the mount.
        drop(holder.stdin.take());
        holder.wait().unwrap();
        wait_exit(pid, dev, "the last mount namespace holding it went away");
    });
}

/// SIGTERM stops a daemon whose mount is gone here but copied elsewhere (it used to find
/// nothing to unmount and go on serving, and only SIGKILL ended it).
#[test]
fn sigterm_stops_a_daemon_unmounted_here_but_held_elsewhere() {
    in_private_mount_namespace(|| {
        let layers = Layers::new();
        let mnt = layers.mnt();
        let (pid, dev) = layers.mount();
        let mut holder = namespace_holding(dev);
        unmount(&mnt, &AtomicBool::new(true), Duration::ZERO);
        // SAFETY: kill with a pid this test started and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        wait_exit(pid, dev, "SIGTERM");
        let through_copy = format!("/proc/{}/root{}/d0/f0", holder.id(), mnt.display());
        let err = fs::read(&through_copy).unwrap_err();
        // ECONNABORTED when the request was already queued as the connection went;
        // ECANCELED when it was handed to an io_uring queue whose thread had just exited.
        assert!(
            [
                Some(libc::ENOTCONN),
                Some(libc::ECONNABORTED),
                Some(libc::ECANCELED)
            ]
            .contains(&err.raw_os_error()),
            "{err}"
        );
        drop(holder.stdin.take());
        holder.wait().unwrap();
    });
}
