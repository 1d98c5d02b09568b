//! Directory read-ahead (src/readahead.rs): a listing that had to wait for the disk sets
//! the daemon's read-ahead thread to work on the lower subdirectories, and what it read
//! answers exactly as the layers say; listings served from the cache never wake it, and
//! `readahead=off` runs no such thread. These tests drop the machine's caches.
mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

/// How many times the daemon's read-ahead thread has been switched in (the third field of
/// its schedstat), or `None` when it has no such thread.
fn reader_runs(pid: i32) -> Option<u64> {
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "layerfs-ahead" {
            let stat = fs::read_to_string(task.path().join("schedstat")).unwrap();
            let runs = stat
                .split_whitespace()
                .nth(2)
                .expect("schedstat has 3 fields");
            return Some(runs.parse().unwrap());
        }
    }
    None
}

/// `reader_runs` once the thread has gone to sleep: a thread just started may not have run
/// for the first time yet.
fn settled_runs(pid: i32) -> u64 {
    let mut last = reader_runs(pid).expect("the daemon runs a layerfs-ahead thread");
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let now = reader_runs(pid).expect("the daemon runs a layerfs-ahead thread");
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the read-ahead thread of {pid} never went to sleep");
}

fn drop_caches() {
    let ok = std::process::Command::new("sync")
        .status()
        .unwrap()
        .success();
    assert!(ok, "sync failed");
    fs::write("/proc/sys/vm/drop_caches", "3").expect("writing /proc/sys/vm/drop_caches");
}

/// `d/subNN/{fNN, inner/g}` in the bottom layer; the top layer adds to, deletes from and
/// hides one of those directories.
fn build(s: &Stack) {
    for i in 0..30 {
        for j in 0..30 {
            put(s.l(1, &format!("d/sub{i:02}/f{j:02}")), b"x");
        }
        put(s.l(1, &format!("d/sub{i:02}/inner/g")), b"g");
    }
    put(s.l(0, "d/sub00/top"), b"t");
    mkdirs(s.l(0, "d/sub01"));
    whiteout_chardev(s.l(0, "d/sub01"), "f00");
    whiteout_file(s.l(0, "d/sub01"), "f01");
    put(s.l(0, "d/sub02/only"), b"o");
    opaque_trusted(s.l(0, "d/sub02"));
}

fn assert_on_disk(path: &std::path::Path) {
    let c = common::cstr(path.as_os_str());
    // SAFETY: statfs is plain data; `c` is a valid C string and `st` a live local.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    assert_ne!(
        st.f_type,
        libc::TMPFS_MAGIC,
        "{} is on tmpfs, where nothing is ever read from a disk: set LAYERFS_TEST_TMPDIR \
         to a directory on a disk",
        path.display()
    );
}

#[test]
fn a_listing_that_reads_the_disk_reads_the_subdirectories_ahead() {
    require_mount_privileges();
    let s = Stack::new(2);
    build(&s);
    assert_on_disk(&s.l(1, ""));

    // Everything was just written: listings come from the cache and never wake the reader.
    let m = s.mount();
    let pid = daemon_pid(&m.path);
    let idle = settled_runs(pid);
    assert_eq!(ls(m.p("d")).len(), 30);
    for i in 0..30 {
        ls(m.p(&format!("d/sub{i:02}")));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        reader_runs(pid),
        Some(idle),
        "the read-ahead ran for listings served from the cache"
    );
    m.unmount();

    drop_caches();
    let m = s.mount();
    let pid = daemon_pid(&m.path);
    let idle = settled_runs(pid);
    assert_eq!(ls(m.p("d")).len(), 30);
    let until = Instant::now() + Duration::from_secs(10);
    while reader_runs(pid) == Some(idle) {
        assert!(
            Instant::now() < until,
            "listing d from a cold cache did not set the read-ahead to work"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give it time to read what it was given, then check what it read.
    std::thread::sleep(Duration::from_millis(200));
    let all: Vec<String> = (0..30).map(|j| format!("f{j:02}")).collect();
    let mut sub00 = all.clone();
    sub00.extend(["inner".to_string(), "top".to_string()]);
    sub00.sort();
    assert_eq!(ls(m.p("d/sub00")), sub00);
    let mut sub01 = all[2..].to_vec();
    sub01.push("inner".into());
    assert_eq!(ls(m.p("d/sub01")), sub01);
    assert_eq!(ls(m.p("d/sub02")), ["only"]);
    for i in 3..30 {
        let mut want = all.clone();
        want.push("inner".into());
        assert_eq!(ls(m.p(&format!("d/sub{i:02}"))), want, "d/sub{i:02}");
        assert_eq!(ls(m.p(&format!("d/sub{i:02}/inner"))), ["g"]);
    }
    m.unmount();
}

#[test]
fn readahead_off_runs_no_reader() {
    require_mount_privileges();
    let s = Stack::new(1);
    put(s.l(0, "a/b"), b"x");
    let m = s.mount_opts(&["readahead=off"]);
    assert_eq!(reader_runs(daemon_pid(&m.path)), None);
    assert_eq!(ls(m.p("a")), ["b"]);
    m.unmount();
}
