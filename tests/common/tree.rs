//! Tree snapshots: every entry below a directory with its type, mode, owner, content
//! hash, link target, xattrs and numbers, and the comparisons the differential tests make
//! between two trees (what may legitimately differ between two mounts is dropped first).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{lgetxattr, llistxattr, lstat};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' dir, 'l' symlink, 'c' char dev, 'b' block dev, 'p' fifo, 's' socket
    pub kind: char,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub target: Option<String>,
    pub rdev: u64,
    pub nlink: u64,
    /// Xattrs except the overlay's own (`trusted.overlay.*`, `user.overlay.*`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub ino: u64,
    pub mtime: (i64, i64),
}

pub type Snapshot = BTreeMap<String, Entry>;

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind_of(ft: fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        'f'
    }
}

pub fn entry(path: &Path) -> Entry {
    let md = lstat(path);
    let kind = kind_of(md.file_type());
    let sha256 = if kind == 'f' {
        let mut f = fs::File::open(path).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        Some(sha256_hex(&buf))
    } else {
        None
    };
    let target = if kind == 'l' {
        Some(fs::read_link(path).unwrap().to_string_lossy().into_owned())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    for name in llistxattr(path).unwrap_or_default() {
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        if let Ok(v) = lgetxattr(path, &name) {
            xattrs.insert(name, v);
        }
    }
    Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        sha256,
        target,
        rdev: if kind == 'c' || kind == 'b' {
            md.rdev()
        } else {
            0
        },
        nlink: md.nlink(),
        xattrs,
        ino: md.ino(),
        mtime: (md.mtime(), md.mtime_nsec()),
    }
}

/// Every entry below `root` (root itself as ""), keyed by relative path.
pub fn snapshot(root: impl AsRef<Path>) -> Snapshot {
    let mut out = BTreeMap::new();
    out.insert(String::new(), entry(root.as_ref()));
    snap_dir(root.as_ref(), "", &mut out);
    out
}

fn snap_dir(dir: &Path, prefix: &str, out: &mut Snapshot) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = format!("{prefix}{}", n.to_string_lossy());
        let e = entry(&p);
        let is_dir = e.kind == 'd';
        out.insert(rel.clone(), e);
        if is_dir {
            snap_dir(&p, &format!("{rel}/"), out);
        }
    }
}

/// Every name under `root` (as "KIND PATH", sorted), KIND a type letter: `d`, `l`, `p`,
/// `f` (anything else), or `c<major>:<minor>` for a character device.
pub fn type_tree(root: impl AsRef<Path>) -> Vec<String> {
    let mut out: Vec<String> = snapshot(root)
        .into_iter()
        .filter(|(rel, _)| !rel.is_empty())
        .map(|(rel, e)| match e.kind {
            'c' => {
                let (major, minor) = (libc::major(e.rdev), libc::minor(e.rdev));
                format!("c{major}:{minor} {rel}")
            }
            'd' | 'l' | 'p' => format!("{} {rel}", e.kind),
            _ => format!("f {rel}"),
        })
        .collect();
    out.sort();
    out
}

/// Drop what legitimately differs between two mounts of the same tree: inode numbers,
/// times, directory sizes and directory link counts (kernel overlayfs reports 1 for a
/// merged directory).
pub fn comparable(s: &Snapshot) -> Snapshot {
    s.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            e.ino = 0;
            e.mtime = (0, 0);
            if e.kind == 'd' {
                e.size = 0;
                e.nlink = 0;
            }
            (k.clone(), e)
        })
        .collect()
}

/// Human-readable diff of two snapshots (empty when equal).
pub fn diff(a: &Snapshot, b: &Snapshot, an: &str, bn: &str) -> String {
    let mut s = String::new();
    for (k, e) in a {
        match b.get(k) {
            None => s += &format!("only in {an}: {k:?} {e:?}\n"),
            Some(f) if f != e => s += &format!("differs {k:?}:\n  {an}: {e:?}\n  {bn}: {f:?}\n"),
            _ => {}
        }
    }
    for (k, e) in b {
        if !a.contains_key(k) {
            s += &format!("only in {bn}: {k:?} {e:?}\n");
        }
    }
    s
}
