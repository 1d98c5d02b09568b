//! get/set/list/removexattr, copy-up on xattr change, overlay xattrs hidden.
mod common;
use common::*;
use std::fs;

#[test]
fn xattrs_on_upper_and_lower_files() {
    let s = Stack::new(1);
    put(s.l(0, "low"), b"l");
    lsetxattr(s.l(0, "low"), "user.a", b"1").unwrap();
    lsetxattr(s.l(0, "low"), "user.b", b"2").unwrap();
    mkdirs(s.l(0, "dir"));
    lsetxattr(s.l(0, "dir"), "user.d", b"dir").unwrap();
    let m = s.mount();
    put(m.p("up"), b"u");
    lsetxattr(m.p("up"), "user.x", b"xv").unwrap();
    assert_eq!(lgetxattr(m.p("up"), "user.x").unwrap(), b"xv");
    assert_eq!(llistxattr(m.p("up")).unwrap(), ["user.x"]);
    assert_errno(lgetxattr(m.p("up"), "user.missing"), libc::ENODATA);
    assert_errno(lremovexattr(m.p("up"), "user.missing"), libc::ENODATA);
    assert_errno(
        lsetxattr_flags(m.p("up"), "user.x", b"again", libc::XATTR_CREATE),
        libc::EEXIST,
    );
    assert_errno(
        lsetxattr_flags(m.p("up"), "user.new", b"n", libc::XATTR_REPLACE),
        libc::ENODATA,
    );
    lsetxattr_flags(m.p("up"), "user.x", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(lgetxattr(m.p("up"), "user.x").unwrap(), b"replaced");
    lremovexattr(m.p("up"), "user.x").unwrap();
    assert!(llistxattr(m.p("up")).unwrap().is_empty());

    assert_eq!(llistxattr(m.p("low")).unwrap(), ["user.a", "user.b"]);
    assert_eq!(lgetxattr(m.p("low"), "user.b").unwrap(), b"2");
    lremovexattr(m.p("low"), "user.a").unwrap();
    lsetxattr(m.p("low"), "user.c", b"3").unwrap();
    assert_eq!(llistxattr(m.p("low")).unwrap(), ["user.b", "user.c"]);
    assert_eq!(llistxattr(s.l(0, "low")).unwrap(), ["user.a", "user.b"]);
    assert_eq!(lgetxattr(m.p("dir"), "user.d").unwrap(), b"dir");
    lsetxattr(m.p("dir"), "trusted.t", b"T").unwrap();
    assert_eq!(lgetxattr(m.p("dir"), "trusted.t").unwrap(), b"T");
    assert_eq!(llistxattr(m.p("dir")).unwrap(), ["trusted.t", "user.d"]);
    m.unmount();
    let m = s.mount();
    assert_eq!(llistxattr(m.p("low")).unwrap(), ["user.b", "user.c"]);
    assert_eq!(lgetxattr(m.p("low"), "user.c").unwrap(), b"3");
}

fn assert_no_overlay_xattrs(path: &std::path::Path) {
    let names = llistxattr(path).unwrap();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("trusted.overlay.") || n.starts_with("user.overlay.")),
        "{}: overlay xattrs visible: {names:?}",
        path.display()
    );
    for n in [
        "trusted.overlay.opaque",
        "trusted.overlay.redirect",
        "trusted.overlay.origin",
        "user.overlay.opaque",
    ] {
        assert!(
            lgetxattr(path, n).is_err(),
            "{}: {n} readable",
            path.display()
        );
    }
}

#[test]
fn overlay_xattrs_are_hidden() {
    let s = Stack::new(2);
    put(s.l(1, "o/hidden"), b"");
    opaque_trusted(s.l(0, "o"));
    lsetxattr(s.l(0, "o"), "user.keep", b"k").unwrap();
    put(s.l(1, "ren/child"), b"c");
    put(s.l(1, "del/child"), b"c");
    put(s.l(1, "f"), b"f");
    let m = s.mount();
    assert_no_overlay_xattrs(&m.p("o"));
    assert_eq!(llistxattr(m.p("o")).unwrap(), ["user.keep"]);
    fs::rename(m.p("ren"), m.p("moved")).unwrap();
    assert_no_overlay_xattrs(&m.p("moved"));
    fs::remove_dir_all(m.p("del")).unwrap();
    fs::create_dir(m.p("del")).unwrap();
    assert_no_overlay_xattrs(&m.p("del"));
    chmod(m.p("f"), 0o600).unwrap();
    assert_no_overlay_xattrs(&m.p("f"));
    assert_no_overlay_xattrs(&m.p(""));
    m.unmount();
    let m = s.mount();
    for p in ["o", "moved", "del", "f", ""] {
        assert_no_overlay_xattrs(&m.p(p));
    }
}

/// `user.overlay.*` is the overlay's own namespace for layerfs in every mode (kernel
/// overlayfs treats it so only with `-o userxattr`).
#[test]
fn user_overlay_xattrs_are_hidden() {
    let s = Stack::new(2);
    put(s.l(1, "uo/hidden"), b"");
    opaque_user(s.l(0, "uo"));
    lsetxattr(s.l(0, "uo"), "user.keep", b"k").unwrap();
    let m = s.mount();
    assert_no_overlay_xattrs(&m.p("uo"));
    assert_eq!(llistxattr(m.p("uo")).unwrap(), ["user.keep"]);
}

/// A lower object is listed once for xattrs (src/overlay.rs `getxattr`): what it has, what
/// it lacks and what it gets after a copy-up must all stay exact, asked repeatedly.
#[test]
fn lower_xattrs_stay_exact_when_asked_again() {
    let s = Stack::new(2);
    put(s.l(1, "bare"), b"b");
    put(s.l(1, "one"), b"o");
    lsetxattr(s.l(1, "one"), "user.one", b"1").unwrap();
    put(s.l(1, "private"), b"p");
    lsetxattr(s.l(1, "private"), "user.overlay.origin", b"x").unwrap();
    mkdirs(s.l(1, "d"));
    mkdirs(s.l(0, "d"));
    lsetxattr(s.l(0, "d"), "user.top", b"t").unwrap();
    let m = s.mount();
    for _ in 0..3 {
        assert_errno(lgetxattr(m.p("bare"), "security.selinux"), libc::ENODATA);
        assert_errno(
            lgetxattr(m.p("bare"), "system.posix_acl_access"),
            libc::ENODATA,
        );
        assert_errno(lgetxattr(m.p("bare"), "user.one"), libc::ENODATA);
        assert_eq!(lgetxattr(m.p("one"), "user.one").unwrap(), b"1");
        assert_errno(lgetxattr(m.p("one"), "user.two"), libc::ENODATA);
        assert_errno(
            lgetxattr(m.p("private"), "user.overlay.origin"),
            libc::ENODATA,
        );
        assert_errno(lgetxattr(m.p("private"), "user.x"), libc::ENODATA);
        assert_eq!(lgetxattr(m.p("d"), "user.top").unwrap(), b"t");
    }
    // Given an xattr through the mount (a copy-up), each shows it at once.
    lsetxattr(m.p("bare"), "user.new", b"n").unwrap();
    assert_eq!(lgetxattr(m.p("bare"), "user.new").unwrap(), b"n");
    lsetxattr(m.p("private"), "user.x", b"px").unwrap();
    assert_eq!(lgetxattr(m.p("private"), "user.x").unwrap(), b"px");
    assert_eq!(llistxattr(m.p("private")).unwrap(), ["user.x"]);
    lsetxattr(m.p("d"), "user.more", b"m").unwrap();
    assert_eq!(lgetxattr(m.p("d"), "user.more").unwrap(), b"m");
    assert_eq!(lgetxattr(m.p("d"), "user.top").unwrap(), b"t");
    // A hard link of a lower file, written through one name, shows it through the other.
    fs::hard_link(m.p("one"), m.p("one-link")).unwrap();
    lsetxattr(m.p("one-link"), "user.two", b"2").unwrap();
    assert_eq!(lgetxattr(m.p("one"), "user.two").unwrap(), b"2");
    m.unmount();
}
