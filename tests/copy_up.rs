//! Copy-up: keeps data, holes, mode, owner, times and xattrs; parents first; atomic via
//! workdir; open readers keep working.
mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

/// A valid VFS_CAP_REVISION_2 security.capability value granting CAP_NET_BIND_SERVICE.
fn cap_value() -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0200_0000u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

fn appended(path: &std::path::Path, data: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn data_is_kept_and_lower_untouched() {
    let s = Stack::new(2);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    put(s.l(1, "dir/big"), &big);
    let m = s.mount();
    appended(&m.p("dir/big"), b"tail");
    let mut want = big.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(read(m.p("dir/big")), want);
    assert_eq!(read(s.l(1, "dir/big")), big, "lower layer was modified");
    assert_eq!(read(s.u("dir/big")), want);
}

#[test]
fn every_change_copies_up_and_never_touches_lower() {
    type Op = fn(&std::path::Path, &std::path::Path);
    let ops: [(&str, Op); 8] = [
        ("truncate", |p, _| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(3)
                .unwrap()
        }),
        ("chmod", |p, _| chmod(p, 0o600).unwrap()),
        ("chown", |p, _| lchown(p, 4242, 4343).unwrap()),
        ("utimens", |p, _| {
            utimens(p, Some((5, 0)), Some((6, 0))).unwrap()
        }),
        ("setxattr", |p, _| lsetxattr(p, "user.t", b"v").unwrap()),
        ("link", |p, d| fs::hard_link(p, d.join("f.link")).unwrap()),
        ("rename", |p, d| fs::rename(p, d.join("f.renamed")).unwrap()),
        ("write", |p, _| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .write_all_at(b"ZZ", 1)
                .unwrap()
        }),
    ];
    for (name, op) in ops {
        let s = Stack::new(1);
        put(s.l(0, "d/f"), b"original");
        chmod(s.l(0, "d/f"), 0o644).unwrap();
        let before = snapshot(&s.lowers[0]);
        let m = s.mount();
        op(&m.p("d/f"), &m.p("d"));
        drop(m);
        let after = snapshot(&s.lowers[0]);
        assert_eq!(
            comparable(&before),
            comparable(&after),
            "{name}: lower changed:\n{}",
            diff(&before, &after, "before", "after")
        );
        assert!(exists(s.u("d")), "{name}: parent not copied up");
    }
}

#[test]
fn sparse_file_stays_sparse() {
    let s = Stack::new(1);
    let f = fs::File::create(s.l(0, "sparse")).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    let m = s.mount();
    appended(&m.p("sparse"), b"y");
    let md = lstat(m.p("sparse"));
    assert_eq!(md.size(), (256 << 20) + 1);
    assert!(
        md.blocks() * 512 < 4 << 20,
        "copy-up filled the holes: {} blocks",
        md.blocks()
    );
    let up = lstat(s.u("sparse"));
    assert!(up.blocks() * 512 < 4 << 20, "upper copy not sparse");
    let mut f = fs::File::open(m.p("sparse")).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    f.seek(SeekFrom::Start(256 << 20)).unwrap();
    f.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
}

#[test]
fn metadata_and_xattrs_are_kept() {
    let s = Stack::new(1);
    let p = s.l(0, "f");
    put(&p, b"content");
    chmod(&p, 0o4751).unwrap();
    lchown(&p, 1234, 5678).unwrap();
    chmod(&p, 0o0751).unwrap();
    lsetxattr(&p, "user.foo", b"bar").unwrap();
    lsetxattr(&p, "trusted.mine", b"t").unwrap();
    lsetxattr(&p, "security.capability", &cap_value()).unwrap();
    utimens(
        &p,
        Some((1_000_000_000, 111)),
        Some((1_100_000_000, 123_456_789)),
    )
    .unwrap();
    let m = s.mount();
    // An xattr change copies up without touching mtime.
    lsetxattr(m.p("f"), "user.other", b"o").unwrap();
    assert!(exists(s.u("f")), "setxattr did not copy up");
    for path in [m.p("f"), s.u("f")] {
        let md = lstat(&path);
        assert_eq!(md.mode() & 0o7777, 0o751, "{}", path.display());
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "{}", path.display());
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_100_000_000, 123_456_789));
        assert_eq!(lgetxattr(&path, "user.foo").unwrap(), b"bar");
        assert_eq!(lgetxattr(&path, "trusted.mine").unwrap(), b"t");
        assert_eq!(lgetxattr(&path, "user.other").unwrap(), b"o");
        assert_eq!(
            lgetxattr(&path, "security.capability").unwrap(),
            cap_value()
        );
    }
    assert_eq!(read_str(m.p("f")), "content");
}

#[test]
fn parents_are_copied_up_first_with_their_metadata() {
    let s = Stack::new(2);
    put(s.l(1, "a/b/c/f"), b"deep");
    for (d, mode, uid) in [("a", 0o750, 11), ("a/b", 0o705, 22), ("a/b/c", 0o711, 33)] {
        chmod(s.l(1, d), mode).unwrap();
        lchown(s.l(1, d), uid, uid + 100).unwrap();
        lsetxattr(s.l(1, d), "user.dir", d.as_bytes()).unwrap();
    }
    for d in ["a/b/c", "a/b", "a"] {
        utimens(s.l(1, d), Some((2_000_000, 0)), Some((3_000_000, 0))).unwrap();
    }
    let m = s.mount();
    appended(&m.p("a/b/c/f"), b"!");
    assert_eq!(read_str(m.p("a/b/c/f")), "deep!");
    for (d, mode, uid) in [("a", 0o750, 11), ("a/b", 0o705, 22), ("a/b/c", 0o711, 33)] {
        for md in [lstat(s.u(d)), lstat(m.p(d))] {
            assert!(md.is_dir());
            assert_eq!(md.mode() & 0o7777, mode, "{d}");
            assert_eq!((md.uid(), md.gid()), (uid, uid + 100), "{d}");
        }
        assert_eq!(lgetxattr(s.u(d), "user.dir").unwrap(), d.as_bytes());
    }
    for d in ["a", "a/b"] {
        assert_eq!(lstat(m.p(d)).mtime(), 3_000_000, "{d} mtime changed");
    }
}

#[test]
fn workdir_left_clean() {
    let s = Stack::new(1);
    for i in 0..20 {
        put(
            s.l(0, &format!("d{}/f{i}", i % 3)),
            format!("{i}").as_bytes(),
        );
    }
    let m = s.mount();
    for i in 0..20 {
        appended(&m.p(&format!("d{}/f{i}", i % 3)), b"+");
    }
    fs::remove_file(m.p("d0/f0")).unwrap();
    fs::rename(m.p("d1/f1"), m.p("d2/moved")).unwrap();
    m.unmount();
    // Kernel overlayfs keeps its own empty `work/` dir and an `index/` for hard links.
    let leftovers: Vec<String> = s
        .work_entries()
        .into_iter()
        .filter(|n| !s.work.join(n).is_dir() && !n.starts_with("index/"))
        .collect();
    assert!(leftovers.is_empty(), "workdir not clean: {leftovers:?}");
}

#[test]
fn reader_open_before_copy_up_keeps_working() {
    let s = Stack::new(1);
    let old = b"0123456789abcdef".repeat(1000);
    put(s.l(0, "f"), &old);
    let m = s.mount();
    let mut r = fs::File::open(m.p("f")).unwrap();
    let mut head = [0u8; 16];
    r.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"0123456789abcdef");
    let new = b"NEWNEWNEWNEWNEW!".repeat(1000);
    let mut w = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    w.write_all(&new).unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(read(m.p("f")), new);
    // The old descriptor still reads: either the old bytes or the new ones, never an error
    // or a mix of lengths.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), old.len() - 16);
    assert!(
        rest == old[16..] || rest == new[16..],
        "garbled read after copy-up"
    );
    r.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert!(all == old || all == new);
    assert_eq!(fstat(&r).unwrap().st_size as usize, old.len());
    assert_eq!(read(s.l(0, "f")), old);
}

/// The data of a copy-up is copied without the namespace lock: lookups of other names made
/// while a 512 MiB file is copied up are answered before it ends.
#[test]
fn lookups_are_answered_during_a_large_copy_up() {
    lookups_during_a_large_copy_up(None);
}
