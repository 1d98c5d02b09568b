//! Modes: umask applied once, setgid dirs, sticky dirs, chmod/chown/truncate/utimens,
//! mknod of every type, access().
mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::Mutex;

/// umask is per process; tests in this file that depend on it take this lock.
static UMASK: Mutex<()> = Mutex::new(());

/// Every test here holds the lock so that none creates files while another has changed
/// the umask; under it the umask is the usual 022.
fn lock_umask() -> std::sync::MutexGuard<'static, ()> {
    let g = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    umask(0o022);
    g
}

fn mode(p: &std::path::Path) -> u32 {
    lstat(p).mode() & 0o7777
}

#[test]
fn umask_is_applied_once() {
    let _g = lock_umask();
    let s = Stack::new(1);
    mkdirs(s.l(0, "low"));
    let m = s.mount();
    let old = umask(0);
    let mut checks = Vec::new();
    for dir in ["", "low"] {
        let p = |n: &str| m.p(format!("{dir}/{n}").trim_start_matches('/'));
        umask(0);
        mkdir(p("d1777"), 0o1777).unwrap();
        mkdir(p("d777"), 0o777).unwrap();
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(p("f666"))
            .unwrap();
        mknod(p("p666"), libc::S_IFIFO, 0o666, 0).unwrap();
        umask(0o022);
        mknod(p("p644"), libc::S_IFIFO, 0o644, 0).unwrap();
        mkdir(p("d755"), 0o777).unwrap();
        mkdir(p("s1755"), 0o1777).unwrap();
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o777)
            .open(p("f755"))
            .unwrap();
        umask(0o077);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(p("f600"))
            .unwrap();
        mknod(p("sock600"), libc::S_IFSOCK, 0o666, 0).unwrap();
        umask(0);
        for (n, want) in [
            ("d1777", 0o1777),
            ("d777", 0o777),
            ("f666", 0o666),
            ("p666", 0o666),
            ("p644", 0o644),
            ("d755", 0o755),
            ("s1755", 0o1755),
            ("f755", 0o755),
            ("f600", 0o600),
            ("sock600", 0o600),
        ] {
            checks.push((format!("{dir}/{n}"), mode(&p(n)), want));
        }
    }
    umask(old);
    for (n, got, want) in checks {
        assert_eq!(got, want, "{n}: mode {got:o}, want {want:o}");
    }
}

#[test]
fn setgid_directories() {
    let _g = lock_umask();
    let s = Stack::new(1);
    mkdirs(s.l(0, "sg"));
    lchown(s.l(0, "sg"), 0, 4321).unwrap();
    chmod(s.l(0, "sg"), 0o2775).unwrap();
    let m = s.mount();
    assert_eq!(mode(&m.p("sg")), 0o2775);
    put(m.p("sg/file"), b"");
    fs::create_dir(m.p("sg/sub")).unwrap();
    assert_eq!(lstat(m.p("sg/file")).gid(), 4321);
    let sub = lstat(m.p("sg/sub"));
    assert_eq!(sub.gid(), 4321);
    assert_ne!(
        sub.mode() & libc::S_ISGID,
        0,
        "subdir did not inherit setgid"
    );
    assert_eq!(mode(&s.u("sg")), 0o2775, "copy-up lost setgid");
    put(m.p("sg/sub/deeper"), b"");
    assert_eq!(lstat(m.p("sg/sub/deeper")).gid(), 4321);
    // chmod by root keeps what it was asked for.
    chmod(m.p("sg/sub"), 0o2750).unwrap();
    assert_eq!(mode(&m.p("sg/sub")), 0o2750);
}

#[test]
fn sticky_directories() {
    let _g = lock_umask();
    let s = Stack::new(1);
    mkdirs(s.l(0, "tmp"));
    chmod(s.l(0, "tmp"), 0o1777).unwrap();
    put(s.l(0, "tmp/rootfile"), b"r");
    let m = s.mount();
    assert_eq!(mode(&m.p("tmp")), 0o1777);
    let tmp = m.p("tmp");
    let t = tmp.display();
    assert_eq!(as_nobody(&format!("echo hi > {t}/mine && rm {t}/mine")), 0);
    assert_ne!(
        as_nobody(&format!("rm -f {t}/rootfile")),
        0,
        "sticky bit ignored"
    );
    assert!(exists(m.p("tmp/rootfile")));
    assert_ne!(as_nobody(&format!("mv {t}/rootfile {t}/x")), 0);
    assert_eq!(mode(&m.p("tmp")), 0o1777);
    assert_eq!(mode(&s.u("tmp")), 0o1777);
}

#[test]
fn chmod_chown_truncate_on_lower_files() {
    let _g = lock_umask();
    let s = Stack::new(1);
    put(s.l(0, "f"), b"0123456789");
    chmod(s.l(0, "f"), 0o644).unwrap();
    let m = s.mount();
    chmod(m.p("f"), 0o4711).unwrap();
    assert_eq!(mode(&m.p("f")), 0o4711);
    lchown(m.p("f"), 1000, 2000).unwrap();
    let md = lstat(m.p("f"));
    assert_eq!((md.uid(), md.gid()), (1000, 2000));
    // chown by root of an executable clears setuid, as on any Linux fs.
    assert_eq!(md.mode() & 0o7777, 0o711);
    lchown(m.p("f"), u32::MAX, 3000).unwrap();
    assert_eq!((lstat(m.p("f")).uid(), lstat(m.p("f")).gid()), (1000, 3000));
    OpenOptions::new()
        .write(true)
        .open(m.p("f"))
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(read(m.p("f")), b"0123");
    OpenOptions::new()
        .write(true)
        .open(m.p("f"))
        .unwrap()
        .set_len(8)
        .unwrap();
    assert_eq!(read(m.p("f")), b"0123\0\0\0\0");
    let low = lstat(s.l(0, "f"));
    assert_eq!((low.mode() & 0o7777, low.uid(), low.size()), (0o644, 0, 10));
    std::os::unix::fs::symlink("f", m.p("sym")).unwrap();
    lchown(m.p("sym"), 5, 6).unwrap();
    assert_eq!((lstat(m.p("sym")).uid(), lstat(m.p("f")).uid()), (5, 1000));
}

#[test]
fn utimens_explicit_now_and_omit() {
    let _g = lock_umask();
    let s = Stack::new(1);
    put(s.l(0, "f"), b"x");
    utimens(s.l(0, "f"), Some((100, 1)), Some((200, 2))).unwrap();
    let m = s.mount();
    let md = lstat(m.p("f"));
    assert_eq!((md.atime(), md.atime_nsec()), (100, 1));
    assert_eq!((md.mtime(), md.mtime_nsec()), (200, 2));
    utimens(m.p("f"), None, Some((300, 3))).unwrap();
    let md = lstat(m.p("f"));
    assert_eq!(
        (md.atime(), md.atime_nsec()),
        (100, 1),
        "UTIME_OMIT changed atime"
    );
    assert_eq!((md.mtime(), md.mtime_nsec()), (300, 3));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    utimens(m.p("f"), NOW, None).unwrap();
    let md = lstat(m.p("f"));
    assert!(
        md.atime() >= before,
        "UTIME_NOW atime {} < {before}",
        md.atime()
    );
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (300, 3),
        "UTIME_OMIT changed mtime"
    );
    utimens(m.p("f"), Some((400, 4)), NOW).unwrap();
    let md = lstat(m.p("f"));
    assert_eq!(md.atime(), 400);
    assert!(md.mtime() >= before);
    fs::create_dir(m.p("d")).unwrap();
    utimens(m.p("d"), Some((1, 0)), Some((2, 0))).unwrap();
    assert_eq!(lstat(m.p("d")).mtime(), 2);
    let low = lstat(s.l(0, "f"));
    assert_eq!(low.mtime(), 200);
}

#[test]
fn mknod_every_type() {
    let _g = lock_umask();
    let s = Stack::new(1);
    mknod(s.l(0, "lowchr"), libc::S_IFCHR, 0o620, makedev(4, 64)).unwrap();
    chmod(s.l(0, "lowchr"), 0o620).unwrap();
    let m = s.mount();
    mknod(m.p("fifo"), libc::S_IFIFO, 0o640, 0).unwrap();
    mknod(m.p("sock"), libc::S_IFSOCK, 0o600, 0).unwrap();
    mknod(m.p("chr"), libc::S_IFCHR, 0o600, makedev(1, 3)).unwrap();
    mknod(m.p("blk"), libc::S_IFBLK, 0o640, makedev(7, 0)).unwrap();
    mknod(m.p("reg"), libc::S_IFREG, 0o604, 0).unwrap();
    assert!(lstat(m.p("fifo")).file_type().is_fifo());
    assert!(lstat(m.p("sock")).file_type().is_socket());
    let c = lstat(m.p("chr"));
    assert!(c.file_type().is_char_device());
    assert_eq!(c.rdev(), makedev(1, 3));
    let b = lstat(m.p("blk"));
    assert!(b.file_type().is_block_device());
    assert_eq!(b.rdev(), makedev(7, 0));
    assert!(lstat(m.p("reg")).is_file());
    let lc = lstat(m.p("lowchr"));
    assert!(lc.file_type().is_char_device());
    assert_eq!(lc.rdev(), makedev(4, 64));
    assert_eq!(lc.mode() & 0o7777, 0o620);
    for (n, want) in [
        ("fifo", 0o640),
        ("sock", 0o600),
        ("chr", 0o600),
        ("blk", 0o640),
        ("reg", 0o604),
    ] {
        assert_eq!(mode(&m.p(n)), want, "{n}");
    }
    assert_errno(mknod(m.p("fifo"), libc::S_IFIFO, 0o600, 0), libc::EEXIST);
    chmod(m.p("lowchr"), 0o600).unwrap();
    assert_eq!(lstat(m.p("lowchr")).rdev(), makedev(4, 64));
}

#[test]
fn access_checks() {
    let _g = lock_umask();
    let s = Stack::new(1);
    put(s.l(0, "ro"), b"r");
    chmod(s.l(0, "ro"), 0o644).unwrap();
    put(s.l(0, "none"), b"n");
    chmod(s.l(0, "none"), 0o000).unwrap();
    put(s.l(0, "exe"), b"#!/bin/sh\n");
    chmod(s.l(0, "exe"), 0o755).unwrap();
    let m = s.mount();
    access(m.p("ro"), libc::R_OK | libc::W_OK).unwrap();
    assert_errno(access(m.p("ro"), libc::X_OK), libc::EACCES);
    access(m.p("none"), libc::R_OK | libc::W_OK).unwrap();
    access(m.p("exe"), libc::X_OK).unwrap();
    assert_errno(access(m.p("missing"), libc::F_OK), libc::ENOENT);
    let p = |n: &str| m.p(n).display().to_string();
    assert_eq!(as_nobody(&format!("test -r {}", p("ro"))), 0);
    assert_ne!(as_nobody(&format!("test -w {}", p("ro"))), 0);
    assert_ne!(as_nobody(&format!("test -r {}", p("none"))), 0);
    assert_ne!(as_nobody(&format!("cat {} >/dev/null 2>&1", p("none"))), 0);
    assert_eq!(as_nobody(&format!("test -x {}", p("exe"))), 0);
    assert_ne!(as_nobody(&format!("echo x >> {} 2>/dev/null", p("ro"))), 0);
    assert_eq!(read_str(m.p("ro")), "r");
    assert!(!exists(s.u("ro")), "failed write copied up");
}
