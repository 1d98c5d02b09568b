//! Lookup goes top-down; whiteouts and opaque dirs in both encodings; markers never visible.
mod common;
use common::*;

#[test]
fn top_layer_wins_and_non_dir_ends_search() {
    let s = Stack::new(3);
    put(s.l(2, "a"), b"bottom");
    put(s.l(1, "a"), b"middle");
    put(s.l(2, "b"), b"bottom-b");
    put(s.u("c"), b"upper-c");
    put(s.l(0, "c"), b"lower-c");
    // A file in a higher layer hides a directory below it.
    put(s.l(2, "d/inner"), b"x");
    put(s.l(1, "d"), b"file-d");
    // A directory in a higher layer is merged with directories below.
    put(s.l(2, "m/from2"), b"2");
    put(s.l(1, "m/from1"), b"1");
    put(s.l(0, "m/from0"), b"0");
    put(s.u("m/fromu"), b"u");
    put(s.l(2, "m/shadow"), b"low");
    put(s.l(0, "m/shadow"), b"high");
    let m = s.mount();
    assert_eq!(read_str(m.p("a")), "middle");
    assert_eq!(read_str(m.p("b")), "bottom-b");
    assert_eq!(read_str(m.p("c")), "upper-c");
    assert!(lstat(m.p("d")).is_file());
    assert_eq!(read_str(m.p("d")), "file-d");
    assert_errno(std::fs::metadata(m.p("d/inner")), libc::ENOTDIR);
    assert_eq!(ls(m.p("m")), ["from0", "from1", "from2", "fromu", "shadow"]);
    assert_eq!(read_str(m.p("m/shadow")), "high");
    assert_eq!(ls(m.p("")), ["a", "b", "c", "d", "m"]);
}

#[test]
fn directory_hides_file_below() {
    let s = Stack::new(2);
    put(s.l(1, "x"), b"file");
    put(s.l(0, "x/y"), b"y");
    let m = s.mount();
    assert!(lstat(m.p("x")).is_dir());
    assert_eq!(ls(m.p("x")), ["y"]);
}

fn check_whiteout(s: &Stack) {
    let m = s.mount();
    assert!(!exists(m.p("gone")), "whited-out file visible");
    assert_errno(std::fs::metadata(m.p("gone")), libc::ENOENT);
    assert!(!exists(m.p("gonedir")), "whited-out dir visible");
    assert!(!exists(m.p("gonedir/child")));
    assert_eq!(ls(m.p("")), ["dir", "kept"]);
    assert_eq!(ls(m.p("dir")), ["keep"]);
    // Creating the name again works and shows only the new thing.
    put(m.p("gone"), b"new");
    assert_eq!(read_str(m.p("gone")), "new");
    std::fs::create_dir(m.p("gonedir")).unwrap();
    assert_eq!(ls(m.p("gonedir")), Vec::<String>::new());
}

fn whiteout_layers(s: &Stack) {
    put(s.l(1, "gone"), b"old");
    put(s.l(1, "gonedir/child"), b"c");
    put(s.l(1, "kept"), b"k");
    put(s.l(1, "dir/hidden"), b"h");
    put(s.l(1, "dir/keep"), b"k");
    mkdirs(s.l(0, "dir"));
}

#[test]
fn whiteout_chardev_in_lower() {
    let s = Stack::new(2);
    whiteout_layers(&s);
    whiteout_chardev(s.l(0, ""), "gone");
    whiteout_chardev(s.l(0, ""), "gonedir");
    whiteout_chardev(s.l(0, "dir"), "hidden");
    check_whiteout(&s);
}

#[test]
fn whiteout_chardev_in_upper() {
    let s = Stack::new(2);
    whiteout_layers(&s);
    whiteout_chardev(s.u(""), "gone");
    whiteout_chardev(s.u(""), "gonedir");
    whiteout_chardev(s.u("dir"), "hidden");
    check_whiteout(&s);
}

/// OCI/AUFS `.wh.NAME` files. Kernel overlayfs does not read this encoding.
#[test]
fn whiteout_wh_files_in_lower() {
    let s = Stack::new(2);
    whiteout_layers(&s);
    whiteout_file(s.l(0, ""), "gone");
    whiteout_file(s.l(0, ""), "gonedir");
    whiteout_file(s.l(0, "dir"), "hidden");
    check_whiteout(&s);
    let m = s.mount_ro();
    // The markers themselves are never visible, not even by exact name.
    assert!(!exists(m.p(".wh.kept")));
    assert_errno(std::fs::metadata(m.p(".wh.hidden")), libc::ENOENT);
    assert_errno(std::fs::metadata(m.p("dir/.wh.hidden")), libc::ENOENT);
}

fn opaque_layers(s: &Stack) {
    put(s.l(1, "o/old"), b"old");
    put(s.l(1, "o/sub/deep"), b"deep");
    put(s.l(1, "other/visible"), b"v");
    put(s.l(0, "o/new"), b"new");
}

fn check_opaque(s: &Stack) {
    let m = s.mount();
    assert_eq!(ls(m.p("o")), ["new"]);
    assert!(!exists(m.p("o/old")));
    assert!(!exists(m.p("o/sub")));
    assert_eq!(ls(m.p("other")), ["visible"]);
    let names = llistxattr(m.p("o")).unwrap();
    assert!(
        !names.iter().any(|n| n.contains("overlay")),
        "overlay xattr visible: {names:?}"
    );
}

#[test]
fn opaque_trusted_xattr() {
    let s = Stack::new(2);
    opaque_layers(&s);
    opaque_trusted(s.l(0, "o"));
    check_opaque(&s);
}

/// `user.overlay.opaque`: kernel overlayfs reads it only with `-o userxattr`.
#[test]
fn opaque_user_xattr() {
    let s = Stack::new(2);
    opaque_layers(&s);
    opaque_user(s.l(0, "o"));
    check_opaque(&s);
}

/// `.wh..wh..opq` (OCI): kernel overlayfs does not read this encoding.
#[test]
fn opaque_wh_file() {
    let s = Stack::new(2);
    opaque_layers(&s);
    opaque_file(s.l(0, "o"));
    check_opaque(&s);
    let m = s.mount_ro();
    assert_errno(std::fs::metadata(m.p("o/.wh..wh..opq")), libc::ENOENT);
}

#[test]
fn opaque_upper_dir_hides_all_lowers() {
    let s = Stack::new(2);
    opaque_layers(&s);
    opaque_trusted(s.u("o"));
    put(s.u("o/mine"), b"m");
    let m = s.mount();
    assert_eq!(ls(m.p("o")), ["mine"]);
}

#[test]
fn readonly_mount_without_upper_is_erofs() {
    let s = Stack::new(2);
    put(s.l(1, "f"), b"data");
    put(s.l(0, "d/g"), b"g");
    let m = s.mount_ro();
    assert_eq!(read_str(m.p("f")), "data");
    assert_errno(std::fs::write(m.p("new"), b"x"), libc::EROFS);
    assert_errno(
        std::fs::OpenOptions::new().write(true).open(m.p("f")),
        libc::EROFS,
    );
    assert_errno(std::fs::remove_file(m.p("f")), libc::EROFS);
    assert_errno(std::fs::create_dir(m.p("nd")), libc::EROFS);
    assert_errno(chmod(m.p("f"), 0o600), libc::EROFS);
    assert_errno(std::fs::rename(m.p("f"), m.p("f2")), libc::EROFS);
    assert_errno(lsetxattr(m.p("f"), "user.x", b"1"), libc::EROFS);
    assert_eq!(read_str(s.l(1, "f")), "data");
}

/// Deleting lower entries leaves 0:0 char devices in the upper layer that are links of one
/// inode (as kernel overlayfs makes them), and they read back as deletions after a remount.
#[test]
fn deletions_share_one_whiteout_inode() {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let s = Stack::new(1);
    for n in ["a", "b", "c"] {
        put(s.l(0, &format!("d/{n}")), b"x");
    }
    mkdirs(s.l(0, "d/sub"));
    let m = s.mount();
    fs::remove_file(m.p("d/a")).unwrap();
    fs::remove_file(m.p("d/b")).unwrap();
    fs::remove_dir(m.p("d/sub")).unwrap();
    m.unmount();
    let inodes: std::collections::BTreeSet<u64> = ["a", "b", "sub"]
        .iter()
        .map(|n| {
            let md = lstat(s.u(&format!("d/{n}")));
            assert!(
                md.file_type().is_char_device() && md.rdev() == 0,
                "{n}: not a whiteout"
            );
            md.ino()
        })
        .collect();
    assert_eq!(inodes.len(), 1, "each whiteout has an inode of its own");
    let m = s.mount();
    assert_eq!(ls(m.p("d")), ["c"]);
}
