/// containers-storage's extended override value (`UID:GID:MODE:TYPE`, what its
/// `force_mask` writes and fuse-overlayfs 1.15 reads): a regular file on disk stands for a
/// device or fifo that could not be made without privilege, and shows as one.
/// Debian's fuse-overlayfs 1.10 predates the form, so this checks layerfs alone.
#[test]
fn containers_override_stat_with_a_device_type() {
    const ATTR: &str = "user.containers.override_stat";
    let s = Stack::new(1);
    lsetxattr(&s.lowers[0], ATTR, b"0:0:0755:dir").unwrap();
    put(s.l(0, "null"), b"");
    lsetxattr(s.l(0, "null"), ATTR, b"0:0:0666:char-1-3").unwrap();
    put(s.l(0, "fifo"), b"");
    lsetxattr(s.l(0, "fifo"), ATTR, b"0:0:0600:pipe").unwrap();
    put(s.l(0, "plain"), b"data\n");
    lsetxattr(s.l(0, "plain"), ATTR, b"1000:1000:04711:file").unwrap();
    mkdirs(s.l(0, "d"));
    lsetxattr(s.l(0, "d"), ATTR, b"7:8:1777").unwrap();
    let m = s.mount_ro();
    let e = |rel: &str| entry(&m.p(rel));
    let null = e("null");
    assert_eq!(
        (null.kind, null.mode, null.rdev),
        ('c', 0o666, makedev(1, 3))
    );
    let fifo = e("fifo");
    assert_eq!((fifo.kind, fifo.mode), ('p', 0o600));
    let plain = e("plain");
    assert_eq!(
        (plain.kind, plain.mode, plain.uid, plain.gid, plain.size),
        ('f', 0o4711, 1000, 1000, 5)
    );
    let d = e("d");
    assert_eq!((d.kind, d.mode, d.uid, d.gid), ('d', 0o1777, 7, 8));
    assert!(
        d.xattrs.is_empty() && plain.xattrs.is_empty(),
        "{:?}",
        plain.xattrs
    );
}
