//! Unit-test layer trees: an upper and N lower layer directories in a fresh temp dir,
//! written in every on-disk encoding (`whiteout`, `redirect`) and opened as a [`Stack`]
//! the way the daemon opens them, so lookups and listings are tested without a mount.
//! User xattrs only (`user.overlay.*`), which any filesystem with user xattrs takes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::layers::layer::Layer;
use crate::layers::redirect::Place;
use crate::layers::stack::{Found, Stack};
use crate::layers::whiteout::{self, Encoding, XattrNs};
use crate::sys;

/// Which layer a fixture call writes in.
#[derive(Debug, Clone, Copy)]
pub enum L {
    Upper,
    /// Lower `i`, 0 the top-most.
    Lower(usize),
}
pub use L::{Lower, Upper};

pub struct Layers {
    _root: tempfile::TempDir,
    pub upper: PathBuf,
    pub lowers: Vec<PathBuf>,
}

impl Layers {
    pub fn new(lowers: usize) -> Layers {
        let root = tempfile::tempdir().expect("temp dir");
        let upper = root.path().join("upper");
        fs::create_dir(&upper).expect("upper");
        let lowers: Vec<PathBuf> = (0..lowers)
            .map(|i| {
                let p = root.path().join(format!("l{i}"));
                fs::create_dir(&p).expect("lower");
                p
            })
            .collect();
        Layers {
            _root: root,
            upper,
            lowers,
        }
    }

    pub fn path(&self, l: L, rel: &str) -> PathBuf {
        let base = match l {
            Upper => &self.upper,
            Lower(i) => &self.lowers[i],
        };
        if rel.is_empty() {
            base.clone()
        } else {
            base.join(rel)
        }
    }

    /// A regular file holding `content`, parents made as needed.
    pub fn file(&self, l: L, rel: &str, content: &str) -> &Self {
        let p = self.path(l, rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("parents");
        }
        fs::write(&p, content).expect("write");
        self
    }

    pub fn dir(&self, l: L, rel: &str) -> &Self {
        fs::create_dir_all(self.path(l, rel)).expect("mkdir");
        self
    }

    /// Runs `f` on the parent directory's handle and the final name of `rel` in `l`.
    fn at<T>(&self, l: L, rel: &str, f: impl FnOnce(std::os::fd::BorrowedFd, &OsStr) -> T) -> T {
        let p = self.path(l, rel);
        let parent = p.parent().expect("parent");
        fs::create_dir_all(parent).expect("parents");
        let dir = fs::File::open(parent).expect("open parent");
        f(dir.as_fd(), p.file_name().expect("name"))
    }

    /// Kernel overlayfs's whiteout: a character device 0:0 (needs CAP_MKNOD).
    pub fn whiteout_chardev(&self, l: L, rel: &str) -> &Self {
        self.at(l, rel, |d, n| {
            whiteout::make_whiteout(d, n, Encoding::CharDev)
        })
        .expect("mknod whiteout (as root)");
        self
    }

    /// The OCI/AUFS whiteout: an empty `.wh.NAME`.
    pub fn whiteout_file(&self, l: L, rel: &str) -> &Self {
        self.at(l, rel, |d, n| whiteout::make_whiteout(d, n, Encoding::File))
            .expect("whiteout file");
        self
    }

    /// The directory `rel`, opaque by `user.overlay.opaque`.
    pub fn opaque_xattr(&self, l: L, rel: &str) -> &Self {
        self.dir(l, rel);
        self.at(l, rel, |d, n| whiteout::set_opaque(d, n, XattrNs::User))
            .expect("user.overlay.opaque");
        self
    }

    /// The directory `rel`, opaque by a `.wh..wh..opq` file inside it.
    pub fn opaque_marker(&self, l: L, rel: &str) -> &Self {
        self.file(l, &format!("{rel}/{}", whiteout::OPAQUE_MARKER), "")
    }

    /// The directory `rel` with `user.overlay.redirect` set to the raw `value`.
    pub fn redirect(&self, l: L, rel: &str, value: &[u8]) -> &Self {
        self.dir(l, rel);
        self.at(l, rel, |d, n| {
            sys::setxattr(d, n, OsStr::new(XattrNs::User.redirect()), value, 0)
        })
        .expect("user.overlay.redirect");
        self
    }

    /// The stack as the daemon opens it: the upper layer writable, the lowers immutable
    /// (their listings cached, as a mount reads them), nothing on a shared device.
    pub fn stack(&self) -> Stack {
        Stack {
            upper: Some(Layer::open(&self.upper).expect("open upper")),
            work: None,
            lowers: self
                .lowers
                .iter()
                .map(|p| Arc::new(Layer::open_immutable(p).expect("open lower")))
                .collect(),
            xattr_ns: XattrNs::User,
            whiteout: Encoding::File,
            shared_dev: None,
            refused: Mutex::new(HashSet::new()),
        }
    }
}

/// Looks the merged path `rel` up from the root, one component at a time, as the node
/// table does (a parent's upper path and its lower places, then the child's); `Ok(None)`
/// when a component is absent.
pub fn resolve(stack: &Stack, rel: &str) -> crate::error::Result<Option<Found>> {
    let mut upper: Option<PathBuf> = Some(PathBuf::new());
    let mut lowers = stack.root_lowers();
    let mut found = None;
    for name in Path::new(rel).iter() {
        let Some(f) = stack.resolve(upper.as_deref(), &lowers, name)? else {
            return Ok(None);
        };
        upper = match (&upper, f.upper) {
            (Some(u), true) => Some(u.join(name)),
            _ => None,
        };
        lowers = f.lower_dirs.clone();
        found = Some(f);
    }
    Ok(found)
}

/// Places as "LAYER:PATH", for assertions that read like the layers they check.
pub fn places(p: &[Place]) -> Vec<String> {
    p.iter()
        .map(|p| format!("{}:{}", p.layer, p.path.display()))
        .collect()
}
