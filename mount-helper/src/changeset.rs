//! A container's upper directory -> a layer directory in the store's encoding, ready to be
//! hashed by `tarfile` (whose tar is the changeset). Whiteouts and opaque markers in any
//! encoding are normalised; a directory renamed from a lower layer (redirect xattr) is
//! expanded to its full content under the new name and made opaque there, since its old
//! name already carries a whiteout in the upper.
//!
//! The upper directory is the container's to shape, so it is read only through directory
//! handles, never following a symlink it holds; the lower layers are read through
//! [`LowerView`]'s confined handles; everything is written through the confined writer.
//! Nothing recurses: the walk is a stack of tasks.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use layerfs::layers::writer::{LayerPath, LayerWriter};
use layerfs::sys;
use layerfs::whiteout;

use crate::copytree::{is_dir, open_subdir, sorted_names, Copier};
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

/// One directory still to walk.
enum Task {
    /// Apply the upper directory `name` of `parent` (`None`: `parent` itself) to `out`.
    /// `lower` is where the directory's content comes from in the lower view (its own path,
    /// or a redirect's target), against which a relative redirect below it is resolved.
    Apply {
        parent: Rc<OwnedFd>,
        name: Option<OsString>,
        out: LayerPath,
        lower: Option<LayerPath>,
        mode: Mode,
    },
    /// Copy the merged lower content of directory `from` into `out`.
    Materialize { from: LayerPath, out: LayerPath },
}

/// The redirect recorded on the open directory `dir`, without a trailing NUL (kernel
/// overlayfs may store one).
fn redirect_of(dir: &OwnedFd) -> Option<Vec<u8>> {
    let v = whiteout::redirect(dir.as_fd(), OsStr::new(""))?;
    let v: Vec<u8> = v.into_iter().take_while(|b| *b != 0).collect();
    (!v.is_empty()).then_some(v)
}

/// Resolves a redirect value to a path in the lower view. Absolute values are from the
/// root; kernel overlayfs writes a bare name for a rename within one directory, meant
/// relative to the parent directory's *lower* path.
fn redirect_target(value: &[u8], parent_lower: &LayerPath) -> Result<LayerPath> {
    let bad = || {
        err!(
            "redirect {:?} leaves the layer root",
            String::from_utf8_lossy(value)
        )
    };
    if let Some(abs) = value.strip_prefix(b"/") {
        if abs.split(|b| *b == b'/').any(|c| c == b".." || c == b".") {
            return Err(bad());
        }
        return LayerPath::parse(abs).map_err(|_| bad());
    }
    if value.contains(&b'/') || value == b"." || value == b".." {
        return Err(bad());
    }
    Ok(parent_lower.join(OsStr::from_bytes(value)))
}

fn malformed_whiteout(t: &OsStr) -> bool {
    let b = t.as_bytes();
    b.is_empty() || b.contains(&b'/') || b == b"." || b == b".."
}

pub struct Builder<'a> {
    lowers: &'a LowerView,
    tick: &'a dyn Fn(),
}

impl<'a> Builder<'a> {
    pub fn new(lowers: &'a LowerView, tick: &'a dyn Fn()) -> Builder<'a> {
        Builder { lowers, tick }
    }

    /// Builds the layer for `upper` into the empty directory `out`.
    pub fn build(self, upper: &Path, out: &Path) -> Result<()> {
        let w = LayerWriter::open(out).ctx(|| format!("opening {}", out.display()))?;
        let mut c = Copier::new(w);
        let root = OwnedFd::from(
            File::open(upper).ctx(|| format!("opening upper directory {}", upper.display()))?,
        );
        let mut tasks = vec![Task::Apply {
            parent: Rc::new(root),
            name: None,
            out: LayerPath::root(),
            lower: Some(LayerPath::root()),
            mode: Mode::Diff,
        }];
        while let Some(task) = tasks.pop() {
            match task {
                Task::Materialize { from, out } => {
                    self.materialize(&mut c, &from, &out, &mut tasks)?
                }
                Task::Apply {
                    parent,
                    name,
                    out,
                    lower,
                    mode,
                } => {
                    let dir = match name {
                        None => parent,
                        Some(n) => Rc::new(
                            open_subdir(parent.as_fd(), &n)
                                .ctx(|| format!("opening upper directory {}", out.display()))?,
                        ),
                    };
                    self.apply(&mut c, dir, &out, lower, mode, &mut tasks)?;
                }
            }
        }
        c.finish()
    }

    /// Copies the entries of lower directory `from` into `out`; subdirectories become tasks.
    fn materialize(
        &self,
        c: &mut Copier,
        from: &LayerPath,
        out: &LayerPath,
        tasks: &mut Vec<Task>,
    ) -> Result<()> {
        let listing = self
            .lowers
            .list(from)
            .ctx(|| format!("reading lower directory {}", from.display()))?;
        let mut dirs: HashMap<usize, OwnedFd> = HashMap::new();
        for (name, e) in listing {
            (self.tick)();
            if let std::collections::hash_map::Entry::Vacant(v) = dirs.entry(e.layer) {
                v.insert(
                    self.lowers
                        .open_dir(e.layer, from)
                        .ctx(|| format!("opening lower directory {}", from.display()))?,
                );
            }
            let dir = &dirs[&e.layer];
            let dst = out.join(&name);
            c.copy_entry(dir.as_fd(), &name, &e.stat, &dst)?;
            if e.is_dir() {
                tasks.push(Task::Materialize {
                    from: from.join(&name),
                    out: dst,
                });
            }
        }
        Ok(())
    }

    fn apply(
        &self,
        c: &mut Copier,
        dir: Rc<OwnedFd>,
        out: &LayerPath,
        lower: Option<LayerPath>,
        mode: Mode,
        tasks: &mut Vec<Task>,
    ) -> Result<()> {
        let names = sorted_names(dir.as_fd())
            .ctx(|| format!("reading upper directory {}", out.display()))?;
        for name in names {
            (self.tick)();
            let shown = || out.join(&name).display();
            let st = sys::fstatat(dir.as_fd(), &name).ctx(|| format!("stat {}", shown()))?;
            match encoding::classify_stat(&name, &st) {
                Entry::OpaqueMarker => continue,
                Entry::Whiteout(target) => {
                    if malformed_whiteout(&target) {
                        return Err(err!("{}: malformed whiteout", shown()));
                    }
                    let path = out.join(&target);
                    let done = match mode {
                        Mode::Diff => c.w.whiteout(&path),
                        Mode::Overlay => c.w.remove(&path),
                    };
                    done.map_err(|e| err!("upper directory: {e}"))?;
                    continue;
                }
                Entry::Plain => {}
            }
            let dst = out.join(&name);
            if !is_dir(&st) {
                c.copy_entry(dir.as_fd(), &name, &st, &dst)?;
                continue;
            }
            let sub = open_subdir(dir.as_fd(), &name)
                .ctx(|| format!("opening upper directory {}", shown()))?;
            let redirect = redirect_of(&sub);
            let opaque = whiteout::is_opaque(sub.as_fd(), OsStr::new(""));
            drop(sub);
            let apply = |lower, mode| Task::Apply {
                parent: Rc::clone(&dir),
                name: Some(name.clone()),
                out: dst.clone(),
                lower,
                mode,
            };
            if let Some(value) = redirect {
                let base = lower.clone().unwrap_or_else(|| out.clone());
                let from = redirect_target(&value, &base).ctx(|| shown().to_string())?;
                c.w.remove(&dst).map_err(|e| err!("upper directory: {e}"))?;
                c.copy_entry(dir.as_fd(), &name, &st, &dst)?;
                if mode == Mode::Diff {
                    c.w.opaque(&dst).map_err(|e| err!("upper directory: {e}"))?;
                }
                tasks.push(apply(Some(from.clone()), Mode::Overlay));
                if !opaque {
                    tasks.push(Task::Materialize { from, out: dst });
                }
            } else if opaque {
                c.w.remove(&dst).map_err(|e| err!("upper directory: {e}"))?;
                c.copy_entry(dir.as_fd(), &name, &st, &dst)?;
                if mode == Mode::Diff {
                    c.w.opaque(&dst).map_err(|e| err!("upper directory: {e}"))?;
                }
                tasks.push(apply(None, Mode::Overlay));
            } else {
                c.copy_entry(dir.as_fd(), &name, &st, &dst)?;
                tasks.push(apply(lower.as_ref().map(|l| l.join(&name)), mode));
            }
        }
        Ok(())
    }
}

fn io(p: &LayerPath) -> impl Fn(std::io::Error) -> crate::error::Error + '_ {
    move |e| err!("{}: {e}", p.display())
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
    let root = OwnedFd::from(
        File::open(upper).ctx(|| format!("opening upper directory {}", upper.display()))?,
    );
    // (parent handle, name or the root, path in the merged view, whether the lower view
    // shows through, where the directory's lower content comes from)
    type Item = (
        Rc<OwnedFd>,
        Option<OsString>,
        LayerPath,
        bool,
        Option<LayerPath>,
    );
    let mut stack: Vec<Item> = vec![(
        Rc::new(root),
        None,
        LayerPath::root(),
        true,
        Some(LayerPath::root()),
    )];
    while let Some((parent, name, rel, lower_visible, lower)) = stack.pop() {
        let dir = match name {
            None => parent,
            Some(n) => Rc::new(open_subdir(parent.as_fd(), &n).map_err(io(&rel))?),
        };
        for name in sorted_names(dir.as_fd()).map_err(io(&rel))? {
            let p = rel.join(&name);
            let st = sys::fstatat(dir.as_fd(), &name).map_err(io(&p))?;
            match encoding::classify_stat(&name, &st) {
                Entry::OpaqueMarker => continue,
                Entry::Whiteout(target) => {
                    let t = rel.join(&target);
                    if lower_visible && lowers.lookup(&t).map_err(io(&t))?.is_some() {
                        out.push(Change {
                            path: t.display(),
                            kind: 'D',
                        });
                    }
                    continue;
                }
                Entry::Plain => {}
            }
            let in_lower = if lower_visible {
                lowers.lookup(&p).map_err(io(&p))?
            } else {
                None
            };
            out.push(Change {
                path: p.display(),
                kind: if in_lower.is_some() { 'C' } else { 'A' },
            });
            if !is_dir(&st) {
                continue;
            }
            let sub = open_subdir(dir.as_fd(), &name).map_err(io(&p))?;
            let redirect = redirect_of(&sub);
            let opaque = whiteout::is_opaque(sub.as_fd(), OsStr::new(""));
            if let Some(value) = redirect {
                // A renamed lower directory: everything under the new name is new.
                let base = lower.clone().unwrap_or_else(|| rel.clone());
                let from = redirect_target(&value, &base)?;
                let mut names: Vec<LayerPath> = Vec::new();
                if !opaque {
                    list_lower_tree(lowers, &from, &p, &mut names)?;
                }
                list_upper_tree(sub, &p, &mut names)?;
                names.sort();
                names.dedup();
                out.extend(names.into_iter().map(|n| Change {
                    path: n.display(),
                    kind: 'A',
                }));
                continue;
            }
            let dir_in_lower = in_lower.as_ref().is_some_and(|f| f.is_dir());
            if opaque && dir_in_lower {
                // Everything the lower directory held and the upper does not is gone.
                for (n, _) in lowers.list(&p).map_err(io(&p))? {
                    if sys::fstatat(sub.as_fd(), &n).is_err() {
                        out.push(Change {
                            path: p.join(&n).display(),
                            kind: 'D',
                        });
                    }
                }
            }
            stack.push((
                Rc::clone(&dir),
                Some(name.clone()),
                p.clone(),
                lower_visible && dir_in_lower && !opaque,
                lower.as_ref().map(|l| l.join(&name)),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Every path below lower directory `from`, named as below `at`.
fn list_lower_tree(
    lowers: &LowerView,
    from: &LayerPath,
    at: &LayerPath,
    out: &mut Vec<LayerPath>,
) -> Result<()> {
    let mut stack = vec![(from.clone(), at.clone())];
    while let Some((src, dst)) = stack.pop() {
        for (n, e) in lowers
            .list(&src)
            .map_err(|e| err!("{}: {e}", src.display()))?
        {
            out.push(dst.join(&n));
            if e.is_dir() {
                stack.push((src.join(&n), dst.join(&n)));
            }
        }
    }
    Ok(())
}

/// Every real entry below the upper directory `dir`, named as below `at`.
fn list_upper_tree(dir: OwnedFd, at: &LayerPath, out: &mut Vec<LayerPath>) -> Result<()> {
    let mut stack = vec![(dir, at.clone())];
    while let Some((d, p)) = stack.pop() {
        for name in sorted_names(d.as_fd()).map_err(|e| err!("{}: {e}", p.display()))? {
            let q = p.join(&name);
            let st = sys::fstatat(d.as_fd(), &name).map_err(|e| err!("{}: {e}", q.display()))?;
            if encoding::classify_stat(&name, &st) != Entry::Plain {
                continue;
            }
            out.push(q.clone());
            if is_dir(&st) {
                let sub =
                    open_subdir(d.as_fd(), &name).map_err(|e| err!("{}: {e}", q.display()))?;
                stack.push((sub, q));
            }
        }
    }
    Ok(())
}
