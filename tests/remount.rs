//! What the upper dir holds after unmount, and that a remount shows the same tree.
mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

#[test]
fn upper_holds_kernel_encoding_after_unmount() {
    let s = Stack::new(1);
    put(s.l(0, "gone"), b"x");
    put(s.l(0, "d/child"), b"c");
    put(s.l(0, "keepdir/k"), b"k");
    let m = s.mount();
    fs::remove_file(m.p("gone")).unwrap();
    fs::remove_dir_all(m.p("d")).unwrap();
    fs::create_dir(m.p("d")).unwrap();
    put(m.p("d/new"), b"n");
    put(m.p("keepdir/added"), b"a");
    m.unmount();
    let wh = lstat(s.u("gone"));
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is not a char device"
    );
    assert_eq!(wh.rdev(), 0, "whiteout is not 0:0");
    assert_eq!(lgetxattr(s.u("d"), "trusted.overlay.opaque").unwrap(), b"y");
    assert!(lgetxattr(s.u("keepdir"), "trusted.overlay.opaque").is_err());
    assert_eq!(read_str(s.u("d/new")), "n");
    let names = ls(&s.upper);
    assert!(!names.iter().any(|n| n.starts_with(".wh.")), "{names:?}");
    assert_eq!(ls(s.u("keepdir")), ["added"]);
}

#[test]
fn remount_shows_the_same_tree() {
    let s = Stack::new(2);
    put(s.l(1, "etc/conf"), b"c");
    put(s.l(1, "etc/old"), b"o");
    put(s.l(0, "etc/mid"), b"m");
    put(s.l(1, "bin/tool"), b"t");
    chmod(s.l(1, "bin/tool"), 0o755).unwrap();
    put(s.l(1, "var/lib/x/y"), b"y");
    std::os::unix::fs::symlink("conf", s.l(0, "etc/link")).unwrap();
    let m = s.mount();
    fs::write(m.p("etc/conf"), b"changed").unwrap();
    fs::remove_file(m.p("etc/old")).unwrap();
    fs::rename(m.p("etc/mid"), m.p("etc/mid2")).unwrap();
    chmod(m.p("bin/tool"), 0o700).unwrap();
    lchown(m.p("bin"), 1, 2).unwrap();
    fs::remove_dir_all(m.p("var/lib")).unwrap();
    fs::create_dir_all(m.p("var/lib/z")).unwrap();
    lsetxattr(m.p("etc/link"), "trusted.sym", b"s").unwrap();
    mknod(m.p("fifo"), libc::S_IFIFO, 0o640, 0).unwrap();
    fs::rename(m.p("etc"), m.p("etc2")).unwrap();
    let a = snapshot(&m.path);
    m.unmount();
    let m = s.mount();
    let b = snapshot(&m.path);
    let (mut a, mut b) = (a, b);
    // The root's own times may legitimately be refreshed by the mount.
    a.remove("");
    b.remove("");
    assert!(
        a == b,
        "tree changed across remount:\n{}",
        diff(&a, &b, "before", "after")
    );
    assert_eq!(read_str(m.p("etc2/conf")), "changed");
    assert!(!exists(m.p("etc2/old")));
    assert!(!exists(m.p("etc")));
    assert_eq!(ls(m.p("var/lib")), ["z"]);
}
