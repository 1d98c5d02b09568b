//! layerfs against Debian's fuse-overlayfs, the program it replaces as podman's and
//! buildah's `mount_program`: the same layers mounted with the same options by both must
//! look the same (`/usr/bin/fuse-overlayfs`, package fuse-overlayfs; never skipped).
//!
//! Each test builds two identical stacks with one function, mounts one with each program,
//! does the same things through both mounts, and compares what a user sees (names, types,
//! modes, owners, sizes, xattrs) and what was written to the upper layers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::rootless::require_tool;
use common::*;

const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

fn fuse_overlayfs() -> PathBuf {
    require_tool("fuse-overlayfs", "fuse-overlayfs");
    PathBuf::from(FUSE_OVERLAYFS)
}

/// What a user sees of one entry, without what legitimately differs between two FUSE
/// overlays (inode numbers, times, directory sizes and link counts).
fn view(root: &Path) -> BTreeMap<String, String> {
    snapshot(root)
        .into_iter()
        .map(|(rel, e)| {
            let size = if e.kind == 'd' { 0 } else { e.size };
            let xattrs: Vec<String> = e
                .xattrs
                .iter()
                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                .collect();
            let v = format!(
                "{} {:o} {}:{} size={size} rdev={} target={:?} sha={:?} xattrs={xattrs:?}",
                e.kind, e.mode, e.uid, e.gid, e.rdev, e.target, e.sha256
            );
            (rel, v)
        })
        .collect()
}

fn assert_same_view(ours: &Path, theirs: &Path, what: &str) {
    let (a, b) = (view(ours), view(theirs));
    let mut d = String::new();
    for (k, v) in &a {
        match b.get(k) {
            None => d += &format!("only layerfs: {k:?} {v}\n"),
            Some(w) if w != v => {
                d += &format!("{k:?}\n  layerfs:        {v}\n  fuse-overlayfs: {w}\n")
            }
            _ => {}
        }
    }
    for (k, w) in &b {
        if !a.contains_key(k) {
            d += &format!("only fuse-overlayfs: {k:?} {w}\n");
        }
    }
    assert!(d.is_empty(), "{what}: the two mounts differ:\n{d}");
}

fn owner(p: impl AsRef<Path>) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = lstat(p);
    (m.uid(), m.gid())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert_success(&out);
}

/// A tree whose entries are owned by many on-disk ids, some inside the mapping below and
/// some outside it, in two lower layers.
fn owners_stack() -> Stack {
    let s = Stack::new(2);
    let ids: [(&str, u32, u32); 9] = [
        ("root", 0, 0),
        ("base", 100000, 100000),
        ("u5", 100005, 100006),
        ("u1000", 101000, 101000),
        ("top", 165535, 165535),
        ("past", 165536, 165536),
        ("low5000", 5000, 5003),
        ("low5010", 5010, 5010),
        ("far", 200000, 4000),
    ];
    for (i, (name, uid, gid)) in ids.iter().enumerate() {
        let layer = i % 2;
        put(s.l(layer, &format!("{name}.f")), name.as_bytes());
        lchown(s.l(layer, &format!("{name}.f")), *uid, *gid).unwrap();
        mkdirs(s.l(layer, &format!("dir/{name}.d")));
        lchown(s.l(layer, &format!("dir/{name}.d")), *uid, *gid).unwrap();
        std::os::unix::fs::symlink("target", s.l(1 - layer, &format!("{name}.l"))).unwrap();
        lchown(s.l(1 - layer, &format!("{name}.l")), *uid, *gid).unwrap();
    }
    chmod(s.l(0, "root.f"), 0o4755).unwrap();
    lchown(s.l(0, "dir"), 100000, 100000).unwrap();
    lchown(s.l(1, "dir"), 100000, 100000).unwrap();
    for l in &s.lowers {
        lchown(l, 100000, 100000).unwrap();
    }
    s
}

const MAPPING: [&str; 2] = [
    // On-disk 100000.. shown as 0..65535, on-disk 0 shown as 70000, 5000..5009 as 80000..
    "uidmapping=100000:0:65536:0:70000:1:5000:80000:10",
    "gidmapping=100000:0:65536:0:70000:1:5000:80000:10",
];

/// Steps done through a mount as root (shown uid 0, on disk 100000) and as shown uid 1000.
fn create_and_chown(m: &Path) {
    put(m.join("new"), b"new\n");
    mkdir(m.join("open"), 0o755).unwrap();
    chmod(m.join("open"), 0o777).unwrap();
    lchown(m.join("new"), 5, 6).unwrap();
    // A lower file copied up by the chown, to the id that is on-disk 0.
    lchown(m.join("u5.f"), 70000, 70000).unwrap();
    lchown(m.join("dir/u1000.d"), 80001, 3).unwrap();
    lchown(m.join("base.l"), 7, 8).unwrap();
    std::os::unix::fs::symlink("t", m.join("newlink")).unwrap();
    run(Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "sh",
            "-euc",
        ])
        .arg("touch \"$1/byuser\"; mkdir \"$1/userdir\"; ln -s x \"$1/userlink\"")
        .arg("sh")
        .arg(m.join("open")));
}

/// `uidmapping=FROM:TO:LEN` means on-disk FROM shown as TO (fuse-overlayfs's meaning,
/// which containers-storage's `uidmapping=ContainerID:HostID:Size` relies on): the same
/// owners through both programs for every entry of a tree with many owners, and the same
/// on-disk owners for what is created and chowned through the mounts.
#[test]
fn id_mapping_matches_fuse_overlayfs() {
    let fo = fuse_overlayfs();
    let (ours, theirs) = (owners_stack(), owners_stack());
    let a = ours.mount_layerfs(&MAPPING, true);
    let b = theirs.mount_program(&fo, &MAPPING, true);
    assert_eq!(owner(a.p("base.f")), (0, 0), "on-disk 100000 is shown as 0");
    assert_eq!(
        owner(a.p("root.f")),
        (70000, 70000),
        "on-disk 0 is shown as 70000"
    );
    assert_eq!(owner(a.p("past.f")), (65534, 65534));
    assert_same_view(&a.path, &b.path, "lower tree");

    create_and_chown(&a.path);
    create_and_chown(&b.path);
    assert_same_view(&a.path, &b.path, "after creating and chowning");
    a.unmount();
    b.unmount();

    for rel in [
        "new",
        "open",
        "u5.f",
        "dir/u1000.d",
        "base.l",
        "newlink",
        "open/byuser",
        "open/userdir",
        "open/userlink",
    ] {
        assert_eq!(
            owner(ours.u(rel)),
            owner(theirs.u(rel)),
            "on-disk owner of upper {rel}"
        );
    }
    assert_eq!(owner(ours.u("new")), (100005, 100006));
    assert_eq!(owner(ours.u("u5.f")), (0, 0));
    assert_eq!(owner(ours.u("open/byuser")), (101000, 101000));
}

fn sh(script: &str, dir: &Path) {
    run(Command::new("sh").args(["-euc", script]).current_dir(dir));
}

/// Writes an upper layer the way podman's storage gets one from fuse-overlayfs with
/// `xattr_permissions=2` (owners and modes in `user.fuseoverlayfs.override_stat`,
/// `user.fuseoverlayfs.origin` on copy-ups, opaque directories), over `lower`.
fn written_by_fuse_overlayfs(root: &Path) {
    let fo = fuse_overlayfs();
    for d in ["l", "u", "w", "m"] {
        mkdirs(root.join(d));
    }
    sh(
        "mkdir -p l/etc l/hid/deep l/keep && echo conf > l/etc/conf && echo h > l/hid/deep/x \
         && mkdir l/gone && echo g > l/gone/g && echo k > l/keep/k && chown 7:8 l/keep/k && chmod 640 l/keep/k && echo s > l/setuid \
         && chmod 4755 l/setuid",
        root,
    );
    run(Command::new(&fo)
        .arg("-o")
        .arg("lowerdir=l,upperdir=u,workdir=w,xattr_permissions=2")
        .arg("m")
        .current_dir(root));
    let script = "echo new > m/new && chown 1000:1001 m/new && mkdir m/dir && chown 5:6 m/dir \
        && echo more >> m/etc/conf && rm -r m/hid && mkdir m/hid && echo again > m/hid/y \
        && chmod 700 m/keep && setfattr -n user.note -v hi m/keep/k && chmod 600 m/keep/k \
        && ln -s etc/conf m/link && mkfifo m/fifo";
    let out = Command::new("sh")
        .args(["-euc", script])
        .current_dir(root)
        .output()
        .unwrap();
    run(Command::new("fusermount3").arg("-u").arg(root.join("m")));
    assert_success(&out);
    // What fuse-overlayfs writes for opaque directories where it may not write trusted.*
    // (a rootless mount): its own xattr.
    // (fuse-overlayfs 1.10 cannot stat an object without override_stat in a layer that
    // uses it, so the directory gets one.)
    mkdirs(root.join("u/gone"));
    lsetxattr(root.join("u/gone"), "user.fuseoverlayfs.opaque", b"y").unwrap();
    lsetxattr(
        root.join("u/gone"),
        "user.fuseoverlayfs.override_stat",
        b"3:4:40750",
    )
    .unwrap();
}

/// A storage written by fuse-overlayfs, mounted by fuse-overlayfs and by layerfs, looks
/// the same: its `user.fuseoverlayfs.*` xattrs never show (before, `origin` was listed on
/// every copied-up file), `user.fuseoverlayfs.opaque` hides what is below, and the owners
/// and modes come from `user.fuseoverlayfs.override_stat`, detected from the layer's root
/// as fuse-overlayfs does: once with the written layer as the upper (podman goes on
/// using its storage) and once as a lower layer under a read-only mount.
#[test]
fn layers_written_by_fuse_overlayfs_look_the_same() {
    let fo = fuse_overlayfs();
    let root = tempfile::Builder::new()
        .prefix("layerfs-fo-")
        .tempdir_in(tmp_base())
        .unwrap();
    written_by_fuse_overlayfs(root.path());
    let r = root.path();
    // 1.10 writes the mode a new file is created with, umask unapplied (fixed in 1.14).
    let written = lgetxattr_str(r.join("u/new"), "user.fuseoverlayfs.override_stat");
    assert!(
        written
            .as_deref()
            .is_some_and(|v| v.starts_with("1000:1001:")),
        "fuse-overlayfs 1.10 wrote the owner to the xattr: {written:?}"
    );
    assert!(lgetxattr(r.join("u"), "user.fuseoverlayfs.override_stat").is_ok());

    // The written layer as the upper layer, with both programs (each on its own copy).
    for (name, _) in [("ours", 0), ("theirs", 1)] {
        sh(&format!("cp -a u u-{name} && mkdir w-{name} m-{name}"), r);
    }
    let mount = |bin: &Path, opts: String, mnt: &str| {
        run(Command::new(bin)
            .arg("-o")
            .arg(opts)
            .arg(mnt)
            .current_dir(r));
        assert!(is_mounted(&r.join(mnt)));
    };
    mount(
        &layerfs_bin(),
        "lowerdir=l,upperdir=u-ours,workdir=w-ours".into(),
        "m-ours",
    );
    mount(
        &fo,
        "lowerdir=l,upperdir=u-theirs,workdir=w-theirs".into(),
        "m-theirs",
    );
    let ours = r.join("m-ours");
    let theirs = r.join("m-theirs");
    let checks = std::panic::catch_unwind(|| {
        assert_eq!(owner(ours.join("new")), (1000, 1001));
        assert_eq!(owner(ours.join("dir")), (5, 6));
        assert!(
            !exists(ours.join("hid/deep")),
            "opaque directory shows lower content"
        );
        assert!(
            !exists(ours.join("gone/g")),
            "user.fuseoverlayfs.opaque not honoured"
        );
        assert!(exists(theirs.join("gone")) && !exists(theirs.join("gone/g")));
        assert_eq!(owner(ours.join("gone")), (3, 4));
        assert!(llistxattr(ours.join("etc/conf"))
            .unwrap()
            .iter()
            .all(|n| !n.starts_with("user.fuseoverlayfs.")));
        assert_same_view(&ours, &theirs, "fuse-overlayfs's layer as upper");
    });
    for m in ["m-ours", "m-theirs"] {
        run(Command::new("fusermount3").arg("-u").arg(r.join(m)));
    }
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }

    // The same layer as a lower one, read-only.
    let lower = |s: &Stack| {
        sh(
            &format!(
                "rm -r {0} && cp -a u {0} && cp -a l/. {1}",
                s.lowers[0].display(),
                s.lowers[1].display()
            ),
            r,
        );
    };
    let (a, b) = (Stack::new(2), Stack::new(2));
    lower(&a);
    lower(&b);
    let ma = a.mount_layerfs(&[], false);
    let mb = b.mount_program(&fo, &[], false);
    assert_eq!(owner(ma.p("new")), (1000, 1001));
    assert_same_view(&ma.path, &mb.path, "fuse-overlayfs's layer as a lower");
}

/// `xattr_permissions=2`: owners and modes set through the mount are written to
/// `user.fuseoverlayfs.override_stat` (the files keep the daemon's), with the values
/// fuse-overlayfs writes for the same steps; the layer root gets the xattr, so later mounts
/// of the layer detect the mode. One known difference: fuse-overlayfs 1.10 records a new
/// file's mode without the caller's umask (fixed in 1.14); layerfs applies it.
#[test]
fn xattr_permissions_writes_what_fuse_overlayfs_writes() {
    const ATTR: &str = "user.fuseoverlayfs.override_stat";
    let fo = fuse_overlayfs();
    let stack = || {
        let s = Stack::new(1);
        put(s.l(0, "lowf"), b"x\n");
        mkdirs(s.l(0, "lowd"));
        s
    };
    let (ours, theirs) = (stack(), stack());
    let opts = ["xattr_permissions=2"];
    let a = ours.mount_layerfs(&opts, true);
    let b = theirs.mount_program(&fo, &opts, true);
    let steps = "umask 022; echo n > new; mkdir nd; chown 5:6 new; chmod 600 lowf; \
        chown 7:8 lowd; touch t2; chmod 640 t2; mkdir nd2; chmod 700 nd2; chown 9:9 nd2; \
        chmod 2750 nd";
    for m in [&a.path, &b.path] {
        sh(steps, m);
    }
    assert_eq!(owner(a.p("new")), (5, 6));
    assert_same_view_except(&a.path, &b.path, &["new"]);
    a.unmount();
    b.unmount();
    let parsed = |s: &Stack, rel: &str| {
        let v = lgetxattr_str(s.u(rel), ATTR).unwrap_or_else(|| panic!("no {ATTR} on {rel}"));
        let f: Vec<u32> = v
            .split(':')
            .enumerate()
            .map(|(i, x)| {
                if i == 2 {
                    u32::from_str_radix(x, 8).unwrap() & 0o7777
                } else {
                    x.parse().unwrap()
                }
            })
            .collect();
        (f[0], f[1], f[2])
    };
    for rel in ["", "nd", "lowf", "lowd", "t2", "nd2"] {
        assert_eq!(
            parsed(&ours, rel),
            parsed(&theirs, rel),
            "{ATTR} of {rel:?}"
        );
    }
    assert_eq!(parsed(&ours, "new"), (5, 6, 0o644));
    assert_eq!(parsed(&theirs, "new"), (5, 6, 0o755));
    // The files themselves keep the daemon's owner.
    assert_eq!(owner(ours.u("new")), (0, 0));
}

/// [`assert_same_view`] leaving out `skip` (paths where a difference is known).
fn assert_same_view_except(ours: &Path, theirs: &Path, skip: &[&str]) {
    let filtered = |root: &Path| -> BTreeMap<String, String> {
        view(root)
            .into_iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .collect()
    };
    let (a, b) = (filtered(ours), filtered(theirs));
    assert_eq!(a, b, "the two mounts differ");
}

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

/// The same as [`layers_written_by_fuse_overlayfs_look_the_same`] for a rootless
/// fuse-overlayfs, as podman runs it: in a user namespace mapping root to the test user
/// and 1..65536 to its subordinate ids. There it cannot write `trusted.*`, so its opaque
/// directories carry `user.fuseoverlayfs.opaque`; the layers it wrote are then mounted
/// read-only in the same namespace by both programs and listed with owners, modes, sizes,
/// link targets and xattrs.
#[test]
fn layers_written_by_rootless_fuse_overlayfs_look_the_same() {
    use common::rootless::*;
    fuse_overlayfs();
    let user = fuse_user();
    let dir = UserDir::new(&user);
    let d = dir.path().display();
    let script = format!(
        r#"cd {d}
mkdir -p l/etc l/hid/deep l/own u w m m-ours m-theirs
echo conf > l/etc/conf; echo h > l/hid/deep/x; echo o > l/own/f
chown 5:6 l/own/f; chown 1000:1000 l/own; ln -s etc/conf l/link
fuse-overlayfs -o lowerdir=l,upperdir=u,workdir=w m
echo more >> m/etc/conf; rm -r m/hid; mkdir m/hid; echo y > m/hid/y
rm m/own/f; echo n > m/new; chown 7:8 m/new; mkdir m/nd; chmod 2750 m/nd
setfattr -n user.note -v hi m/etc/conf
umount m
getfattr -n user.fuseoverlayfs.opaque --only-values u/hid; echo
getfattr -n user.fuseoverlayfs.origin --only-values u/etc/conf; echo
fuse-overlayfs -o lowerdir=u:l m-theirs
layerfs -o lowerdir=u:l m-ours
for m in m-ours m-theirs; do
  (cd $m && find . | sort | while read -r p; do
     echo "$p $(stat -c '%F %a %u:%g %s' "$p") $(readlink "$p" || true) $(getfattr -h -d -m - "$p" 2>/dev/null | grep -v '^#' | sort | tr '\n' ' ')"
   done) > $m.txt
done
umount m-ours; umount m-theirs
diff m-ours.txt m-theirs.txt
cat m-ours.txt
"#
    );
    let out = user_ok(&user, &in_userns(&subid_userns_args(&user), &script), &[]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("y"),
        "rootless fuse-overlayfs's opaque xattr:\n{out}"
    );
    assert_eq!(
        lines.next().map(|l| l.trim_end_matches('\0')),
        Some("etc/conf"),
        "its origin xattr:\n{out}"
    );
    assert!(out.contains("./hid/y "), "{out}");
    assert!(
        !out.contains("./hid/deep"),
        "opaque directory shows lower content:\n{out}"
    );
    assert!(
        !out.contains("fuseoverlayfs"),
        "fuse-overlayfs's xattrs show:\n{out}"
    );
    assert!(out.contains("./new regular file 644 7:8 "), "{out}");
}
