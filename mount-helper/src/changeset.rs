//! A container's upper directory -> a layer directory in the store's encoding, ready to be
//! hashed by `tarfile` (whose tar is the changeset). Whiteouts and opaque markers in any
//! encoding are normalised; a directory renamed from a lower layer (redirect xattr) is
//! expanded to its full content under the new name and made opaque there, since its old
//! name already carries a whiteout in the upper.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use crate::copytree::{remove_any, Copier};
use crate::encoding::{self, Entry};
use crate::err;
use crate::error::{Context, Result};
use crate::lowerview::LowerView;

/// How upper entries are applied to the output directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The output is a diff against the lower layers: deletions become whiteouts.
    Diff,
    /// The output already holds materialised content (a renamed directory's lower
    /// content); upper entries replace, merge into, or delete from it.
    Overlay,
}

pub struct Builder<'a> {
    lowers: &'a LowerView,
    copier: Copier,
    tick: &'a dyn Fn(),
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        names.push(e.ctx(|| format!("reading {}", dir.display()))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Resolves a redirect value to a path relative to the layer roots. Absolute values are
/// from the root; kernel overlayfs writes a bare name for a rename within one directory.
fn redirect_target(value: &[u8], parent_rel: &Path) -> Result<PathBuf> {
    let raw = PathBuf::from(OsString::from_vec(value.to_vec()));
    let base = if value.starts_with(b"/") {
        PathBuf::new()
    } else {
        parent_rel.to_path_buf()
    };
    let mut out = base;
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(err!(
                    "redirect {:?} leaves the layer root",
                    String::from_utf8_lossy(value)
                ))
            }
        }
    }
    Ok(out)
}

impl<'a> Builder<'a> {
    pub fn new(lowers: &'a LowerView, tick: &'a dyn Fn()) -> Builder<'a> {
        Builder {
            lowers,
            copier: Copier::default(),
            tick,
        }
    }

    /// Builds the layer for `upper` into the empty directory `out`.
    pub fn build(mut self, upper: &Path, out: &Path) -> Result<()> {
        self.apply(upper, Path::new(""), out, Mode::Diff)?;
        self.copier.finish()
    }

    /// Copies the merged lower content of directory `src_rel` into `out`.
    fn materialize(&mut self, src_rel: &Path, out: &Path) -> Result<()> {
        let listing = self
            .lowers
            .list(src_rel)
            .ctx(|| format!("reading lower directory /{}", src_rel.display()))?;
        for (name, layer) in listing {
            (self.tick)();
            let src = self.lowers.layer_path(layer).join(src_rel).join(&name);
            let dst = out.join(&name);
            let meta = fs::symlink_metadata(&src).ctx(|| format!("stat {}", src.display()))?;
            if meta.is_dir() {
                self.copier.make_dir(&src, &dst)?;
                self.materialize(&src_rel.join(&name), &dst)?;
            } else {
                self.copier.copy_file(&src, &dst, &meta)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, upper: &Path, rel: &Path, out: &Path, mode: Mode) -> Result<()> {
        for name in sorted_names(upper)? {
            (self.tick)();
            let src = upper.join(&name);
            let meta = fs::symlink_metadata(&src).ctx(|| format!("stat {}", src.display()))?;
            match encoding::classify(&name, &meta) {
                Entry::OpaqueMarker => continue,
                Entry::Whiteout(target) => {
                    if target.is_empty()
                        || target.as_bytes().contains(&b'/')
                        || target == "."
                        || target == ".."
                    {
                        return Err(err!("{}: malformed whiteout", src.display()));
                    }
                    match mode {
                        Mode::Diff => {
                            remove_any(&out.join(&target))?;
                            encoding::write_whiteout(out, &target).ctx(|| {
                                format!("writing whiteout for {}", out.join(&target).display())
                            })?;
                        }
                        Mode::Overlay => remove_any(&out.join(&target))?,
                    }
                    continue;
                }
                Entry::Plain => {}
            }
            let dst = out.join(&name);
            let child_rel = rel.join(&name);
            if !meta.is_dir() {
                remove_any(&dst)?;
                self.copier.copy_file(&src, &dst, &meta)?;
                continue;
            }
            let redirect =
                encoding::redirect(&src).ctx(|| format!("reading xattrs of {}", src.display()))?;
            let opaque =
                encoding::is_opaque(&src).ctx(|| format!("reading xattrs of {}", src.display()))?;
            if let Some(value) = redirect {
                let from = redirect_target(&value, rel).ctx(|| src.display().to_string())?;
                remove_any(&dst)?;
                self.copier.make_dir(&src, &dst)?;
                if mode == Mode::Diff {
                    encoding::set_opaque(&dst)
                        .ctx(|| format!("marking {} opaque", dst.display()))?;
                }
                if !opaque {
                    self.materialize(&from, &dst)?;
                }
                self.apply(&src, &child_rel, &dst, Mode::Overlay)?;
            } else if opaque {
                remove_any(&dst)?;
                self.copier.make_dir(&src, &dst)?;
                if mode == Mode::Diff {
                    encoding::set_opaque(&dst)
                        .ctx(|| format!("marking {} opaque", dst.display()))?;
                }
                self.apply(&src, &child_rel, &dst, Mode::Overlay)?;
            } else {
                if let Ok(m) = fs::symlink_metadata(&dst) {
                    if !m.is_dir() {
                        remove_any(&dst)?;
                    }
                }
                self.copier.make_dir(&src, &dst)?;
                self.apply(&src, &child_rel, &dst, mode)?;
            }
        }
        Ok(())
    }
}

/// One line of `layerctl diff`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: String,
    pub kind: char,
}

/// Changes of an upper directory against the lower view, like `docker diff`: A(dded),
/// C(hanged), D(eleted), sorted by path.
pub fn diff(upper: &Path, lowers: &LowerView) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    diff_dir(upper, Path::new(""), lowers, true, &mut out)?;
    out.sort();
    Ok(out)
}

fn show(rel: &Path) -> String {
    format!("/{}", rel.display())
}

fn diff_dir(
    upper: &Path,
    rel: &Path,
    lowers: &LowerView,
    lower_visible: bool,
    out: &mut Vec<Change>,
) -> Result<()> {
    for name in sorted_names(upper)? {
        let src = upper.join(&name);
        let meta = fs::symlink_metadata(&src).ctx(|| format!("stat {}", src.display()))?;
        match encoding::classify(&name, &meta) {
            Entry::OpaqueMarker => continue,
            Entry::Whiteout(target) => {
                let p = rel.join(&target);
                if lower_visible && lowers.lookup(&p).ctx(|| show(&p))?.is_some() {
                    out.push(Change {
                        path: show(&p),
                        kind: 'D',
                    });
                }
                continue;
            }
            Entry::Plain => {}
        }
        let p = rel.join(&name);
        let in_lower = if lower_visible {
            lowers.lookup(&p).ctx(|| show(&p))?
        } else {
            None
        };
        if !meta.is_dir() {
            out.push(Change {
                path: show(&p),
                kind: if in_lower.is_some() { 'C' } else { 'A' },
            });
            continue;
        }
        let redirect = encoding::redirect(&src).ctx(|| src.display().to_string())?;
        let opaque = encoding::is_opaque(&src).ctx(|| src.display().to_string())?;
        if let Some(value) = redirect {
            // A renamed lower directory: everything under the new name is new.
            out.push(Change {
                path: show(&p),
                kind: if in_lower.is_some() { 'C' } else { 'A' },
            });
            let from = redirect_target(&value, rel)?;
            let mut names: Vec<OsString> = Vec::new();
            if !opaque {
                list_lower_tree(lowers, &from, Path::new(""), &mut names)?;
            }
            let mut upper_names = Vec::new();
            list_upper_tree(&src, Path::new(""), &mut upper_names)?;
            names.extend(upper_names);
            names.sort();
            names.dedup();
            for n in names {
                out.push(Change {
                    path: show(&p.join(n)),
                    kind: 'A',
                });
            }
            continue;
        }
        let dir_in_lower = in_lower.as_ref().is_some_and(|f| f.meta.is_dir());
        out.push(Change {
            path: show(&p),
            kind: if in_lower.is_some() { 'C' } else { 'A' },
        });
        if opaque && dir_in_lower {
            // Everything the lower directory held and the upper does not is gone.
            for (n, _) in lowers.list(&p).ctx(|| show(&p))? {
                if fs::symlink_metadata(src.join(&n)).is_err() {
                    out.push(Change {
                        path: show(&p.join(n)),
                        kind: 'D',
                    });
                }
            }
        }
        diff_dir(
            &src,
            &p,
            lowers,
            lower_visible && dir_in_lower && !opaque,
            out,
        )?;
    }
    Ok(())
}

fn list_lower_tree(
    lowers: &LowerView,
    from: &Path,
    sub: &Path,
    out: &mut Vec<OsString>,
) -> Result<()> {
    for (n, layer) in lowers.list(&from.join(sub)).ctx(|| show(&from.join(sub)))? {
        let rel = sub.join(&n);
        out.push(rel.clone().into_os_string());
        let p = lowers.layer_path(layer).join(from).join(&rel);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            list_lower_tree(lowers, from, &rel, out)?;
        }
    }
    Ok(())
}

fn list_upper_tree(dir: &Path, sub: &Path, out: &mut Vec<OsString>) -> Result<()> {
    for name in sorted_names(&dir.join(sub))? {
        let p = dir.join(sub).join(&name);
        let meta = fs::symlink_metadata(&p).ctx(|| p.display().to_string())?;
        if encoding::classify(&name, &meta) != Entry::Plain {
            continue;
        }
        let rel = sub.join(&name);
        out.push(rel.clone().into_os_string());
        if meta.is_dir() {
            list_upper_tree(dir, &rel, out)?;
        }
    }
    Ok(())
}
