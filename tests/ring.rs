//! FUSE over io_uring (src/ring.rs): when the fuse module offers it (`enable_uring`),
//! requests are served by the per-CPU ring threads and not by the `/dev/fuse` workers;
//! with `io_uring=off`, or the module parameter off, everything goes through `/dev/fuse`.
//!
//! While requests keep coming, queue threads look for the next one without sleeping
//! (`io_uring_poll`); with `io_uring_poll=0` each request costs its thread one sleep.
//!
//! One test function: it sets the module parameter, which the mounts of other tests in
//! this binary would see too. It puts the parameter back as it found it.

mod common;

use std::fs;
use std::path::Path;

use common::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Sets `enable_uring` for as long as it lives, then restores the old value.
struct UringParam(String);

impl UringParam {
    fn set(value: &str) -> UringParam {
        let old = fs::read_to_string(ENABLE_URING).unwrap_or_else(|e| {
            panic!(
                "{ENABLE_URING}: {e}: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)"
            )
        });
        fs::write(ENABLE_URING, value).unwrap_or_else(|e| panic!("writing {ENABLE_URING}: {e}"));
        UringParam(old.trim().to_string())
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        let _ = fs::write(ENABLE_URING, &self.0);
    }
}

/// Voluntary context switches of the daemon's threads, by thread name: each request a
/// thread answers costs it one when it sleeps waiting for the next.
fn switches(pid: i32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = fs::read_to_string(t.join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        out.push((name.trim().to_string(), n));
    }
    out
}

fn total(s: &[(String, u64)], ring: bool) -> u64 {
    s.iter()
        .filter(|(n, _)| n.starts_with("layerfs-ring") == ring && (ring || n.starts_with("fuser")))
        .map(|(_, v)| v)
        .sum()
}

fn possible_cpus() -> usize {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let last = text.trim().split(',').next_back().unwrap();
    last.rsplit('-').next().unwrap().parse::<usize>().unwrap() + 1
}

/// Asks for `n` names that do not exist: `n` LOOKUP requests (each name is new).
fn lookups(m: &Path, n: usize) {
    for i in 0..n {
        assert!(fs::symlink_metadata(m.join(format!("missing-{i}"))).is_err());
    }
}

/// Some of everything, so each request kind is answered over the transport in use.
fn exercise(m: &Path) {
    put(m.join("new"), b"fresh");
    assert_eq!(read(m.join("f")), b"lower");
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("f"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .unwrap();
    assert_eq!(read(m.join("f")), b"lower+");
    fs::create_dir(m.join("d/sub")).unwrap();
    fs::rename(m.join("new"), m.join("d/sub/moved")).unwrap();
    std::os::unix::fs::symlink("target", m.join("link")).unwrap();
    assert_eq!(fs::read_link(m.join("link")).unwrap(), Path::new("target"));
    xattr_set(&m.join("f"), "user.k", b"v");
    assert_eq!(ls(m.join("d")), vec!["sub".to_string(), "x".to_string()]);
    fs::remove_file(m.join("d/x")).unwrap();
    assert_eq!(ls(m.join("d")), vec!["sub".to_string()]);
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    let out = std::process::Command::new("setfattr")
        .args(["-n", name, "-v"])
        .arg(String::from_utf8_lossy(value).as_ref())
        .arg(p)
        .output()
        .unwrap();
    assert_success(&out);
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(out.stdout, value);
}

fn stack() -> Stack {
    let s = Stack::new(1);
    put(s.l(0, "f"), b"lower");
    put(s.l(0, "d/x"), b"x");
    s
}

#[test]
fn requests_go_through_the_ring_when_the_kernel_offers_it() {
    require_mount_privileges();
    let param = UringParam::set("Y");

    // Offered and wanted, without polling: one ring thread per possible CPU serves the
    // requests, sleeping between them.
    let s = stack();
    let m = s.mount_layerfs(&["io_uring_poll=0"], true);
    let pid = daemon_pid(&m.path);
    // A thread takes its name once it runs, which may be just after the mount is up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let rings = |s: &[(String, u64)]| {
        s.iter()
            .filter(|(n, _)| n.starts_with("layerfs-ring"))
            .count()
    };
    while rings(&switches(pid)) < possible_cpus() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = switches(pid);
    assert_eq!(rings(&before), possible_cpus(), "ring threads: {before:?}");
    lookups(&m.path, 2000);
    exercise(&m.path);
    let after = switches(pid);
    let by_ring = total(&after, true) - total(&before, true);
    let by_dev = total(&after, false) - total(&before, false);
    assert!(
        by_ring >= 2000 && by_dev < 200,
        "2000 lookups: ring threads woke {by_ring} times, /dev/fuse workers {by_dev}"
    );
    m.unmount();
    assert_eq!(read(s.u("d/sub/moved")), b"fresh");
    assert_eq!(read(s.u("f")), b"lower+");

    // With polling (the default): the same requests, still not through /dev/fuse, and
    // the ring threads seldom sleep between requests that come one after another.
    let s = stack();
    let m = s.mount_layerfs(&[], true);
    let pid = daemon_pid(&m.path);
    let before = switches(pid);
    lookups(&m.path, 2000);
    let after = switches(pid);
    let by_ring = total(&after, true) - total(&before, true);
    let by_dev = total(&after, false) - total(&before, false);
    assert!(
        by_ring < 1000 && by_dev < 200,
        "2000 lookups with polling: ring threads slept {by_ring} times, /dev/fuse workers woke {by_dev}"
    );
    exercise(&m.path);
    m.unmount();
    assert_eq!(read(s.u("f")), b"lower+");

    slow_request_does_not_hold_up_its_queue();

    // io_uring=off: the /dev/fuse workers serve everything.
    let s = stack();
    let m = s.mount_layerfs(&["io_uring=off"], true);
    check_dev_fuse_only(&m.path);
    m.unmount();

    // Not offered by the kernel: the same, without being asked.
    drop(param);
    let _param = UringParam::set("N");
    let s = stack();
    let m = s.mount_layerfs(&[], true);
    check_dev_fuse_only(&m.path);
    m.unmount();
}

/// A copy-up of a large lower file is answered by a helper thread: other requests made on
/// the same CPU (same ring queue) are answered while it runs, not after it.
fn slow_request_does_not_hold_up_its_queue() {
    lookups_during_a_large_copy_up(Some(0));
}

fn check_dev_fuse_only(m: &Path) {
    let pid = daemon_pid(m);
    let before = switches(pid);
    assert!(
        before.iter().all(|(n, _)| !n.starts_with("layerfs-ring")),
        "ring threads without FUSE over io_uring: {before:?}"
    );
    exercise(m);
    let after = switches(pid);
    assert!(
        after.iter().all(|(n, _)| !n.starts_with("layerfs-ring")),
        "ring threads appeared: {after:?}"
    );
}
