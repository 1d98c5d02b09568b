//! Starting and watching the daemon under test: a layerfs (or any fuse-overlayfs
//! compatible program's) mount of a [`Stack`], waiting for its process to go after an
//! unmount, finding, killing and measuring it, and the copy-up scenario two transports share.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use super::{assert_success, is_mounted, layerfs_bin, put, Backend, Mount, Stack};

impl Stack {
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
        Mount::mounted(self.mnt.clone(), Backend::Layerfs)
    }
}

/// After an unmount the daemon finishes its last requests and exits; wait for the
/// process whose command line names this mount point to go, so a remount of the same
/// layers never races the old daemon. Not an assertion on speed: a generous bound only
/// keeps a wedged daemon from hanging the suite forever.
pub(super) fn wait_daemon_gone(mnt: &Path) {
    for _ in 0..6000 {
        if daemon_pids(mnt).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("daemon for {} did not exit after unmount", mnt.display());
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
