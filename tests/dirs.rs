//! mkdir/rmdir, opaque recreation, readdir (many entries, stable offsets), fsyncdir.
mod common;
use common::*;
use std::collections::BTreeSet;
use std::fs;

#[test]
fn mkdir_and_rmdir() {
    let s = Stack::new(1);
    mkdirs(s.l(0, "lowerempty"));
    let m = s.mount();
    fs::create_dir(m.p("new")).unwrap();
    assert!(lstat(m.p("new")).is_dir());
    assert_errno(fs::create_dir(m.p("new")), libc::EEXIST);
    assert_errno(fs::create_dir(m.p("lowerempty")), libc::EEXIST);
    fs::remove_dir(m.p("new")).unwrap();
    fs::remove_dir(m.p("lowerempty")).unwrap();
    assert!(ls(m.p("")).is_empty());
    assert_errno(fs::remove_dir(m.p("nope")), libc::ENOENT);
}

#[test]
fn rmdir_is_enotempty_while_any_layer_shows_a_child() {
    let s = Stack::new(2);
    put(s.l(1, "d/bottom"), b"1");
    put(s.l(0, "d/top"), b"0");
    let m = s.mount();
    put(m.p("d/up"), b"u");
    assert_errno(fs::remove_dir(m.p("d")), libc::ENOTEMPTY);
    fs::remove_file(m.p("d/up")).unwrap();
    assert_errno(fs::remove_dir(m.p("d")), libc::ENOTEMPTY);
    fs::remove_file(m.p("d/top")).unwrap();
    assert_errno(fs::remove_dir(m.p("d")), libc::ENOTEMPTY);
    fs::remove_file(m.p("d/bottom")).unwrap();
    assert!(ls(m.p("d")).is_empty());
    fs::remove_dir(m.p("d")).unwrap();
    assert!(!exists(m.p("d")));
    assert_errno(fs::remove_file(m.p("nofile")), libc::ENOENT);
    m.unmount();
    let m = s.mount();
    assert!(!exists(m.p("d")));
}

#[test]
fn recreated_lower_dir_is_opaque() {
    let s = Stack::new(2);
    put(s.l(1, "d/old1"), b"1");
    put(s.l(0, "d/sub/old0"), b"0");
    let m = s.mount();
    fs::remove_dir_all(m.p("d")).unwrap();
    assert!(!exists(m.p("d")));
    fs::create_dir(m.p("d")).unwrap();
    assert!(
        ls(m.p("d")).is_empty(),
        "old lower children visible: {:?}",
        ls(m.p("d"))
    );
    assert!(!exists(m.p("d/old1")));
    put(m.p("d/new"), b"n");
    fs::create_dir(m.p("d/sub")).unwrap();
    assert!(ls(m.p("d/sub")).is_empty());
    m.unmount();
    let m = s.mount();
    assert_eq!(ls(m.p("d")), ["new", "sub"]);
    assert!(ls(m.p("d/sub")).is_empty());
}

/// Reads a directory with libc, recording (telldir before each entry, name).
fn read_with_offsets(path: &std::path::Path) -> Vec<(i64, String)> {
    let c = cstr(path);
    // SAFETY: valid path; the DIR* is closed below.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!dir.is_null());
    let mut out = Vec::new();
    loop {
        // SAFETY: dir is a valid open DIR*.
        let pos = unsafe { libc::telldir(dir) };
        // SAFETY: dir is a valid open DIR*.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        out.push((pos as i64, name.to_string_lossy().into_owned()));
    }
    // Seek back to every recorded offset and check the same entry comes next.
    for (pos, name) in out.iter().rev().step_by(7) {
        // SAFETY: dir is valid; pos came from telldir on it.
        unsafe { libc::seekdir(dir, *pos as libc::c_long) };
        // SAFETY: dir is valid.
        let ent = unsafe { libc::readdir(dir) };
        assert!(!ent.is_null(), "seekdir to {pos} then readdir gave nothing");
        // SAFETY: valid dirent.
        let got = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        assert_eq!(
            got.to_string_lossy(),
            *name,
            "seekdir({pos}) landed elsewhere"
        );
    }
    // SAFETY: dir is valid and not used afterwards.
    unsafe { libc::closedir(dir) };
    out
}

#[test]
fn readdir_many_entries_with_stable_offsets() {
    let s = Stack::new(2);
    let mut want = BTreeSet::new();
    for i in 0..1500 {
        let name = format!("entry-with-a-longish-name-{i:05}");
        let layer = i % 3;
        if layer == 2 {
            put(s.u(&format!("big/{name}")), b"");
        } else {
            put(s.l(layer, &format!("big/{name}")), b"");
        }
        want.insert(name);
    }
    // Same names in several layers appear once; whiteouts hide.
    for i in 0..300 {
        put(
            s.l(1, &format!("big/entry-with-a-longish-name-{i:05}")),
            b"dup",
        );
    }
    for i in (1000..1500).step_by(5) {
        let name = format!("entry-with-a-longish-name-{i:05}");
        if i % 3 == 2 {
            fs::remove_file(s.u(&format!("big/{name}"))).unwrap();
        } else {
            whiteout_chardev(s.u("big"), &name);
        }
        want.remove(&name);
    }
    let m = s.mount();
    let got = read_with_offsets(&m.p("big"));
    let names: Vec<&String> = got.iter().map(|(_, n)| n).collect();
    let set: BTreeSet<String> = names
        .iter()
        .filter(|n| **n != "." && **n != "..")
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == ".").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "..").count(), 1);
    assert_eq!(names.len(), set.len() + 2, "duplicate entries in readdir");
    assert_eq!(set, want);
    // Mutating the directory between passes doesn't break reading it.
    put(m.p("big/zzz-added"), b"");
    let again = read_with_offsets(&m.p("big"));
    assert_eq!(again.len(), got.len() + 1);
}

#[test]
fn readdir_hides_markers_and_reports_types() {
    let s = Stack::new(2);
    put(s.l(1, "d/f"), b"");
    mkdirs(s.l(1, "d/sub"));
    std::os::unix::fs::symlink("f", s.l(1, "d/l")).unwrap();
    put(s.l(1, "d/gone"), b"");
    whiteout_chardev(s.l(0, "d"), "gone");
    let m = s.mount();
    let mut types: Vec<(String, bool, bool)> = fs::read_dir(m.p("d"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                t.is_dir(),
                t.is_symlink(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("f".to_string(), false, false),
            ("l".to_string(), false, true),
            ("sub".to_string(), true, false)
        ]
    );
    fs::File::open(m.p("d")).unwrap().sync_all().unwrap();
}

/// An open directory stream, read one entry at a time (libc fetches entries in batches,
/// so the kernel and the daemon see reads at positions well inside the directory).
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(path: &std::path::Path) -> DirStream {
        let c = cstr(path);
        // SAFETY: valid path; the DIR* is closed on drop.
        let dir = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!dir.is_null(), "opendir {}", path.display());
        DirStream(dir)
    }

    fn next_name(&mut self) -> Option<String> {
        // SAFETY: self.0 is a valid open DIR*.
        let ent = unsafe { libc::readdir(self.0) };
        if ent.is_null() {
            return None;
        }
        // SAFETY: readdir returned a valid dirent with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        Some(name.to_string_lossy().into_owned())
    }

    fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_name())
            .filter(|n| n != "." && n != "..")
            .collect()
    }

    fn rewind(&mut self) {
        // SAFETY: self.0 is a valid open DIR*.
        unsafe { libc::rewinddir(self.0) };
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: self.0 is valid and not used afterwards.
        unsafe { libc::closedir(self.0) };
    }
}

/// POSIX: while a directory is read, entries added or removed since opendir may or may
/// not show up, but every other entry shows up exactly once; after rewinddir the listing
/// is current. Positions must not shift when entries before them go.
#[test]
fn readdir_continues_across_changes_and_rewinddir_sees_them() {
    let s = Stack::new(2);
    let name = |i: usize| format!("a-name-long-enough-to-fill-directory-buffers-quickly-{i:05}");
    let mut original = BTreeSet::new();
    for i in 0..4000 {
        put(s.l(i % 2, &format!("d/{}", name(i))), b"");
        original.insert(name(i));
    }
    let m = s.mount();
    let mut stream = DirStream::open(&m.p("d"));
    let mut got = Vec::new();
    while got.len() < 1000 {
        let n = stream.next_name().expect("directory ended early");
        if n != "." && n != ".." {
            got.push(n);
        }
    }
    let seen: BTreeSet<String> = got.iter().cloned().collect();
    let unseen: Vec<String> = original.difference(&seen).cloned().collect();
    let mut removed = BTreeSet::new();
    for n in seen
        .iter()
        .step_by(5)
        .take(200)
        .chain(unseen.iter().step_by(7).take(200))
    {
        fs::remove_file(m.p(&format!("d/{n}"))).unwrap();
        removed.insert(n.clone());
    }
    let added: BTreeSet<String> = (5000..5200).map(name).collect();
    for n in &added {
        put(m.p(&format!("d/{n}")), b"");
    }
    got.extend(stream.rest());
    let listed: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(listed.len(), got.len(), "an entry was listed twice");
    let kept: BTreeSet<String> = original.difference(&removed).cloned().collect();
    let missing: Vec<&String> = kept.difference(&listed).collect();
    assert!(missing.is_empty(), "untouched entries skipped: {missing:?}");
    let strays: Vec<&String> = listed
        .iter()
        .filter(|n| !original.contains(*n) && !added.contains(*n))
        .collect();
    assert!(strays.is_empty(), "entries that never existed: {strays:?}");

    stream.rewind();
    let now: BTreeSet<String> = stream.rest().into_iter().collect();
    let want: BTreeSet<String> = kept.union(&added).cloned().collect();
    assert_eq!(now.len(), want.len());
    assert!(now == want, "rewinddir does not show the current directory");
}
