//! Read-only view of a stack of layer directories (top-most first) with overlay lookup
//! rules: the first layer holding a name decides; a whiteout means absent; a directory
//! merges with lower ones until an opaque directory or a non-directory is met. Used to
//! expand renamed directories on commit and to tell "added" from "changed" in `diff`.
//!
//! Every layer is reached through its root handle with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: a symlink a layer holds is an entry, never a way somewhere else.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use layerfs::layers::writer::{open_beneath, LayerPath};
use layerfs::sys::{self, Stat};
use layerfs::whiteout;

use crate::encoding::{self, Entry};

pub struct LowerView {
    /// Layer directories, top-most first, and their root handles.
    layers: Vec<(PathBuf, OwnedFd)>,
}

/// Where a name was found in the merged view: the layer index and its stat there.
pub struct LowerEntry {
    pub layer: usize,
    pub stat: Stat,
}

impl LowerEntry {
    pub fn is_dir(&self) -> bool {
        self.stat.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

const DIR: i32 = libc::O_RDONLY | libc::O_DIRECTORY;

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl LowerView {
    pub fn new(layers: Vec<PathBuf>) -> io::Result<LowerView> {
        let mut out = Vec::new();
        for p in layers {
            let fd = OwnedFd::from(File::open(&p)?);
            out.push((p, fd));
        }
        Ok(LowerView { layers: out })
    }

    /// Directory `rel` of layer `i`, opened beneath the layer root.
    pub fn open_dir(&self, i: usize, rel: &LayerPath) -> io::Result<OwnedFd> {
        open_beneath(self.layers[i].1.as_fd(), rel, DIR)
    }

    /// The layers that contribute to directory `rel` (top-most first), with their handles
    /// on it, or `None` when `rel` is not a directory in the merged view.
    fn dir_layers(&self, rel: &LayerPath) -> io::Result<Option<Vec<(usize, OwnedFd)>>> {
        let mut cands: Vec<(usize, OwnedFd)> = Vec::new();
        for (i, (_, fd)) in self.layers.iter().enumerate() {
            cands.push((i, sys::openat_beneath(fd.as_fd(), Path::new(""), DIR, 0)?));
        }
        for name in rel.components() {
            let mut next = Vec::new();
            for (i, dir) in cands {
                let st = match sys::fstatat(dir.as_fd(), name) {
                    Ok(st) => st,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        if whiteout::has_whiteout_file(dir.as_fd(), name) {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if whiteout::is_chardev_whiteout(&st) || !is_dir(&st) {
                    // A deletion or a non-directory ends the merge.
                    break;
                }
                if whiteout::has_whiteout_file(dir.as_fd(), name) {
                    break;
                }
                let sub = sys::openat_beneath(dir.as_fd(), Path::new(name), DIR, 0)?;
                let opaque = whiteout::is_opaque(sub.as_fd(), OsStr::new(""));
                next.push((i, sub));
                if opaque {
                    break;
                }
            }
            if next.is_empty() {
                return Ok(None);
            }
            cands = next;
        }
        Ok(Some(cands))
    }

    /// Merged listing of directory `rel`: name -> (layer index, stat there).
    pub fn list(&self, rel: &LayerPath) -> io::Result<BTreeMap<OsString, LowerEntry>> {
        let mut out = BTreeMap::new();
        let Some(layers) = self.dir_layers(rel)? else {
            return Ok(out);
        };
        // Names decided (present or deleted) by a higher layer.
        let mut decided: BTreeMap<OsString, bool> = BTreeMap::new();
        for (i, dir) in layers {
            for (name, _, _) in sys::read_dir(dir.as_fd())? {
                let st = sys::fstatat(dir.as_fd(), &name)?;
                match encoding::classify_stat(&name, &st) {
                    Entry::OpaqueMarker => {}
                    Entry::Whiteout(n) => {
                        decided.entry(n).or_insert(false);
                    }
                    Entry::Plain => {
                        if !decided.contains_key(&name) {
                            decided.insert(name.clone(), true);
                            out.insert(name, LowerEntry { layer: i, stat: st });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Looks `rel` up in the merged view.
    pub fn lookup(&self, rel: &LayerPath) -> io::Result<Option<LowerEntry>> {
        if rel.is_root() {
            return Ok(None);
        }
        Ok(self.list(&rel.parent())?.remove(rel.name()))
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer_path(&self, i: usize) -> &Path {
        &self.layers[i].0
    }
}
