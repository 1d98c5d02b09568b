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

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use layerfs::layers::redirect;
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

/// The mount's workdir index: the new content of lower hard-link sets changed through one
/// of their names, by the lower inode number (the entries' names, in hex).
struct Index {
    dir: Option<OwnedFd>,
    by_ino: HashMap<u64, (OsString, sys::Stat)>,
}

impl Index {
    fn read(index: Option<&Path>) -> Result<Index> {
        let mut by_ino = HashMap::new();
        let Some(index) = index else {
            return Ok(Index { dir: None, by_ino });
        };
        let dir = match File::open(index) {
            Ok(f) => OwnedFd::from(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Index { dir: None, by_ino })
            }
            Err(e) => return Err(err!("opening the workdir index {}: {e}", index.display())),
        };
        for (name, _, _) in
            sys::read_dir(dir.as_fd()).ctx(|| format!("reading {}", index.display()))?
        {
            let Some(ino) = std::str::from_utf8(name.as_bytes())
                .ok()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let st = sys::fstatat(dir.as_fd(), &name)
                .ctx(|| format!("stat {} in {}", name.to_string_lossy(), index.display()))?;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                by_ino.insert(ino, (name, st));
            }
        }
        Ok(Index {
            dir: Some(dir),
            by_ino,
        })
    }
}

/// The raw redirect recorded on the open directory `dir`, if any.
fn redirect_of(dir: &OwnedFd) -> Option<Vec<u8>> {
    whiteout::redirect(dir.as_fd(), OsStr::new(""))
}

/// Where a redirect found on a directory whose parent's lower content is at
/// `parent_lower` points in the lower view (the shared resolver: absolute from the root,
/// a bare name against the parent's lower place, as kernel overlayfs reads them). The
/// store's layers hold no redirects themselves (commit expands them), so one step is all.
fn redirect_target(value: &[u8], parent_lower: &LayerPath) -> Result<LayerPath> {
    let bad = |why: &dyn std::fmt::Display| {
        err!(
            "redirect {:?} is invalid ({why}); the container's upper directory is damaged",
            String::from_utf8_lossy(value)
        )
    };
    let p = redirect::resolve(&parent_lower.to_path(), value).map_err(|e| bad(&e))?;
    LayerPath::parse(p.as_os_str().as_bytes()).map_err(|e| bad(&e))
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

    /// Builds the layer for `upper` into the empty directory `out`. `index` is the mount's
    /// workdir index (`work/index`), where layerfs keeps the one copy that every name of a
    /// hard-linked lower file shares once one of them changed.
    pub fn build(self, upper: &Path, index: Option<&Path>, out: &Path) -> Result<()> {
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
        let index = Index::read(index)?;
        let mut copied = HashSet::new();
        while let Some(task) = tasks.pop() {
            match task {
                Task::Materialize { from, out } => {
                    self.materialize(&mut c, &from, &out, &mut tasks, &index, &mut copied)?
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
        self.link_lower_names(&mut c, &index, out, &copied)?;
        c.finish()
    }

    /// Hard links in commit: a lower file with several names, changed through one of them,
    /// has its new content in the workdir index, and the container shows it under every
    /// name, those never touched included (they are still lower-only in the upper). Every
    /// such name that the committed view would still show from a lower layer is written as
    /// a hard link to the new content; a name the container deleted stays deleted.
    ///
    /// A renamed directory's lower content is copied into the new layer (`copied`: the
    /// lower (dev, ino) of each hard-linked file so copied). The container shows such a
    /// name as the same inode as the set's other names, so those join the copy too (a
    /// layer cannot link to a file of a layer below it).
    fn link_lower_names(
        &self,
        c: &mut Copier,
        index: &Index,
        out: &Path,
        copied: &HashSet<(u64, u64)>,
    ) -> Result<()> {
        let by_ino = &index.by_ino;
        if by_ino.is_empty() && copied.is_empty() {
            return Ok(());
        }
        // Every name of those inodes in the lower view, then the ones the committed view
        // (the new layer over the lowers) still takes from a lower layer.
        let mut names: Vec<(LayerPath, u64)> = Vec::new();
        let mut stack = vec![LayerPath::root()];
        while let Some(d) = stack.pop() {
            for (n, e) in self
                .lowers
                .list(&d)
                .ctx(|| format!("reading lower directory {}", d.display()))?
            {
                let p = d.join(&n);
                if e.is_dir() {
                    stack.push(p);
                } else if e.stat.st_mode & libc::S_IFMT == libc::S_IFREG
                    && e.stat.st_nlink > 1
                    && (by_ino.contains_key(&e.stat.st_ino)
                        || copied.contains(&(e.stat.st_dev, e.stat.st_ino)))
                {
                    names.push((p, e.stat.st_ino));
                }
            }
        }
        let mut layers = vec![out.to_path_buf()];
        layers.extend((0..self.lowers.len()).map(|i| self.lowers.layer_path(i).to_path_buf()));
        let committed = LowerView::new(layers).ctx(|| format!("opening {}", out.display()))?;
        for (p, ino) in names {
            let shown = p.display();
            let still_lower = committed
                .lookup(&p)
                .ctx(|| format!("looking up {shown} in the new layer"))?
                .filter(|e| e.layer > 0 && e.stat.st_ino == ino);
            let Some(lower) = still_lower else {
                continue;
            };
            // Its parents exist in the new layer with the lower directories' metadata
            // (they merge with them), then the name joins the changed inode.
            for depth in 1..p.depth() {
                let a = LayerPath::from_components(&p.components()[..depth]);
                if c.w.open_dir(&a).is_ok() {
                    continue;
                }
                let e = self
                    .lowers
                    .lookup(&a)
                    .ctx(|| format!("looking up {}", a.display()))?
                    .ok_or_else(|| {
                        err!("lower directory {} vanished during the commit", a.display())
                    })?;
                let pd = self
                    .lowers
                    .open_dir(e.layer, &a.parent())
                    .ctx(|| format!("opening lower directory {}", a.parent().display()))?;
                c.copy_entry(pd.as_fd(), a.name(), &e.stat, &a)?;
            }
            if let (Some((name, st)), Some(dir)) = (by_ino.get(&ino), &index.dir) {
                c.copy_shared(dir.as_fd(), name, st, &p)?;
            } else {
                // The copier links it to the copy already made of the same lower inode.
                let pd = self
                    .lowers
                    .open_dir(lower.layer - 1, &p.parent())
                    .ctx(|| format!("opening lower directory {}", p.parent().display()))?;
                c.copy_entry(pd.as_fd(), p.name(), &lower.stat, &p)?;
            }
        }
        Ok(())
    }

    /// Copies the entries of lower directory `from` into `out`; subdirectories become tasks.
    fn materialize(
        &self,
        c: &mut Copier,
        from: &LayerPath,
        out: &LayerPath,
        tasks: &mut Vec<Task>,
        index: &Index,
        copied: &mut HashSet<(u64, u64)>,
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
            let linked = e.stat.st_mode & libc::S_IFMT == libc::S_IFREG && e.stat.st_nlink > 1;
            match (linked, index.by_ino.get(&e.stat.st_ino), &index.dir) {
                // A hard-linked file changed through another name: the container shows
                // its new content, the index's, here too.
                (true, Some((iname, ist)), Some(idir)) => {
                    c.copy_shared(idir.as_fd(), iname, ist, &dst)?
                }
                _ => c.copy_entry(dir.as_fd(), &name, &e.stat, &dst)?,
            }
            if linked {
                copied.insert((e.stat.st_dev, e.stat.st_ino));
            }
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
                    match mode {
                        Mode::Diff => {
                            c.w.whiteout(&path)
                                .map_err(|e| err!("upper directory: {e}"))?
                        }
                        Mode::Overlay => c.remove(&path)?,
                    }
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
                c.remove(&dst)?;
                c.copy_entry(dir.as_fd(), &name, &st, &dst)?;
                if mode == Mode::Diff {
                    c.w.opaque(&dst).map_err(|e| err!("upper directory: {e}"))?;
                }
                tasks.push(apply(Some(from.clone()), Mode::Overlay));
                if !opaque {
                    tasks.push(Task::Materialize { from, out: dst });
                }
            } else if opaque {
                c.remove(&dst)?;
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
pub fn diff(upper: &Path, index: Option<&Path>, lowers: &LowerView) -> Result<Vec<Change>> {
    let mut out = diff_upper(upper, lowers)?;
    // Hard links: a lower file with several names changed through one of them is changed
    // under every name the container still takes from a lower layer, as commit writes it.
    let index = Index::read(index)?;
    if !index.by_ino.is_empty() {
        let mut layers = vec![upper.to_path_buf()];
        layers.extend((0..lowers.len()).map(|i| lowers.layer_path(i).to_path_buf()));
        let merged = LowerView::new(layers).ctx(|| format!("opening {}", upper.display()))?;
        let mut stack = vec![LayerPath::root()];
        while let Some(d) = stack.pop() {
            for (n, e) in lowers.list(&d).map_err(io(&d))? {
                let p = d.join(&n);
                if e.is_dir() {
                    stack.push(p);
                    continue;
                }
                let ino = e.stat.st_ino;
                if e.stat.st_mode & libc::S_IFMT != libc::S_IFREG
                    || e.stat.st_nlink < 2
                    || !index.by_ino.contains_key(&ino)
                {
                    continue;
                }
                let shown_lower = merged
                    .lookup(&p)
                    .map_err(io(&p))?
                    .is_some_and(|m| m.layer > 0 && m.stat.st_ino == ino);
                if shown_lower {
                    out.push(Change {
                        path: p.display(),
                        kind: 'C',
                    });
                }
            }
        }
        out.sort();
        out.dedup();
    }
    Ok(out)
}

fn diff_upper(upper: &Path, lowers: &LowerView) -> Result<Vec<Change>> {
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
