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
