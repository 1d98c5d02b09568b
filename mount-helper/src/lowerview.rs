//! Read-only view of a stack of layer directories (top-most first) with overlay lookup
//! rules: the first layer holding a name decides; a whiteout means absent; a directory
//! merges with lower ones until an opaque directory or a non-directory is met. Used to
//! expand renamed directories on commit and to tell "added" from "changed" in `diff`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::encoding::{self, Entry};

pub struct LowerView {
    /// Layer directories, top-most first.
    layers: Vec<PathBuf>,
}

/// Where a name was found: the layer index and its metadata there.
pub struct Found {
    pub layer: usize,
    pub path: PathBuf,
    pub meta: fs::Metadata,
}

impl LowerView {
    pub fn new(layers: Vec<PathBuf>) -> LowerView {
        LowerView { layers }
    }

    fn whiteout_in(dir: &Path, name: &std::ffi::OsStr) -> io::Result<bool> {
        let mut wh = OsString::from(encoding::WH_PREFIX);
        wh.push(name);
        if fs::symlink_metadata(dir.join(&wh)).is_ok() {
            return Ok(true);
        }
        match fs::symlink_metadata(dir.join(name)) {
            Ok(m) => Ok(encoding::is_chardev_whiteout(&m)),
            Err(_) => Ok(false),
        }
    }

    /// The layers that contribute to directory `rel` (top-most first), or `None` when
    /// `rel` is not a directory in the merged view.
    fn dir_layers(&self, rel: &Path) -> io::Result<Option<Vec<usize>>> {
        let mut cands: Vec<usize> = (0..self.layers.len()).collect();
        let mut prefix = PathBuf::new();
        for comp in rel.components() {
            let name = match comp {
                Component::Normal(n) => n,
                _ => continue,
            };
            let mut next = Vec::new();
            for &i in &cands {
                let parent = self.layers[i].join(&prefix);
                if Self::whiteout_in(&parent, name)? {
                    break;
                }
                match fs::symlink_metadata(parent.join(name)) {
                    Ok(m) if m.is_dir() => {
                        next.push(i);
                        if encoding::is_opaque(&parent.join(name))? {
                            break;
                        }
                    }
                    // A non-directory ends the merge; if nothing above was a directory
                    // the path is not a directory at all.
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            if next.is_empty() {
                return Ok(None);
            }
            cands = next;
            prefix.push(name);
        }
        Ok(Some(cands))
    }

    /// Merged listing of directory `rel`: name -> layer index that provides it.
    pub fn list(&self, rel: &Path) -> io::Result<BTreeMap<OsString, usize>> {
        let mut out = BTreeMap::new();
        let Some(layers) = self.dir_layers(rel)? else {
            return Ok(out);
        };
        // Names decided (present or deleted) by a higher layer.
        let mut decided: BTreeMap<OsString, bool> = BTreeMap::new();
        for i in layers {
            let dir = self.layers[i].join(rel);
            for ent in fs::read_dir(&dir)? {
                let ent = ent?;
                let meta = fs::symlink_metadata(ent.path())?;
                match encoding::classify(&ent.file_name(), &meta) {
                    Entry::OpaqueMarker => {}
                    Entry::Whiteout(n) => {
                        decided.entry(n).or_insert(false);
                    }
                    Entry::Plain => {
                        let n = ent.file_name();
                        if !decided.contains_key(&n) {
                            decided.insert(n.clone(), true);
                            out.insert(n, i);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Looks `rel` up in the merged view.
    pub fn lookup(&self, rel: &Path) -> io::Result<Option<Found>> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Ok(None);
        };
        let listing = self.list(parent)?;
        let Some(&i) = listing.get(name) else {
            return Ok(None);
        };
        let path = self.layers[i].join(rel);
        let meta = fs::symlink_metadata(&path)?;
        Ok(Some(Found {
            layer: i,
            path,
            meta,
        }))
    }

    pub fn layer_path(&self, i: usize) -> &Path {
        &self.layers[i]
    }
}
