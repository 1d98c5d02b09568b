//! rename: files and dirs, over existing targets, RENAME_NOREPLACE, RENAME_EXCHANGE,
//! lower directories (redirect_dir), error cases.
mod common;
use common::*;
use std::fs;

const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
const EXCHANGE: u32 = libc::RENAME_EXCHANGE;

#[test]
fn rename_lower_file_to_new_name() {
    let s = Stack::new(2);
    put(s.l(1, "d/a"), b"A");
    let m = s.mount();
    fs::rename(m.p("d/a"), m.p("d/b")).unwrap();
    assert_eq!(read_str(m.p("d/b")), "A");
    assert!(!exists(m.p("d/a")));
    assert_eq!(ls(m.p("d")), ["b"]);
    fs::rename(m.p("d/b"), m.p("top")).unwrap();
    assert_eq!(ls(m.p("d")), Vec::<String>::new());
    assert_eq!(read_str(m.p("top")), "A");
    m.unmount();
    let m = s.mount();
    assert_eq!(ls(m.p("")), ["d", "top"]);
    assert_eq!(ls(m.p("d")), Vec::<String>::new());
    assert_eq!(read(s.l(1, "d/a")), b"A");
}

#[test]
fn rename_over_existing_lower_target_then_unlink_stays_deleted() {
    let s = Stack::new(2);
    put(s.l(1, "a"), b"A");
    put(s.l(0, "b"), b"B");
    put(s.l(1, "b"), b"B-bottom");
    let m = s.mount();
    fs::rename(m.p("a"), m.p("b")).unwrap();
    assert_eq!(read_str(m.p("b")), "A");
    assert!(!exists(m.p("a")));
    fs::remove_file(m.p("b")).unwrap();
    assert!(!exists(m.p("b")), "lower file came back after unlink");
    assert!(!exists(m.p("a")));
    assert!(ls(m.p("")).is_empty());
    m.unmount();
    let m = s.mount();
    assert!(ls(m.p("")).is_empty(), "{:?}", ls(m.p("")));
}

#[test]
fn rename_noreplace() {
    let s = Stack::new(1);
    put(s.l(0, "a"), b"A");
    put(s.l(0, "b"), b"B");
    put(s.l(0, "c"), b"C");
    let m = s.mount();
    assert_errno(renameat2(m.p("a"), m.p("b"), NOREPLACE), libc::EEXIST);
    assert_eq!(read_str(m.p("a")), "A");
    assert_eq!(read_str(m.p("b")), "B");
    renameat2(m.p("a"), m.p("n"), NOREPLACE).unwrap();
    assert_eq!(read_str(m.p("n")), "A");
    // A whited-out name is free.
    fs::remove_file(m.p("c")).unwrap();
    renameat2(m.p("n"), m.p("c"), NOREPLACE).unwrap();
    assert_eq!(read_str(m.p("c")), "A");
    assert_eq!(ls(m.p("")), ["b", "c"]);
}

#[test]
fn rename_exchange() {
    let s = Stack::new(1);
    put(s.l(0, "low"), b"LOW");
    put(s.l(0, "dir/inner"), b"I");
    let m = s.mount();
    put(m.p("up"), b"UP");
    renameat2(m.p("low"), m.p("up"), EXCHANGE).unwrap();
    assert_eq!(read_str(m.p("low")), "UP");
    assert_eq!(read_str(m.p("up")), "LOW");
    renameat2(m.p("dir"), m.p("up"), EXCHANGE).unwrap();
    assert_eq!(read_str(m.p("dir")), "LOW");
    assert_eq!(ls(m.p("up")), ["inner"]);
    assert_eq!(read_str(m.p("up/inner")), "I");
    assert_errno(
        renameat2(m.p("low"), m.p("missing"), EXCHANGE),
        libc::ENOENT,
    );
    m.unmount();
    let m = s.mount();
    assert_eq!(ls(m.p("")), ["dir", "low", "up"]);
    assert_eq!(read_str(m.p("dir")), "LOW");
    assert_eq!(read_str(m.p("up/inner")), "I");
}

#[test]
fn rename_lower_directory_keeps_content_and_survives_remount() {
    let s = Stack::new(2);
    put(s.l(1, "d/bottom"), b"b");
    put(s.l(1, "d/sub/deep"), b"deep");
    put(s.l(0, "d/top"), b"t");
    let m = s.mount();
    fs::rename(m.p("d"), m.p("e")).unwrap();
    assert!(!exists(m.p("d")));
    assert_eq!(ls(m.p("e")), ["bottom", "sub", "top"]);
    assert_eq!(read_str(m.p("e/sub/deep")), "deep");
    assert_eq!(read_str(m.p("e/top")), "t");
    put(m.p("e/added"), b"+");
    fs::create_dir(m.p("d")).unwrap();
    assert!(
        ls(m.p("d")).is_empty(),
        "old lower content visible under the old name"
    );
    m.unmount();
    let m = s.mount();
    assert_eq!(ls(m.p("")), ["d", "e"]);
    assert!(ls(m.p("d")).is_empty());
    assert_eq!(ls(m.p("e")), ["added", "bottom", "sub", "top"]);
    assert_eq!(read_str(m.p("e/bottom")), "b");
    // And again, to a deeper place.
    fs::create_dir(m.p("x")).unwrap();
    fs::rename(m.p("e"), m.p("x/y")).unwrap();
    assert_eq!(ls(m.p("x/y")), ["added", "bottom", "sub", "top"]);
    m.unmount();
    let m = s.mount();
    assert_eq!(ls(m.p("x/y")), ["added", "bottom", "sub", "top"]);
    assert_eq!(read_str(m.p("x/y/sub/deep")), "deep");
    assert!(!exists(m.p("e")));
}

#[test]
fn rename_lower_directory_without_redirect_dir_is_exdev() {
    let s = Stack::new(1);
    put(s.l(0, "d/f"), b"f");
    let m = s.mount_opts(&["redirect_dir=off"]);
    assert_errno(fs::rename(m.p("d"), m.p("e")), libc::EXDEV);
    assert_eq!(ls(m.p("d")), ["f"]);
    // A directory that lives only in upper still renames.
    fs::create_dir(m.p("u")).unwrap();
    put(m.p("u/x"), b"x");
    fs::rename(m.p("u"), m.p("v")).unwrap();
    assert_eq!(ls(m.p("v")), ["x"]);
}

#[test]
fn rename_error_cases() {
    let s = Stack::new(1);
    put(s.l(0, "full/child"), b"c");
    mkdirs(s.l(0, "empty"));
    mkdirs(s.l(0, "src/sub"));
    put(s.l(0, "file"), b"f");
    let m = s.mount();
    assert_errno(fs::rename(m.p("src"), m.p("full")), libc::ENOTEMPTY);
    assert_errno(fs::rename(m.p("file"), m.p("empty")), libc::EISDIR);
    assert_errno(fs::rename(m.p("src"), m.p("file")), libc::ENOTDIR);
    assert_errno(fs::rename(m.p("nope"), m.p("x")), libc::ENOENT);
    assert_errno(fs::rename(m.p("src"), m.p("src/sub/in")), libc::EINVAL);
    fs::rename(m.p("src"), m.p("empty")).unwrap();
    assert_eq!(ls(m.p("empty")), ["sub"]);
    assert_eq!(ls(m.p("")), ["empty", "file", "full"]);
    // After its child is gone, a lower directory can be replaced.
    fs::remove_file(m.p("full/child")).unwrap();
    fs::rename(m.p("empty"), m.p("full")).unwrap();
    assert_eq!(ls(m.p("full")), ["sub"]);
    assert_eq!(ls(m.p("")), ["file", "full"]);
}
