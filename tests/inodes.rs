//! st_ino: unique, stable through copy-up and across remount; st_dev is the mount's.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

fn layers() -> Stack {
    let s = Stack::new(3);
    for (i, l) in [(0, "a"), (1, "b"), (2, "c")] {
        for j in 0..10 {
            put(s.l(i, &format!("d/{l}{j}")), format!("{i}{j}").as_bytes());
            put(s.l(i, &format!("{l}dir{j}/f")), b"x");
        }
        // The same relative name in every layer: only the top one is visible.
        put(s.l(i, "same"), format!("{i}").as_bytes());
    }
    put(s.u("d/upper"), b"u");
    s
}

fn inos(root: &std::path::Path) -> BTreeMap<String, (u64, u64)> {
    snapshot(root)
        .into_keys()
        .map(|k| {
            let md = lstat(root.join(&k));
            (k, (md.ino(), md.dev()))
        })
        .collect()
}

#[test]
fn distinct_files_have_distinct_inodes_and_one_dev() {
    let s = layers();
    let m = s.mount();
    put(m.p("d/new"), b"n");
    fs::create_dir(m.p("newdir")).unwrap();
    let all = inos(&m.path);
    let dev = lstat(m.p("")).dev();
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for (k, (ino, d)) in &all {
        assert_eq!(*d, dev, "{k}: st_dev differs from the mount's");
        if let Some(other) = seen.insert(*ino, k.clone()) {
            panic!("{k} and {other} share st_ino {ino}");
        }
    }
    assert!(all.len() > 60);
}

#[test]
fn inode_numbers_stable_through_copy_up_and_remount() {
    let s = layers();
    let m = s.mount();
    let before = inos(&m.path);
    chmod(m.p("d/a0"), 0o600).unwrap();
    fs::write(m.p("d/b1"), b"rewritten").unwrap();
    lsetxattr(m.p("d/c2"), "user.x", b"1").unwrap();
    put(m.p("adir0/new"), b"copies the dir up");
    lchown(m.p("bdir1"), 7, 7).unwrap();
    let after = inos(&m.path);
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k}: st_ino changed by copy-up");
    }
    // Keep an open file's inode across a copy-up too.
    let f = fs::File::open(m.p("d/c5")).unwrap();
    let ino = fstat(&f).unwrap().st_ino;
    fs::write(m.p("d/c5"), b"new").unwrap();
    assert_eq!(lstat(m.p("d/c5")).ino(), ino);
    drop(f);
    let with_new = inos(&m.path);
    m.unmount();
    let m = s.mount();
    let remounted = inos(&m.path);
    let strip = |x: &BTreeMap<String, (u64, u64)>| -> BTreeMap<String, u64> {
        x.iter().map(|(k, v)| (k.clone(), v.0)).collect()
    };
    let (a, b) = (strip(&with_new), strip(&remounted));
    for (k, v) in &a {
        if k.is_empty() {
            continue;
        }
        assert_eq!(b.get(k), Some(v), "{k}: st_ino changed across remount");
    }
    assert_eq!(a.len(), b.len());
}

#[test]
fn renamed_file_keeps_its_inode() {
    let s = layers();
    let m = s.mount();
    let ino = lstat(m.p("d/a3")).ino();
    fs::rename(m.p("d/a3"), m.p("moved")).unwrap();
    assert_eq!(lstat(m.p("moved")).ino(), ino);
    m.unmount();
    let m = s.mount();
    assert_eq!(lstat(m.p("moved")).ino(), ino);
}

/// With every layer on one filesystem, an object keeps the inode number its layer gives
/// it, as on kernel overlayfs (tools that recorded numbers in the layer, such as git's
/// index, see the same files), and keeps it across copy-up.
#[test]
fn one_filesystem_keeps_layer_inode_numbers() {
    use std::os::unix::fs::MetadataExt;
    let s = Stack::new(2);
    put(s.l(1, "d/bottom"), b"b");
    put(s.l(0, "d/top"), b"t");
    let m = s.mount();
    for (layer, name) in [(1, "d/bottom"), (0, "d/top")] {
        let want = lstat(s.l(layer, name)).ino();
        assert_eq!(lstat(m.p(name)).ino(), want, "{name}");
    }
    let before = lstat(m.p("d/bottom")).ino();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("d/bottom"))
        .unwrap();
    assert_eq!(
        lstat(m.p("d/bottom")).ino(),
        before,
        "copy-up changed the inode number"
    );
}
