//! Building layer trees on disk in each encoding (files, whiteouts, opaque directories),
//! and reading trees back with a message naming the path when that fails.

use std::fs;
use std::path::Path;

use super::{lsetxattr, mknod};

/// Create a file (and its parent dirs) with `content`.
pub fn put(path: impl AsRef<Path>, content: &[u8]) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn mkdirs(path: impl AsRef<Path>) {
    fs::create_dir_all(path.as_ref()).unwrap();
}

/// Kernel overlayfs encoding: a character device 0:0 named NAME.
pub fn whiteout_chardev(dir: impl AsRef<Path>, name: &str) {
    mkdirs(dir.as_ref());
    mknod(dir.as_ref().join(name), libc::S_IFCHR, 0, 0).unwrap();
}

/// OCI/AUFS encoding: an empty file `.wh.NAME`.
pub fn whiteout_file(dir: impl AsRef<Path>, name: &str) {
    put(dir.as_ref().join(format!(".wh.{name}")), b"");
}

pub fn opaque_trusted(dir: impl AsRef<Path>) {
    mkdirs(dir.as_ref());
    lsetxattr(dir.as_ref(), "trusted.overlay.opaque", b"y").unwrap();
}

pub fn opaque_user(dir: impl AsRef<Path>) {
    mkdirs(dir.as_ref());
    lsetxattr(dir.as_ref(), "user.overlay.opaque", b"y").unwrap();
}

pub fn opaque_file(dir: impl AsRef<Path>) {
    put(dir.as_ref().join(".wh..wh..opq"), b"");
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    fs::read(path.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

pub fn read_str(path: impl AsRef<Path>) -> String {
    String::from_utf8(read(path)).unwrap()
}

pub fn exists(path: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(path.as_ref()).is_ok()
}

pub fn lstat(path: impl AsRef<Path>) -> fs::Metadata {
    fs::symlink_metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.as_ref().display()))
}

/// Sorted names in a directory (no `.`/`..`).
pub fn ls(path: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path.as_ref())
        .unwrap_or_else(|e| panic!("readdir {}: {e}", path.as_ref().display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
