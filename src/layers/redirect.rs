//! Redirects: where the lower content of a renamed directory is, as kernel overlayfs
//! records it (`trusted.overlay.redirect` / `user.overlay.redirect`) and follows it
//! (`fs/overlayfs/namei.c`: `ovl_lookup`, `ovl_lookup_layer`, `ovl_lookup_single`,
//! `ovl_check_redirect`; `util.c`: `ovl_get_redirect_xattr`; `dir.c`: `ovl_get_redirect`).
//!
//! One reader for the daemon and layerctl. The value is read as the kernel reads it, a C
//! string (anything from the first NUL on is ignored), and is either
//! - absolute, `/a/b`: a path from the root of each lower layer below, or
//! - relative, a bare name: the directory's name in its parent's *lower* place (the path
//!   the parent is being looked up at in that layer, itself possibly redirected).
//!
//! [`lookup`] is the kernel's walk down the lower layers, over any store of layers
//! ([`LowerLayers`]): each layer is consulted once, top to bottom, so a lookup never
//! loops, whatever the redirects say; a redirect found in one layer changes where the
//! layers *below* it are looked at (chained redirects), and an absolute one is walked
//! component by component, every directory on the way able to redirect the rest.
//! Values the kernel refuses (empty, empty components, a `/` in a relative value) and
//! components it cannot look up (`.`, `..`, which would leave the place) are refused
//! here; the caller fails that lookup with EIO and says so once.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// The longest value followed, in bytes: PATH_MAX less the NUL. The kernel writes at most
/// its `redirect_max` (256 by default); a longer one names a path no system call can
/// take in one piece.
pub const MAX_VALUE: usize = 4095;

/// A redirect's value, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `/a/b`: the components of a path from a layer root.
    Absolute(Vec<OsString>),
    /// `name`: a name in the parent directory's lower place.
    Relative(OsString),
}

/// A redirect value that is not followed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub value: Vec<u8>,
    pub why: &'static str,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid redirect {:?}: {}",
            String::from_utf8_lossy(&self.value),
            self.why
        )
    }
}

impl std::error::Error for Invalid {}

fn invalid<T>(value: &[u8], why: &'static str) -> Result<T, Invalid> {
    Err(Invalid {
        value: value.to_vec(),
        why,
    })
}

fn check_component(value: &[u8], c: &[u8]) -> Result<(), Invalid> {
    match c {
        b"" => invalid(value, "it has an empty component"),
        b"." => invalid(value, "it has a `.` component"),
        b".." => invalid(
            value,
            "it has a `..` component, which would leave the place",
        ),
        _ => Ok(()),
    }
}

impl Redirect {
    /// Parses a redirect xattr's raw value.
    pub fn parse(value: &[u8]) -> Result<Redirect, Invalid> {
        // Read as a C string, as the kernel does: some writers store a trailing NUL.
        let v = value.split(|b| *b == 0).next().unwrap_or_default();
        if v.is_empty() {
            return invalid(value, "it is empty");
        }
        if v.len() > MAX_VALUE {
            return invalid(value, "it is longer than PATH_MAX");
        }
        match v.strip_prefix(b"/") {
            Some(abs) => {
                let mut comps = Vec::new();
                for c in abs.split(|b| *b == b'/') {
                    check_component(value, c)?;
                    comps.push(OsString::from_vec(c.to_vec()));
                }
                Ok(Redirect::Absolute(comps))
            }
            None if v.contains(&b'/') => invalid(
                value,
                "a relative redirect is one name, and this one has a `/`",
            ),
            None => {
                check_component(value, v)?;
                Ok(Redirect::Relative(OsString::from_vec(v.to_vec())))
            }
        }
    }

    /// Where the redirected directory is in a layer, from the layer root, given where its
    /// parent directory is looked up in that layer (`parent`, from the layer root too).
    pub fn resolve(&self, parent: &Path) -> Result<PathBuf, Invalid> {
        match self {
            Redirect::Absolute(comps) => Ok(comps.iter().collect()),
            Redirect::Relative(name) => {
                let plain = parent
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
                if !plain {
                    return invalid(
                        name.as_bytes(),
                        "its parent's place is not a plain path below the layer root",
                    );
                }
                Ok(parent.join(name))
            }
        }
    }

    /// The value as kernel overlayfs writes it (no trailing NUL).
    pub fn value(&self) -> Vec<u8> {
        match self {
            Redirect::Relative(name) => name.as_bytes().to_vec(),
            Redirect::Absolute(comps) => {
                let mut v = Vec::new();
                for c in comps {
                    v.push(b'/');
                    v.extend_from_slice(c.as_bytes());
                }
                v
            }
        }
    }

    /// The absolute redirect the kernel writes for a directory moving to another parent
    /// (`ovl_get_redirect`): its merged path before the move, walked up from the
    /// directory itself, where each directory on the way that has a redirect contributes
    /// that instead of its name (a relative one replaces the name, an absolute one the
    /// rest of the path). `up` yields (name, own redirect) from the directory to just
    /// below the root.
    pub fn absolute_for_move<I>(up: I) -> Redirect
    where
        I: IntoIterator<Item = (OsString, Option<Redirect>)>,
    {
        let mut rev: Vec<OsString> = Vec::new();
        for (name, own) in up {
            match own {
                Some(Redirect::Absolute(comps)) => {
                    rev.extend(comps.into_iter().rev());
                    break;
                }
                Some(Redirect::Relative(n)) => rev.push(n),
                None => rev.push(name),
            }
        }
        rev.reverse();
        Redirect::Absolute(rev)
    }
}

/// Resolves a redirect xattr's raw `value` found on a directory whose parent is looked
/// up at `parent` in a layer: the redirected place, from the layer root.
pub fn resolve(parent: &Path, value: &[u8]) -> Result<PathBuf, Invalid> {
    Redirect::parse(value)?.resolve(parent)
}

/// Where a directory's lower content is in layers that hold no redirects themselves (the
/// store's layers, say), given its path from the root down as each component's name and
/// raw redirect value: each component is its parent's place plus its name, or what its
/// redirect says from there.
pub fn lower_place<I>(down: I) -> Result<PathBuf, Invalid>
where
    I: IntoIterator<Item = (OsString, Option<Vec<u8>>)>,
{
    let mut place = PathBuf::new();
    for (name, value) in down {
        place = match value {
            Some(v) => resolve(&place, &v)?,
            None => place.join(name),
        };
    }
    Ok(place)
}

/// A place in a lower layer: the layer's index in the lower list (0 = top-most) and the
/// path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub layer: usize,
    pub path: PathBuf,
}

/// What a lower layer has under one name, as far as a lookup needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<M> {
    Absent,
    /// A whiteout, in any encoding.
    Whiteout,
    NonDir(M),
    Dir {
        meta: M,
        /// Opaque in any encoding.
        opaque: bool,
        /// The raw redirect xattr value, if the directory has one.
        redirect: Option<Vec<u8>>,
    },
}

/// The lower layers of a stack, top-most first, as [`lookup`] reads them.
pub trait LowerLayers {
    /// What a found entry carries back (a stat, say).
    type Meta;
    type Error;
    /// How many lower layers there are.
    fn count(&self) -> usize;
    /// What lower layer `layer` has as `name` in its directory `dir` (from its root;
    /// `dir` may not exist or not be a directory there: then `Absent`). `marks`: whether
    /// a directory's opaque mark and redirect are wanted; they are not on the bottom
    /// layer, where the kernel does not read them either.
    fn probe(
        &self,
        layer: usize,
        dir: &Path,
        name: &OsStr,
        marks: bool,
    ) -> Result<Probe<Self::Meta>, Self::Error>;
    /// The error failing a lookup that met the invalid redirect `why` at `place`; the
    /// place to log it.
    fn refuse(&self, place: &Place, why: Invalid) -> Self::Error;
}

/// One occurrence of the looked-up name in a lower layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<M> {
    pub place: Place,
    pub meta: M,
    pub is_dir: bool,
}

/// The state of one lookup (the kernel's `ovl_lookup_data`).
struct Walk {
    /// What is looked up in the next layer: a name in the parent's place, or a path from
    /// the layer root.
    name: Redirect,
    is_dir: bool,
    stop: bool,
}

impl Walk {
    /// What `probe` (for the last component of the name when `last`) contributes, and
    /// the redirect to apply if any.
    fn take<M>(
        &mut self,
        probe: Probe<M>,
        last: bool,
        marks: bool,
    ) -> Option<(M, bool, Option<Vec<u8>>)> {
        match probe {
            Probe::Absent => None,
            Probe::Whiteout => {
                self.stop = true;
                None
            }
            Probe::NonDir(meta) => {
                self.stop = true;
                // Below a directory, or on the way to one, a non-directory ends the merge.
                (!self.is_dir && last).then_some((meta, false, None))
            }
            Probe::Dir {
                meta,
                opaque,
                redirect,
            } => {
                if last {
                    self.is_dir = true;
                }
                if !marks {
                    return Some((meta, true, None));
                }
                if opaque {
                    self.stop = true;
                    return Some((meta, true, None));
                }
                Some((meta, true, redirect))
            }
        }
    }

    /// Applies the redirect `value` found on the component followed by `post` (the rest
    /// of the name) to what the layers below look up (`ovl_check_redirect`).
    fn redirect(&mut self, value: &[u8], post: &[OsString]) -> Result<(), Invalid> {
        let new = match (Redirect::parse(value)?, &self.name) {
            (Redirect::Absolute(mut comps), _) => {
                // An absolute redirect below an opaque directory on the way still leads
                // the layers below to their own content.
                self.stop = false;
                comps.extend(post.iter().cloned());
                Redirect::Absolute(comps)
            }
            (Redirect::Relative(n), Redirect::Relative(_)) => Redirect::Relative(n),
            (Redirect::Relative(n), Redirect::Absolute(cur)) => {
                // The component's name is replaced; what came before it and the rest stay.
                let keep = cur.len().saturating_sub(post.len() + 1);
                let mut comps = cur[..keep].to_vec();
                comps.push(n);
                comps.extend(post.iter().cloned());
                Redirect::Absolute(comps)
            }
        };
        self.name = new;
        Ok(())
    }
}

/// Looks a name up in the lower layers, as the kernel does below the upper layer.
/// `parent`: the parent directory's places, top-most first (one per layer it has a
/// directory in). `name`: the name (`Relative`), or what the upper layer's entry
/// redirects to. `is_dir`: the upper layer has a directory of this name (so only
/// directories merge below it).
///
/// Returns the occurrences top-most first: one non-directory, or the directories that
/// merge (the last is opaque, or the bottom, or followed by a whiteout or a
/// non-directory).
pub fn lookup<L: LowerLayers>(
    layers: &L,
    parent: &[Place],
    name: Redirect,
    is_dir: bool,
) -> Result<Vec<Hit<L::Meta>>, L::Error> {
    let count = layers.count();
    let root = PathBuf::new();
    let mut walk = Walk {
        name,
        is_dir,
        stop: false,
    };
    let mut from_root = matches!(walk.name, Redirect::Absolute(_));
    let mut hits = Vec::new();
    let mut i = 0;
    while !walk.stop {
        // Where this layer is looked at: the parent's place in it, or, once the name is
        // absolute, the layer's root (and from then on every layer has one).
        let (layer, base) = if from_root {
            if i >= count {
                break;
            }
            (i, root.as_path())
        } else {
            match parent.get(i) {
                Some(p) => (p.layer, p.path.as_path()),
                None => break,
            }
        };
        let marks = layer + 1 < count;
        let found = match &walk.name {
            Redirect::Relative(n) => {
                let n = n.clone();
                let probe = layers.probe(layer, base, &n, marks)?;
                let place = Place {
                    layer,
                    path: base.join(&n),
                };
                match walk.take(probe, true, marks) {
                    Some((meta, dir, redirect)) => {
                        if let Some(v) = redirect {
                            walk.redirect(&v, &[])
                                .map_err(|e| layers.refuse(&place, e))?;
                        }
                        Some((place, meta, dir))
                    }
                    None => None,
                }
            }
            Redirect::Absolute(comps) => {
                let comps = comps.clone();
                let mut dir = PathBuf::new();
                let mut found = None;
                for (j, c) in comps.iter().enumerate() {
                    let post = &comps[j + 1..];
                    let probe = layers.probe(layer, &dir, c, marks)?;
                    dir.push(c);
                    let Some((meta, is_dir, redirect)) = walk.take(probe, post.is_empty(), marks)
                    else {
                        break;
                    };
                    if let Some(v) = redirect {
                        walk.redirect(&v, post).map_err(|e| {
                            layers.refuse(
                                &Place {
                                    layer,
                                    path: dir.clone(),
                                },
                                e,
                            )
                        })?;
                    }
                    if post.is_empty() {
                        found = Some((
                            Place {
                                layer,
                                path: dir.clone(),
                            },
                            meta,
                            is_dir,
                        ));
                    }
                }
                found
            }
        };
        if let Some((place, meta, is_dir)) = found {
            hits.push(Hit {
                place,
                meta,
                is_dir,
            });
        }
        if walk.stop {
            break;
        }
        if !from_root && matches!(walk.name, Redirect::Absolute(_)) {
            // From the layer below this one on, the name is a path from each root.
            from_root = true;
            i = layer + 1;
            continue;
        }
        i += 1;
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Clone)]
    enum E {
        Dir(bool, Option<&'static [u8]>),
        File,
        Whiteout,
    }

    /// Layers in memory: (layer, path) -> entry; a directory's parents are implied.
    #[derive(Default)]
    struct Fake {
        count: usize,
        entries: HashMap<(usize, PathBuf), E>,
    }

    impl Fake {
        fn new(count: usize) -> Fake {
            Fake {
                count,
                ..Fake::default()
            }
        }
        fn put(mut self, layer: usize, path: &str, e: E) -> Fake {
            let path = PathBuf::from(path);
            for a in path.ancestors().skip(1) {
                if !a.as_os_str().is_empty() {
                    self.entries
                        .entry((layer, a.to_path_buf()))
                        .or_insert(E::Dir(false, None));
                }
            }
            self.entries.insert((layer, path), e);
            self
        }
        fn dir(self, layer: usize, path: &str) -> Fake {
            self.put(layer, path, E::Dir(false, None))
        }
        fn opaque(self, layer: usize, path: &str) -> Fake {
            self.put(layer, path, E::Dir(true, None))
        }
        fn redir(self, layer: usize, path: &str, to: &'static [u8]) -> Fake {
            self.put(layer, path, E::Dir(false, Some(to)))
        }
        fn file(self, layer: usize, path: &str) -> Fake {
            self.put(layer, path, E::File)
        }
        fn whiteout(self, layer: usize, path: &str) -> Fake {
            self.put(layer, path, E::Whiteout)
        }
    }

    impl LowerLayers for Fake {
        type Meta = ();
        type Error = (Place, Invalid);
        fn count(&self) -> usize {
            self.count
        }
        fn probe(
            &self,
            layer: usize,
            dir: &Path,
            name: &OsStr,
            marks: bool,
        ) -> Result<Probe<()>, Self::Error> {
            let dir_ok = dir.as_os_str().is_empty()
                || matches!(
                    self.entries.get(&(layer, dir.to_path_buf())),
                    Some(E::Dir(..))
                );
            if !dir_ok {
                return Ok(Probe::Absent);
            }
            Ok(match self.entries.get(&(layer, dir.join(name))) {
                None => Probe::Absent,
                Some(E::Whiteout) => Probe::Whiteout,
                Some(E::File) => Probe::NonDir(()),
                Some(E::Dir(opaque, redirect)) => Probe::Dir {
                    meta: (),
                    opaque: marks && *opaque,
                    redirect: redirect.filter(|_| marks).map(|v| v.to_vec()),
                },
            })
        }
        fn refuse(&self, place: &Place, why: Invalid) -> Self::Error {
            (place.clone(), why)
        }
    }

    fn places(spec: &[(usize, &str)]) -> Vec<Place> {
        spec.iter()
            .map(|(layer, p)| Place {
                layer: *layer,
                path: PathBuf::from(p),
            })
            .collect()
    }

    fn roots(n: usize) -> Vec<Place> {
        (0..n)
            .map(|layer| Place {
                layer,
                path: PathBuf::new(),
            })
            .collect()
    }

    fn rel(n: &str) -> Redirect {
        Redirect::Relative(n.into())
    }

    fn abs(p: &str) -> Redirect {
        Redirect::parse(p.as_bytes()).unwrap()
    }

    /// The hits as "layer:path" (a trailing `/` for a directory).
    fn run(f: &Fake, parent: &[Place], name: Redirect, is_dir: bool) -> Vec<String> {
        lookup(f, parent, name, is_dir)
            .unwrap()
            .into_iter()
            .map(|h| {
                format!(
                    "{}:{}{}",
                    h.place.layer,
                    h.place.path.display(),
                    if h.is_dir { "/" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn values_are_read_as_the_kernel_reads_them() {
        assert_eq!(Redirect::parse(b"a").unwrap(), rel("a"));
        assert_eq!(Redirect::parse(b"a\0").unwrap(), rel("a"));
        assert_eq!(Redirect::parse(b"a\0junk").unwrap(), rel("a"));
        assert_eq!(
            Redirect::parse(b"/a/b\0").unwrap(),
            Redirect::Absolute(vec!["a".into(), "b".into()])
        );
        assert_eq!(Redirect::parse(b".hidden").unwrap(), rel(".hidden"));
        for bad in [
            &b""[..],
            b"\0",
            b"\0a",
            b"/",
            b"//a",
            b"/a//b",
            b"/a/",
            b"a/b",
            b"a/",
            b".",
            b"..",
            b"/..",
            b"/a/../b",
            b"/./a",
            b"/a/.",
        ] {
            assert!(Redirect::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = [b'a'; MAX_VALUE + 1];
        assert!(Redirect::parse(&long).is_err());
        assert!(Redirect::parse(&long[..MAX_VALUE]).is_ok());
        let e = Redirect::parse(b"/a/../../etc").unwrap_err();
        assert!(e.to_string().contains("`..`"), "{e}");
    }

    #[test]
    fn values_resolve_from_the_layer_root() {
        assert_eq!(resolve(Path::new("p/q"), b"n").unwrap(), Path::new("p/q/n"));
        assert_eq!(resolve(Path::new(""), b"n\0").unwrap(), Path::new("n"));
        assert_eq!(
            resolve(Path::new("p/q"), b"/x/y").unwrap(),
            Path::new("x/y")
        );
        assert!(resolve(Path::new("p/../.."), b"n").is_err());
        assert!(resolve(Path::new("/etc"), b"n").is_err());
        assert!(resolve(Path::new("p"), b"../n").is_err());
    }

    #[test]
    fn lower_places_follow_each_redirect_on_the_way_down() {
        let down = |c: &[(&str, Option<&[u8]>)]| {
            lower_place(
                c.iter()
                    .map(|(n, v)| (OsString::from(n), v.map(<[u8]>::to_vec))),
            )
        };
        // mv a b; mv b/sub b/sub2 (kernel: b = "a", sub2 = "sub").
        let p = down(&[("b", Some(b"a")), ("sub2", Some(b"sub"))]).unwrap();
        assert_eq!(p, Path::new("a/sub"));
        let p = down(&[("x", None), ("b", Some(b"/q/r\0")), ("c", None)]).unwrap();
        assert_eq!(p, Path::new("q/r/c"));
        assert!(down(&[("b", Some(b".."))]).is_err());
    }

    #[test]
    fn values_are_written_as_the_kernel_writes_them() {
        assert_eq!(rel("a").value(), b"a");
        assert_eq!(abs("/a/b").value(), b"/a/b");
        // mv /a /b; mv /b/s /c/s: the merged path of the old place, through b's redirect.
        let up = vec![("s".into(), None), ("b".into(), Some(rel("a")))];
        assert_eq!(Redirect::absolute_for_move(up), abs("/a/s"));
        let up = vec![
            ("s".into(), None),
            ("m".into(), None),
            ("b".into(), Some(abs("/x/y"))),
            ("never".into(), None),
        ];
        assert_eq!(Redirect::absolute_for_move(up), abs("/x/y/m/s"));
        let up = vec![("s".into(), Some(rel("t"))), ("d".into(), None)];
        assert_eq!(Redirect::absolute_for_move(up), abs("/d/t"));
    }

    #[test]
    fn plain_names_merge_in_the_parents_places() {
        let f = Fake::new(3)
            .dir(0, "d/x")
            .dir(1, "d/x")
            .dir(2, "d/x")
            .file(2, "d/f");
        // The parent has no directory in layer 1: it is not looked at there.
        let parent = places(&[(0, "d"), (2, "d")]);
        assert_eq!(run(&f, &parent, rel("x"), false), ["0:d/x/", "2:d/x/"]);
        assert_eq!(run(&f, &parent, rel("f"), false), ["2:d/f"]);
        assert!(run(&f, &parent, rel("nope"), false).is_empty());
    }

    #[test]
    fn whiteouts_opaque_dirs_and_non_dirs_end_the_merge() {
        let f = Fake::new(3).whiteout(0, "w").dir(1, "w").dir(0, "o");
        let f = f
            .opaque(1, "o")
            .dir(2, "o")
            .dir(0, "m")
            .file(1, "m")
            .dir(2, "m");
        let r = roots(3);
        assert!(run(&f, &r, rel("w"), false).is_empty());
        assert_eq!(run(&f, &r, rel("o"), false), ["0:o/", "1:o/"]);
        assert_eq!(run(&f, &r, rel("m"), false), ["0:m/"]);
        // Below an upper directory a lower file is not merged.
        let f = Fake::new(1).file(0, "x");
        assert!(run(&f, &roots(1), rel("x"), true).is_empty());
    }

    #[test]
    fn upper_redirects_relative_and_absolute() {
        let f = Fake::new(2).dir(0, "p/a").dir(1, "p/a").dir(1, "q/z");
        let parent = places(&[(0, "p"), (1, "p")]);
        assert_eq!(run(&f, &parent, rel("a"), true), ["0:p/a/", "1:p/a/"]);
        assert_eq!(run(&f, &parent, abs("/q/z"), true), ["1:q/z/"]);
    }

    #[test]
    fn redirects_in_lower_layers_chain() {
        // layer 0 is a container's upper where `a` became `b`; layer 1 the image.
        let f = Fake::new(2)
            .redir(0, "b", b"a")
            .whiteout(0, "a")
            .dir(1, "a");
        let f = f.dir(1, "a/sub").dir(0, "b/new");
        assert_eq!(run(&f, &roots(2), rel("b"), false), ["0:b/", "1:a/"]);
        // The children of the merged `b`: its places are [0:b, 1:a].
        let parent = places(&[(0, "b"), (1, "a")]);
        assert_eq!(run(&f, &parent, rel("sub"), false), ["1:a/sub/"]);
        assert!(run(&f, &roots(2), rel("a"), false).is_empty());

        // Renamed twice, in two containers stacked: c -> b in layer 0, b -> a in layer 1.
        let f = Fake::new(3)
            .redir(0, "c", b"/b")
            .redir(1, "b", b"/a")
            .dir(2, "a");
        assert_eq!(
            run(&f, &roots(3), rel("c"), false),
            ["0:c/", "1:b/", "2:a/"]
        );

        // A relative redirect is relative to the parent's place in each layer, which may
        // itself be redirected: p -> q in layer 0 (absolute), q/y -> x in layer 1.
        let f = Fake::new(3)
            .redir(0, "p", b"/q")
            .dir(1, "q")
            .redir(1, "q/y", b"x");
        let f = f.dir(2, "q/x").dir(0, "p/y");
        assert_eq!(
            run(&f, &roots(3), rel("p"), false),
            ["0:p/", "1:q/", "2:q/"]
        );
        let parent = places(&[(0, "p"), (1, "q"), (2, "q")]);
        assert_eq!(
            run(&f, &parent, rel("y"), false),
            ["0:p/y/", "1:q/y/", "2:q/x/"]
        );
    }

    #[test]
    fn absolute_walks_follow_redirects_on_the_way() {
        // mv /b/sub /c/sub over a layer 0 where b had been renamed from a: the kernel
        // writes "/b/sub"; b's own redirect in layer 0 leads layer 1 to a/sub.
        let f = Fake::new(2)
            .redir(0, "b", b"/a")
            .whiteout(0, "a")
            .dir(1, "a/sub");
        let f = f.dir(1, "a");
        assert_eq!(run(&f, &roots(2), abs("/b/sub"), true), ["1:a/sub/"]);
        // The same with b renamed within the root (a relative redirect).
        let f = Fake::new(2).redir(0, "b", b"a").dir(1, "a").dir(1, "a/sub");
        assert_eq!(run(&f, &roots(2), abs("/b/sub"), true), ["1:a/sub/"]);
        // Two redirects on one walk: /x/y/z where x -> w (relative), then y -> v.
        let f = Fake::new(2)
            .redir(0, "x", b"w")
            .redir(0, "x/y", b"v")
            .dir(1, "w");
        let f = f.dir(1, "w/v").dir(1, "w/v/z");
        assert_eq!(run(&f, &roots(2), abs("/x/y/z"), true), ["1:w/v/z/"]);
        // A non-directory on the way ends the lookup for the layers below too.
        let f = Fake::new(2).file(0, "a").dir(1, "a").dir(1, "a/b");
        assert!(run(&f, &roots(2), abs("/a/b"), true).is_empty());
        // An opaque directory on the way stops the layers below, unless an absolute
        // redirect further down leads them elsewhere.
        let f = Fake::new(2).opaque(0, "o").dir(0, "o/x").dir(1, "o/x");
        assert_eq!(run(&f, &roots(2), abs("/o/x"), true), ["0:o/x/"]);
        let f = Fake::new(2)
            .opaque(0, "o")
            .redir(0, "o/x", b"/y")
            .dir(1, "y");
        assert_eq!(run(&f, &roots(2), abs("/o/x"), true), ["0:o/x/", "1:y/"]);
    }

    #[test]
    fn the_bottom_layer_is_not_asked_for_marks() {
        // The kernel does not read opaque or redirect on the bottom layer, so a bad value
        // there is never an error.
        let f = Fake::new(2).dir(0, "x").redir(1, "x", b"..");
        assert_eq!(run(&f, &roots(2), rel("x"), false), ["0:x/", "1:x/"]);
    }

    #[test]
    fn invalid_redirects_fail_the_lookup_naming_the_place() {
        let f = Fake::new(2).redir(0, "d/x", b"../../etc").dir(1, "etc");
        let err = lookup(&f, &places(&[(0, "d")]), rel("x"), false).unwrap_err();
        assert_eq!(err.0, places(&[(0, "d/x")])[0]);
        let f = Fake::new(2).redir(0, "a", b"/a/./b");
        assert!(lookup(&f, &roots(2), abs("/a/q"), true).is_err());
    }

    #[test]
    fn redirects_in_circles_end_at_the_bottom() {
        // Each layer is consulted once per lookup, top to bottom: a -> b and b -> a in
        // every layer is two finite lookups, not a loop.
        let mut f = Fake::new(4);
        for l in 0..3 {
            f = f.redir(l, "a", b"/b").redir(l, "b", b"a");
        }
        let f = f.dir(3, "a").dir(3, "b");
        assert_eq!(
            run(&f, &roots(4), rel("a"), false),
            ["0:a/", "1:b/", "2:a/", "3:b/"]
        );
        // A directory redirected to itself or to its own parent.
        let f = Fake::new(2)
            .redir(0, "s", b"s")
            .dir(1, "s")
            .redir(0, "p/c", b"/p");
        let f = f.dir(0, "p").dir(1, "p").dir(1, "p/c");
        assert_eq!(run(&f, &roots(2), rel("s"), false), ["0:s/", "1:s/"]);
        let parent = places(&[(0, "p"), (1, "p")]);
        assert_eq!(run(&f, &parent, rel("c"), false), ["0:p/c/", "1:p/"]);
    }
}

/// The same rules read from real layer directories (`user.overlay.redirect` on disk,
/// through `layers::stack`), so the encoding and the walk are tested together.
#[cfg(test)]
mod on_disk {
    use crate::layers::fixture::{places, resolve, Layers, Lower, Upper};

    /// The merged lower places of directory `rel`, or the lookup's errno.
    fn lowers(l: &Layers, rel: &str) -> Result<Vec<String>, i32> {
        match resolve(&l.stack(), rel) {
            Ok(Some(f)) => Ok(places(&f.lower_dirs)),
            Ok(None) => Ok(vec!["absent".into()]),
            Err(e) => Err(e.errno()),
        }
    }

    #[test]
    fn an_upper_relative_redirect_names_the_directory_in_its_parents_lower_places() {
        let l = Layers::new(2);
        l.file(Lower(1), "p/old/f", "").dir(Lower(0), "p/old");
        l.redirect(Upper, "p/new", b"old")
            .whiteout_file(Upper, "p/old");
        assert_eq!(lowers(&l, "p/new").unwrap(), ["0:p/old", "1:p/old"]);
        assert_eq!(lowers(&l, "p/new/f").unwrap(), Vec::<String>::new());
        assert!(resolve(&l.stack(), "p/new/f").unwrap().is_some());
        assert_eq!(lowers(&l, "p/old").unwrap(), ["absent"]);
        // A trailing NUL is read as the kernel reads the value, a C string.
        l.redirect(Upper, "p/nul", b"old\0");
        assert_eq!(lowers(&l, "p/nul").unwrap(), ["0:p/old", "1:p/old"]);
    }

    #[test]
    fn an_upper_absolute_redirect_is_a_path_from_every_lower_root() {
        let l = Layers::new(2);
        l.dir(Lower(0), "x/y").file(Lower(1), "x/y/f", "");
        l.dir(Upper, "q").redirect(Upper, "q/moved", b"/x/y");
        assert_eq!(lowers(&l, "q/moved").unwrap(), ["0:x/y", "1:x/y"]);
        assert!(resolve(&l.stack(), "q/moved/f").unwrap().is_some());
    }

    #[test]
    fn redirects_in_lower_layers_chain() {
        // Layer 0 is a container's upper in which `a` became `b`; layer 1 the image.
        let l = Layers::new(2);
        l.redirect(Lower(0), "b", b"a")
            .whiteout_chardev(Lower(0), "a");
        l.file(Lower(1), "a/sub/f", "");
        assert_eq!(lowers(&l, "b").unwrap(), ["0:b", "1:a"]);
        assert_eq!(lowers(&l, "b/sub").unwrap(), ["1:a/sub"]);
        assert_eq!(lowers(&l, "a").unwrap(), ["absent"]);
        // An absolute one in a middle layer leads the layers below it.
        let l = Layers::new(3);
        l.redirect(Lower(0), "c", b"/b")
            .redirect(Lower(1), "b", b"/a");
        l.dir(Lower(2), "a");
        assert_eq!(lowers(&l, "c").unwrap(), ["0:c", "1:b", "2:a"]);
    }

    #[test]
    fn an_opaque_upper_directory_is_not_redirected() {
        let l = Layers::new(1);
        l.file(Lower(0), "a/f", "");
        l.redirect(Upper, "b", b"a").opaque_xattr(Upper, "b");
        assert_eq!(lowers(&l, "b").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn refused_values_fail_the_lookup_with_eio_and_are_told_once() {
        for bad in [
            &b"../etc"[..],
            b"",
            b"a/b",
            b"/a//b",
            b"/a/../b",
            b".",
            b"\0x",
        ] {
            let l = Layers::new(1);
            l.dir(Lower(0), "etc");
            l.redirect(Upper, "d", bad);
            assert_eq!(lowers(&l, "d"), Err(libc::EIO), "{bad:?}");
        }
        let l = Layers::new(2);
        l.redirect(Lower(0), "d", b"..").dir(Lower(1), "d");
        let stack = l.stack();
        for _ in 0..2 {
            let e = resolve(&stack, "d").unwrap_err();
            assert_eq!(e.errno(), libc::EIO);
            assert!(e.to_string().contains("`..`"), "{e}");
        }
        assert_eq!(stack.refused.lock().len(), 1);
    }

    #[test]
    fn the_bottom_layer_is_not_read_for_redirects() {
        let l = Layers::new(2);
        l.dir(Lower(0), "d").redirect(Lower(1), "d", b"../../etc");
        assert_eq!(lowers(&l, "d").unwrap(), ["0:d", "1:d"]);
    }
}
