//! symlink/readlink and hard links, including lower hard links that must stay one inode.
mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

#[test]
fn symlinks() {
    let s = Stack::new(1);
    std::os::unix::fs::symlink("target/of/lower", s.l(0, "lsym")).unwrap();
    put(s.l(0, "t"), b"T");
    let m = s.mount();
    assert_eq!(
        fs::read_link(m.p("lsym")).unwrap().to_str(),
        Some("target/of/lower")
    );
    std::os::unix::fs::symlink("t", m.p("new")).unwrap();
    assert_eq!(fs::read_link(m.p("new")).unwrap().to_str(), Some("t"));
    assert!(lstat(m.p("new")).file_type().is_symlink());
    assert_eq!(read_str(m.p("new")), "T");
    assert_errno(std::os::unix::fs::symlink("x", m.p("lsym")), libc::EEXIST);
    fs::remove_file(m.p("lsym")).unwrap();
    std::os::unix::fs::symlink("other", m.p("lsym")).unwrap();
    assert_eq!(fs::read_link(m.p("lsym")).unwrap().to_str(), Some("other"));
    assert_errno(fs::read_link(m.p("t")), libc::EINVAL);
}

#[test]
fn link_a_lower_file() {
    let s = Stack::new(1);
    put(s.l(0, "d/f"), b"data");
    let m = s.mount();
    fs::hard_link(m.p("d/f"), m.p("g")).unwrap();
    let (a, b) = (lstat(m.p("d/f")), lstat(m.p("g")));
    assert_eq!(a.ino(), b.ino());
    assert_eq!((a.nlink(), b.nlink()), (2, 2));
    fs::OpenOptions::new()
        .append(true)
        .open(m.p("g"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(read_str(m.p("d/f")), "data+");
    fs::remove_file(m.p("d/f")).unwrap();
    assert_eq!(lstat(m.p("g")).nlink(), 1);
    assert_eq!(read_str(m.p("g")), "data+");
    assert_eq!(read_str(s.l(0, "d/f")), "data");
    assert_errno(fs::hard_link(m.p("d"), m.p("dlink")), libc::EPERM);
}

fn lower_hardlinks() -> Stack {
    let s = Stack::new(2);
    put(s.l(1, "a/h1"), b"shared");
    mkdirs(s.l(1, "b"));
    fs::hard_link(s.l(1, "a/h1"), s.l(1, "b/h2")).unwrap();
    put(s.l(1, "other"), b"o");
    s
}

fn check_one_inode(m: &Mount, content: &str, mode: u32) {
    let (a, b) = (lstat(m.p("a/h1")), lstat(m.p("b/h2")));
    assert_eq!(a.ino(), b.ino(), "hard links split into two inodes");
    assert_eq!((a.nlink(), b.nlink()), (2, 2));
    assert_eq!(a.mode() & 0o7777, mode);
    assert_eq!(b.mode() & 0o7777, mode);
    assert_eq!(read_str(m.p("a/h1")), content);
    assert_eq!(read_str(m.p("b/h2")), content);
}

#[test]
fn lower_hard_links_stay_one_inode_after_write() {
    let s = lower_hardlinks();
    let m = s.mount();
    let ino = lstat(m.p("a/h1")).ino();
    assert_eq!(lstat(m.p("b/h2")).ino(), ino);
    assert_eq!(lstat(m.p("a/h1")).nlink(), 2);
    fs::OpenOptions::new()
        .append(true)
        .open(m.p("b/h2"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    check_one_inode(&m, "shared!", 0o644);
    assert_eq!(lstat(m.p("a/h1")).ino(), ino, "st_ino changed by copy-up");
    fs::OpenOptions::new()
        .append(true)
        .open(m.p("a/h1"))
        .unwrap()
        .write_all(b"?")
        .unwrap();
    check_one_inode(&m, "shared!?", 0o644);
    m.unmount();
    let m = s.mount();
    check_one_inode(&m, "shared!?", 0o644);
    assert_eq!(read_str(s.l(1, "a/h1")), "shared");
}

#[test]
fn lower_hard_links_stay_one_inode_after_chmod() {
    let s = lower_hardlinks();
    let m = s.mount();
    let ino = lstat(m.p("a/h1")).ino();
    chmod(m.p("a/h1"), 0o600).unwrap();
    check_one_inode(&m, "shared", 0o600);
    assert_eq!(lstat(m.p("b/h2")).ino(), ino);
    // Writing through the other name after the copy-up still shares the data.
    fs::write(m.p("b/h2"), b"rewritten").unwrap();
    check_one_inode(&m, "rewritten", 0o600);
}
