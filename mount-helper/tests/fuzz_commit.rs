//! Commit round-trip fuzzer (seeded, shrinking to a minimal op list printed with its seed,
//! like tests/differential.rs).
//!
//! A base image with nested directories, hard-link sets of two and three names across
//! directories, symlinks, user xattrs, set-id modes and foreign owners is mounted as a
//! container; random operations change it through the mount: renames of lower directories
//! and then of their children, deletes and re-creations inside renamed directories, writes
//! and appends through either name of hard links, chmod/chown/setxattr, symlinks (some to a
//! canary directory outside the store, absolute and by `../` chains), subdirectories of
//! renamed directories replaced by symlinks to the canary, hard links, opaque re-creation
//! (`rm -rf d; mkdir d`). At each commit step the container's live view (names, types,
//! modes, owners, sizes, content hashes, symlink targets, hard-link groups, user xattrs;
//! not times) is snapshotted, `layerctl commit` runs, and three oracles must equal it:
//! 1. the committed image mounted read-only by layerctl (layerfs);
//! 2. the container's upper directory used directly as the top lower layer over the
//!    image's layer directories, in a fresh layerfs mount and in a kernel overlayfs mount
//!    (`redirect_dir=follow`, the lowers-only form of `redirect_dir=on`);
//! 3. `layerctl save` (OCI layout) + `umoci unpack` of the committed image.
//!
//! The canary (hashed before and after, watched with inotify through the whole case) must
//! be untouched and `layerctl fsck` clean. Commits chain: a container of the committed
//! image is changed again and committed again. One variant mounts the containers with
//! layerfs, one with kernel overlayfs (`LAYERCTL_MOUNT_PROGRAM=kernel`), so commit reads
//! the kernel's redirects too.
//!
//! Environment: `LAYERCTL_FUZZ_COMMIT_SEEDS` (default 10 per variant),
//! `LAYERCTL_FUZZ_COMMIT_SEED_START` (default 0), `LAYERCTL_FUZZ_COMMIT_OPS` (ops per seed,
//! default 40, spread over about three commits), `LAYERCTL_FUZZ_COMMIT_SHRINK_SECS`
//! (default 600), `LAYERCTL_FUZZ_COMMIT_VARIANT` (`layerfs`, `kernel`; default both).
//! `scripts/fuzz-commit` runs 10^5 operations.
mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// One step of a script. Paths are relative to the container's root; an op whose path
/// does not exist (any more), or leads through a symlink, does nothing, so that a shrunk
/// script still runs.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Rename(String, String),
    RmRf(String),
    Mkdir(String, u32),
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Chmod(String, u32),
    Chown(String, u32, u32),
    SetXattr(String, String, Vec<u8>),
    /// `ln -s TARGET PATH`; a target starting with `@` is the canary: `@abs` its absolute
    /// path, `@upN` N `../` then the canary's path from `/`.
    Symlink(String, String),
    Link(String, String),
    /// Snapshot, commit, check the oracles, then continue in a new container of the
    /// committed image.
    Commit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Rename(a, b) => write!(f, "Rename({a:?}, {b:?})"),
            Step::RmRf(p) => write!(f, "RmRf({p:?})"),
            Step::Mkdir(p, m) => write!(f, "Mkdir({p:?}, 0o{m:o})"),
            Step::Write(p, d) => write!(f, "Write({p:?}, {} bytes)", d.len()),
            Step::Append(p, d) => write!(f, "Append({p:?}, {} bytes)", d.len()),
            Step::Chmod(p, m) => write!(f, "Chmod({p:?}, 0o{m:o})"),
            Step::Chown(p, u, g) => write!(f, "Chown({p:?}, {u}, {g})"),
            Step::SetXattr(p, k, v) => write!(f, "SetXattr({p:?}, {k:?}, {} bytes)", v.len()),
            Step::Symlink(t, p) => write!(f, "Symlink({t:?}, {p:?})"),
            Step::Link(a, b) => write!(f, "Link({a:?}, {b:?})"),
            Step::Commit => write!(f, "Commit"),
        }
    }
}

fn join(d: &str, n: &str) -> String {
    if d.is_empty() {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|x| x.0).unwrap_or("")
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32, owner: (u32, u32)) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::lchown(&p, Some(owner.0), Some(owner.1)).unwrap();
}

fn dir(root: &Path, rel: &str, mode: u32, owner: (u32, u32)) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::lchown(&p, Some(owner.0), Some(owner.1)).unwrap();
}

fn lsetxattr(p: &Path, k: &str, v: &[u8]) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(k).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The base image's tree.
fn make_base(root: &Path) {
    dir(root, "", 0o755, (0, 0));
    dir(root, "d1", 0o755, (0, 0));
    dir(root, "d1/sub", 0o750, (1000, 1000));
    dir(root, "d1/sub/deep", 0o2775, (0, 1234));
    dir(root, "d1/sub/deep/more", 0o700, (1234, 5678));
    dir(root, "d2/sub/inner", 0o755, (0, 0));
    dir(root, "d3/a/b/c", 0o755, (0, 0));
    dir(root, "d4", 0o1777, (0, 0));
    put(root, "d1/f", b"d1 f\n", 0o644, (0, 0));
    put(root, "d1/sub/g", b"sub g\n", 0o640, (1000, 1000));
    put(root, "d1/sub/deep/h", b"deep h\n", 0o600, (1234, 5678));
    put(root, "d1/sub/deep/more/i", &[b'i'; 3000], 0o644, (0, 0));
    put(root, "d2/k", b"k\n", 0o644, (0, 0));
    put(root, "d2/sub/l", b"l\n", 0o755, (0, 0));
    put(root, "d2/sub/inner/m", b"m\n", 0o644, (0, 0));
    put(root, "d3/a/b/c/file", b"c file\n", 0o444, (0, 0));
    put(root, "top", b"#!top\n", 0o4755, (1234, 5678));
    // Hard-link sets: three names across directories, two in one directory, two across.
    put(root, "d1/hl", b"hard three\n", 0o644, (1000, 1000));
    fs::hard_link(root.join("d1/hl"), root.join("d2/hl")).unwrap();
    fs::hard_link(root.join("d1/hl"), root.join("d3/a/hl")).unwrap();
    put(root, "d1/sub/p", b"hard two\n", 0o600, (0, 0));
    fs::hard_link(root.join("d1/sub/p"), root.join("d1/sub/p2")).unwrap();
    put(root, "d2/sub/q", b"hard across\n", 0o644, (0, 0));
    dir(root, "etc", 0o755, (0, 0));
    fs::hard_link(root.join("d2/sub/q"), root.join("etc/q")).unwrap();
    std::os::unix::fs::symlink("../d1/f", root.join("d2/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("d1/abs")).unwrap();
    std::os::unix::fs::symlink("../d1", root.join("d3/rel")).unwrap();
    lsetxattr(&root.join("d1/f"), "user.a", b"one").unwrap();
    lsetxattr(&root.join("d2"), "user.dir", b"x").unwrap();
    lsetxattr(&root.join("d1/sub/deep"), "user.deep", b"yes").unwrap();
    lsetxattr(&root.join("d1/hl"), "user.hl", b"shared").unwrap();
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    kind: String,
    mode: u32,
    owner: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

/// A tree as the comparisons see it, plus its hard-link groups.
#[derive(Clone, Debug, PartialEq)]
struct View {
    items: BTreeMap<String, Item>,
    groups: Vec<Vec<String>>,
}

fn view(root: &Path) -> View {
    let mut items = BTreeMap::new();
    let mut by_ino: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                by_ino
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
                format!(
                    "file:{}:{:x}",
                    m.len(),
                    Sha256::digest(fs::read(&p).unwrap())
                )
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                format!("special:{:o}:{}", m.mode() & 0o170000, m.rdev())
            };
            items.insert(
                rel,
                Item {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    owner: (m.uid(), m.gid()),
                    xattrs: if ft.is_symlink() {
                        Vec::new()
                    } else {
                        user_xattrs(&p)
                    },
                },
            );
        }
    }
    let mut groups: Vec<Vec<String>> = by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    View { items, groups }
}

/// The differences of `got` against `want`, at most a dozen lines; empty when equal.
fn differences(want: &View, got: &View) -> String {
    let mut d = String::new();
    let mut n = 0;
    for k in want
        .items
        .keys()
        .chain(got.items.keys())
        .collect::<BTreeSet<_>>()
    {
        if want.items.get(k) != got.items.get(k) {
            n += 1;
            if n <= 12 {
                d += &format!(
                    "\n  {k}: live {:?} / oracle {:?}",
                    want.items.get(k),
                    got.items.get(k)
                );
            }
        }
    }
    if n > 12 {
        d += &format!("\n  ... {} more", n - 12);
    }
    if d.is_empty() && want.groups != got.groups {
        d += &format!(
            "\n  hard-link groups: live {:?} / oracle {:?}",
            want.groups, got.groups
        );
    }
    d
}

/// Everything of the canary that could change, to compare before and after. Read by a
/// child process: a descriptor this process opened on the canary could be inherited by a
/// child another test thread forks at that moment, and its close (an inotify event) would
/// then come late, after the events were collected.
fn canary_state(c: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(
            "cd \"$0\" && find . -printf '%p %y %m %U:%G %s %T@ %C@ %l\\n' | sort && \
             find . -type f -exec sha256sum {} + | sort && getfattr -R -h -d -m - . 2>/dev/null",
        )
        .arg(c)
        .output()
        .unwrap();
    assert!(o.status.success(), "reading the canary failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The canary's paths (as [`make_canary`] makes them), to watch.
const CANARY_PATHS: [&str; 4] = ["", "sub", "file", "sub/f"];

struct Inotify(i32, BTreeMap<i32, PathBuf>);

impl Inotify {
    fn watch(paths: &[PathBuf]) -> Inotify {
        // SAFETY: plain syscalls; the fd is owned by the returned value.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let mut wds = BTreeMap::new();
        for p in paths {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // Reads count as touching too: nothing has a reason to look at the canary.
            // SAFETY: valid fd and C string.
            let w = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_ALL_EVENTS) };
            assert!(w >= 0, "inotify watch on {}", p.display());
            wds.insert(w, p.clone());
        }
        Inotify(fd, wds)
    }
    /// The events queued since the last call, as "path (mask)".
    fn events(&self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut off = 0;
            while off + 16 <= n as usize {
                let b = &buf[off..];
                let wd = i32::from_ne_bytes(b[0..4].try_into().unwrap());
                let mask = u32::from_ne_bytes(b[4..8].try_into().unwrap());
                let len = u32::from_ne_bytes(b[12..16].try_into().unwrap()) as usize;
                let name = String::from_utf8_lossy(&b[16..16 + len]);
                let name = name.trim_end_matches('\0');
                let p = self.1.get(&wd).map(|p| p.display().to_string());
                out.push(format!("{}/{name} (mask {mask:#x})", p.unwrap_or_default()));
                off += 16 + len;
            }
        }
    }
}

impl Drop for Inotify {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// Containers mounted by layerfs.
    Layerfs,
    /// Containers mounted by kernel overlayfs.
    Kernel,
}

struct World<'a> {
    canary: &'a Path,
    variant: Variant,
}

/// A failure: which check (the signature shrinking keeps) and the details.
#[derive(Debug)]
struct Failure {
    sig: String,
    detail: String,
    /// Index of the step where it failed (the script is cut after it for shrinking).
    at: usize,
}

fn fail(sig: &str, detail: String, at: usize) -> Failure {
    Failure {
        sig: sig.to_string(),
        detail,
        at,
    }
}

/// `rel` below `mnt` when no component of its parent is a symlink (ops never follow
/// one: a symlink can point at the canary, and the test itself must not touch it).
fn safe(mnt: &Path, rel: &str, follow_last: bool) -> Option<PathBuf> {
    if rel.is_empty() {
        return None;
    }
    let comps: Vec<&str> = rel.split('/').collect();
    let mut p = mnt.to_path_buf();
    for c in &comps[..comps.len() - 1] {
        p.push(c);
        if !fs::symlink_metadata(&p).ok()?.is_dir() {
            return None;
        }
    }
    p.push(comps[comps.len() - 1]);
    if follow_last {
        let m = fs::symlink_metadata(&p).ok()?;
        if m.file_type().is_symlink() {
            return None;
        }
    }
    Some(p)
}

fn symlink_target(t: &str, canary: &Path) -> String {
    if t == "@abs" {
        canary.display().to_string()
    } else if let Some(n) = t.strip_prefix("@up") {
        let n: usize = n.parse().unwrap();
        let rel = canary.strip_prefix("/").unwrap().display().to_string();
        format!("{}{rel}", "../".repeat(n))
    } else {
        t.to_string()
    }
}

/// Runs one op on the mount; errors (a path gone, a rename into itself) are part of the
/// game and ignored.
fn exec(mnt: &Path, step: &Step, canary: &Path) {
    match step {
        Step::Rename(a, b) => {
            if let (Some(a), Some(b)) = (safe(mnt, a, false), safe(mnt, b, false)) {
                let _ = fs::rename(a, b);
            }
        }
        Step::RmRf(p) => {
            if let Some(p) = safe(mnt, p, false) {
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        let _ = fs::remove_dir_all(&p);
                    }
                    Ok(_) => {
                        let _ = fs::remove_file(&p);
                    }
                    Err(_) => {}
                }
            }
        }
        Step::Mkdir(p, mode) => {
            if let Some(p) = safe(mnt, p, false) {
                if fs::create_dir(&p).is_ok() {
                    let _ = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
                }
            }
        }
        Step::Write(p, data) | Step::Append(p, data) => {
            if let Some(p) = safe(mnt, p, false) {
                let mut o = fs::OpenOptions::new();
                o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
                if matches!(step, Step::Append(..)) {
                    o.append(true);
                } else {
                    o.write(true).create(true).truncate(true).mode(0o644);
                }
                if let Ok(mut f) = o.open(&p) {
                    if f.metadata().is_ok_and(|m| m.is_file()) {
                        let _ = f.write_all(data);
                    }
                }
            }
        }
        Step::Chmod(p, mode) => {
            if let Some(p) = safe(mnt, p, true) {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
            }
        }
        Step::Chown(p, u, g) => {
            if let Some(p) = safe(mnt, p, false) {
                let _ = std::os::unix::fs::lchown(&p, Some(*u), Some(*g));
            }
        }
        Step::SetXattr(p, k, v) => {
            if let Some(p) = safe(mnt, p, false) {
                let _ = lsetxattr(&p, k, v);
            }
        }
        Step::Symlink(t, p) => {
            if let Some(p) = safe(mnt, p, false) {
                let _ = std::os::unix::fs::symlink(symlink_target(t, canary), p);
            }
        }
        Step::Link(a, b) => {
            if let (Some(a), Some(b)) = (safe(mnt, a, false), safe(mnt, b, false)) {
                let _ = fs::hard_link(a, b);
            }
        }
        Step::Commit => unreachable!(),
    }
}

/// What the mount holds now, for generating the next op: (directories with the root as
/// "", files, everything else).
fn listing(mnt: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let v = view(mnt);
    let mut dirs = vec![String::new()];
    let (mut files, mut others) = (Vec::new(), Vec::new());
    for (p, i) in v.items {
        if i.kind == "dir" {
            dirs.push(p);
        } else if i.kind.starts_with("file:") {
            files.push(p);
        } else {
            others.push(p);
        }
    }
    (dirs, files, others)
}

const NAMES: [&str; 8] = ["n1", "n2", "sub", "sub2", "hl", "f", "x", "deep"];

fn name(r: &mut Rng) -> &'static str {
    NAMES[r.below(NAMES.len())]
}

fn data(r: &mut Rng) -> Vec<u8> {
    let n = *r.pick(&[0usize, 1, 7, 100, 4097]);
    let c = b'a' + r.below(26) as u8;
    vec![c; n]
}

/// The next few ops, chosen against what the mount holds now.
fn generate(r: &mut Rng, mnt: &Path) -> Vec<Step> {
    let (dirs, files, others) = listing(mnt);
    let sub_dirs: Vec<String> = dirs.iter().filter(|d| !d.is_empty()).cloned().collect();
    let all: Vec<String> = sub_dirs
        .iter()
        .chain(files.iter())
        .chain(others.iter())
        .cloned()
        .collect();
    let fresh = |r: &mut Rng| {
        let d: &String = r.pick(&dirs);
        join(d, name(r))
    };
    let children = |d: &str| -> Vec<String> {
        all.iter()
            .filter(|p| parent(p) == d)
            .cloned()
            .collect::<Vec<_>>()
    };
    let canary_target = |r: &mut Rng| -> String {
        match r.below(3) {
            0 => "@abs".to_string(),
            _ => format!("@up{}", *r.pick(&[1usize, 2, 3, 4, 12])),
        }
    };
    let mut out = Vec::new();
    match r.below(24) {
        // A renamed lower directory, then something on its children under the new name.
        0..=4 if !sub_dirs.is_empty() => {
            let a = r.pick(&sub_dirs).clone();
            let b = loop {
                let b = fresh(r);
                if !(b == a || b.starts_with(&format!("{a}/"))) {
                    break b;
                }
            };
            out.push(Step::Rename(a.clone(), b.clone()));
            let kids: Vec<String> = children(&a)
                .iter()
                .map(|k| format!("{b}{}", &k[a.len()..]))
                .collect();
            if !kids.is_empty() {
                let k = r.pick(&kids).clone();
                match r.below(7) {
                    0 => out.push(Step::Rename(k.clone(), join(&b, name(r)))),
                    1 => out.push(Step::RmRf(k)),
                    2 => {
                        // A subdirectory of the renamed directory replaced by a symlink
                        // to the canary.
                        let t = canary_target(r);
                        out.push(Step::RmRf(k.clone()));
                        out.push(Step::Symlink(t, k));
                    }
                    3 => {
                        out.push(Step::RmRf(k.clone()));
                        out.push(Step::Mkdir(k.clone(), 0o755));
                        out.push(Step::Write(join(&k, "new"), data(r)));
                    }
                    4 => out.push(Step::Append(k, data(r))),
                    5 => out.push(Step::Rename(k, fresh(r))),
                    _ => out.push(Step::Write(join(&b, name(r)), data(r))),
                }
            }
        }
        5..=6 if !all.is_empty() => out.push(Step::RmRf(r.pick(&all).clone())),
        7 => out.push(Step::Mkdir(
            fresh(r),
            *r.pick(&[0o755, 0o700, 0o2775, 0o1777]),
        )),
        8..=9 => {
            let p = if !files.is_empty() && r.below(2) == 0 {
                r.pick(&files).clone()
            } else {
                fresh(r)
            };
            out.push(Step::Write(p, data(r)));
        }
        10..=11 if !files.is_empty() => {
            // Hard-linked names first: appends through one name must show through all.
            let linked: Vec<String> = files
                .iter()
                .filter(|f| f.ends_with("hl") || f.contains("/p") || f.ends_with("q"))
                .cloned()
                .collect();
            let p = if !linked.is_empty() && r.below(2) == 0 {
                r.pick(&linked).clone()
            } else {
                r.pick(&files).clone()
            };
            out.push(Step::Append(p, data(r)));
        }
        12 if !all.is_empty() => out.push(Step::Chmod(
            r.pick(&all).clone(),
            *r.pick(&[0o644, 0o600, 0o4755, 0o2750, 0o1777, 0o700, 0o444]),
        )),
        13 if !all.is_empty() => {
            let (u, g) = *r.pick(&[(0, 0), (1000, 1000), (1234, 5678), (65534, 65534)]);
            out.push(Step::Chown(r.pick(&all).clone(), u, g));
        }
        14 if !all.is_empty() => {
            let k = r.pick(&["user.a", "user.b", "user.dir"]).to_string();
            out.push(Step::SetXattr(r.pick(&all).clone(), k, data(r)));
        }
        15..=16 => {
            let t = match r.below(4) {
                0 => r.pick(&["../d1", "f", "sub/x", "/etc/hosts"]).to_string(),
                _ => canary_target(r),
            };
            out.push(Step::Symlink(t, fresh(r)));
        }
        17..=18 if !files.is_empty() => out.push(Step::Link(r.pick(&files).clone(), fresh(r))),
        // Opaque re-creation.
        19..=20 if !sub_dirs.is_empty() => {
            let d = r.pick(&sub_dirs).clone();
            out.push(Step::RmRf(d.clone()));
            out.push(Step::Mkdir(d.clone(), 0o755));
            if r.below(2) == 0 {
                out.push(Step::Write(join(&d, name(r)), data(r)));
            }
        }
        21..=22 if !all.is_empty() => out.push(Step::Rename(r.pick(&all).clone(), fresh(r))),
        _ => out.push(Step::Write(fresh(r), data(r))),
    }
    out
}

/// `layerctl umount NAME`, again while the mount is busy: a child that another test
/// thread forks inherits, until it execs, the descriptors this thread has open on the
/// mount, which keeps it busy for that moment.
fn umount(env: &Env, name: &str) -> Result<(), String> {
    for _ in 0..100 {
        let o = env.run(&["umount", name]);
        if o.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if !err.contains("busy") {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("container {name} stays busy"))
}

fn layer_dirs(env: &Env, image: &str) -> Result<Vec<PathBuf>, String> {
    let o = env.run(&["inspect", image]);
    if !o.status.success() {
        return Err(format!(
            "inspect {image}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).map_err(|e| format!("inspect: {e}"))?;
    let ids = v["image"]["config"]["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("inspect has no diff_ids")?;
    // Top first, as lowerdir= lists them; a layer repeated lower down changes nothing (the
    // upper occurrence decides every path it names) and kernel overlayfs refuses a
    // directory listed twice.
    let mut out: Vec<PathBuf> = Vec::new();
    for d in ids.iter().rev() {
        let p = env
            .root
            .join("layers")
            .join(d.as_str().unwrap_or_default().trim_start_matches("sha256:"))
            .join("diff");
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

fn lowerdir(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// The view of a read-only mount of `lowers` by layerfs or by kernel overlayfs.
fn stacked_view(lowers: &[PathBuf], mnt: &Path, kernel: bool) -> Result<View, String> {
    fs::create_dir_all(mnt).unwrap();
    let o = if kernel {
        // Kernel overlayfs wants two lowers for a lowers-only mount; an empty bottom
        // layer changes nothing.
        let mut l = lowers.to_vec();
        if l.len() < 2 {
            let empty = mnt.with_extension("empty");
            fs::create_dir_all(&empty).unwrap();
            l.push(empty);
        }
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={},redirect_dir=follow", lowerdir(&l)))
            .arg(mnt)
            .output()
            .unwrap()
    } else {
        Command::new(layerctl_bin().with_file_name("layerfs"))
            .arg("-o")
            .arg(format!("lowerdir={}", lowerdir(lowers)))
            .arg(mnt)
            .output()
            .unwrap()
    };
    if !o.status.success() {
        return Err(format!(
            "mounting the stacked upper ({}): {}",
            if kernel { "kernel" } else { "layerfs" },
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let guard = MountGuard(vec![mnt.to_path_buf()]);
    let v = view(mnt);
    let mut tries = 0;
    while !Command::new("umount")
        .arg(mnt)
        .output()
        .unwrap()
        .status
        .success()
    {
        tries += 1;
        if tries == 100 {
            return Err(format!("{} stays busy", mnt.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
    Ok(v)
}

/// Oracle 2 cannot see the workdir index: a lower hard-link set changed through one name
/// has its new content there, and the names the container never touched are still
/// lower-only entries in the upper. Kernel overlayfs reads such an upper the same way
/// (index=on lives in the workdir too), so those names show the image's content in a
/// stack of uppers; commit writes them all (oracles 1 and 3 check that). Only such names
/// are left out: live members of a hard-link group whose entry in the stack equals an
/// entry of a hard-linked file of the image the container started from.
fn without_index_names(live: &View, got: &View, image: &View) -> (View, View) {
    let image_linked: Vec<&Item> = image
        .groups
        .iter()
        .flatten()
        .filter_map(|p| image.items.get(p))
        .collect();
    let linked: BTreeSet<&String> = live.groups.iter().flatten().collect();
    let skip: BTreeSet<String> = live
        .items
        .keys()
        .filter(|p| {
            linked.contains(p)
                && got.items.get(*p) != live.items.get(*p)
                && got.items.get(*p).is_some_and(|g| image_linked.contains(&g))
        })
        .cloned()
        .collect();
    let strip = |v: &View| {
        let items = v
            .items
            .iter()
            .filter(|(p, _)| !skip.contains(*p))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        let mut groups: Vec<Vec<String>> = v
            .groups
            .iter()
            .map(|g| g.iter().filter(|p| !skip.contains(*p)).cloned().collect())
            .filter(|g: &Vec<String>| g.len() > 1)
            .collect();
        groups.sort();
        View { items, groups }
    };
    (strip(live), strip(got))
}

/// Runs `steps` from a fresh store. With `gen`, the steps are chosen while running
/// (`ops` of them, commits in between and one at the end) and recorded in `steps`.
fn run_case(
    w: &World,
    steps: &mut Vec<Step>,
    mut gen: Option<(&mut Rng, usize)>,
) -> Result<(), Failure> {
    let env = Env::new();
    let base = env.path("base");
    make_base(&base);
    env.ok(&["import", base.to_str().unwrap(), "fuzz:0"]);
    let mount_prog = match w.variant {
        Variant::Layerfs => mount_program(),
        Variant::Kernel => "kernel".to_string(),
    };
    let mut guard = MountGuard(Vec::new());
    let watched: Vec<PathBuf> = CANARY_PATHS.iter().map(|p| w.canary.join(p)).collect();
    let before = canary_state(w.canary);
    let ino = Inotify::watch(&watched);

    let mut gen_steps: Vec<Step> = Vec::new();
    let mut image = "fuzz:0".to_string();
    let mut round = 0;
    let mut i = 0;
    let mut ops_done = 0;
    loop {
        // A new container of the latest image.
        let name = format!("c{round}");
        let mnt = env.path(&format!("mnt{round}"));
        fs::create_dir_all(&mnt).unwrap();
        guard.0.push(mnt.clone());
        let o = env
            .cmd(&["mount", &image, mnt.to_str().unwrap(), "--name", &name])
            .env("LAYERCTL_MOUNT_PROGRAM", &mount_prog)
            .output()
            .unwrap();
        if !o.status.success() {
            return Err(fail(
                "mount",
                format!("mount {image}: {}", String::from_utf8_lossy(&o.stderr)),
                i,
            ));
        }
        let start_view = view(&mnt);
        // Ops up to the next commit.
        loop {
            let step = if let Some((r, ops)) = gen.as_mut() {
                if gen_steps.is_empty() {
                    if ops_done >= *ops {
                        Step::Commit
                    } else if ops_done > 0 && r.below(*ops / 3 + 1) == 0 {
                        gen_steps.push(Step::Commit);
                        continue;
                    } else {
                        let mut g = generate(r, &mnt);
                        ops_done += g.len();
                        g.reverse();
                        gen_steps = g;
                        continue;
                    }
                } else {
                    gen_steps.pop().unwrap()
                }
            } else if i < steps.len() {
                steps[i].clone()
            } else {
                Step::Commit
            };
            if gen.is_some() {
                steps.push(step.clone());
            }
            if step == Step::Commit {
                break;
            }
            exec(&mnt, &step, w.canary);
            i += 1;
        }
        // The commit step, index i. Each stage checks the canary, to name the culprit.
        let canary_ok = |stage: &str| -> Result<(), Failure> {
            let events = ino.events();
            let changed = canary_state(w.canary) != before;
            // Our own look at the canary just now queued events of its own.
            ino.events();
            if events.is_empty() && !changed {
                return Ok(());
            }
            Err(fail(
                &format!("canary touched by {stage}"),
                format!("changed: {changed}; inotify: {}", events.join(", ")),
                i,
            ))
        };
        canary_ok("the ops (the test itself)")?;
        let live = view(&mnt);
        let new = format!("fuzz:{}", round + 1);
        let o = env.run(&["commit", &name, &new]);
        if !o.status.success() {
            return Err(fail(
                "commit failed",
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
                i,
            ));
        }
        canary_ok("layerctl commit")?;
        // Oracle 1: the committed image, mounted read-only by layerctl (layerfs).
        let ro = env.path(&format!("ro{round}"));
        fs::create_dir_all(&ro).unwrap();
        guard.0.push(ro.clone());
        let ro_name = format!("ro{round}");
        let o = env.run(&[
            "mount",
            &new,
            ro.to_str().unwrap(),
            "--read-only",
            "--name",
            &ro_name,
        ]);
        if !o.status.success() {
            return Err(fail(
                "mount committed",
                String::from_utf8_lossy(&o.stderr).to_string(),
                i,
            ));
        }
        let committed = view(&ro);
        umount(&env, &ro_name).map_err(|e| fail("umount", e, i))?;
        env.ok(&["rm", &ro_name]);
        let d = differences(&live, &committed);
        if !d.is_empty() {
            return Err(fail("oracle 1 (committed image, layerfs)", d, i));
        }
        canary_ok("the committed image's mount")?;
        // Oracle 2: the upper over the image's layers; the container is unmounted first
        // (kernel overlayfs refuses an upper in use as a lower elsewhere).
        umount(&env, &name).map_err(|e| fail("umount", e, i))?;
        let mut lowers = vec![env.root.join("containers").join(&name).join("upper")];
        lowers.extend(layer_dirs(&env, &image).map_err(|e| fail("inspect", e, i))?);
        for kernel in [false, true] {
            let m = env.path(&format!("stack{round}{kernel}"));
            guard.0.push(m.clone());
            let got = stacked_view(&lowers, &m, kernel).map_err(|e| fail("stack mount", e, i))?;
            let (want, got) = without_index_names(&live, &got, &start_view);
            let d = differences(&want, &got);
            if !d.is_empty() {
                let which = if kernel {
                    "kernel overlayfs"
                } else {
                    "layerfs"
                };
                return Err(fail(
                    &format!("oracle 2 (upper as a lower layer, {which})"),
                    d,
                    i,
                ));
            }
        }
        canary_ok("the stacked upper's mounts")?;
        // Oracle 3: save + umoci unpack.
        let lay = env.path(&format!("oci{round}"));
        let o = env.run(&[
            "save",
            &new,
            "--format",
            "oci-dir",
            "-o",
            lay.to_str().unwrap(),
        ]);
        if !o.status.success() {
            return Err(fail(
                "save",
                String::from_utf8_lossy(&o.stderr).to_string(),
                i,
            ));
        }
        let bundle = env.path(&format!("bundle{round}"));
        let o = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{}", lay.display(), round + 1))
            .arg(&bundle)
            .output()
            .unwrap_or_else(|e| panic!("umoci cannot run ({e}): apt-get install umoci"));
        if !o.status.success() {
            return Err(fail(
                "umoci unpack",
                String::from_utf8_lossy(&o.stderr).to_string(),
                i,
            ));
        }
        // A PAX record with an empty value deletes the keyword (POSIX pax, "keyword=" with
        // nothing after it), so an xattr whose value is empty cannot cross a tar to a
        // reader that follows the standard: umoci (Go's archive/tar) drops it. Only those
        // are left out here; oracle 1 still checks that layerctl keeps them.
        let mut want = live.clone();
        for i in want.items.values_mut() {
            i.xattrs.retain(|(_, v)| !v.is_empty());
        }
        let d = differences(&want, &view(&bundle.join("rootfs")));
        if !d.is_empty() {
            return Err(fail("oracle 3 (save + umoci unpack)", d, i));
        }
        let fsck = env.run(&["fsck"]);
        if !fsck.status.success() {
            return Err(fail(
                "fsck",
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&fsck.stdout),
                    String::from_utf8_lossy(&fsck.stderr)
                ),
                i,
            ));
        }
        canary_ok("save, umoci unpack or fsck")?;
        env.ok(&["rm", &name]);
        image = new;
        round += 1;
        i += 1;
        let more = match gen.as_ref() {
            Some((_, ops)) => ops_done < *ops || !gen_steps.is_empty(),
            None => i < steps.len(),
        };
        if !more {
            return Ok(());
        }
    }
}

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

/// Delta debugging over the steps: the smallest script that still fails the same way.
fn shrink(w: &World, steps: &[Step], first: &Failure) -> (Vec<Step>, Failure) {
    let budget = Duration::from_secs(env_num("LAYERCTL_FUZZ_COMMIT_SHRINK_SECS", 600));
    let start = Instant::now();
    let mut best: Vec<Step> = steps[..first.at.min(steps.len())].to_vec();
    let mut best_f = fail(&first.sig, first.detail.clone(), first.at);
    let mut chunk = best.len().div_ceil(2).max(1);
    while start.elapsed() < budget {
        let mut i = 0;
        let mut progress = false;
        while i < best.len() && start.elapsed() < budget {
            let mut t = best.clone();
            t.drain(i..(i + chunk).min(best.len()));
            let mut t2 = t.clone();
            match run_case(w, &mut t2, None) {
                Err(f) if f.sig == first.sig => {
                    t.truncate(f.at.min(t.len()));
                    best = t;
                    best_f = f;
                    progress = true;
                }
                _ => i += chunk,
            }
        }
        if !progress {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    (best, best_f)
}

fn show(steps: &[Step]) -> String {
    steps.iter().map(|s| format!("  - {s}\n")).collect()
}

fn make_canary(dir: &Path) -> PathBuf {
    let canary = dir.join("canary");
    fs::create_dir_all(canary.join("sub")).unwrap();
    fs::write(canary.join("file"), "canary").unwrap();
    fs::write(canary.join("sub/f"), "canary").unwrap();
    canary
}

fn check_tools() {
    assert!(
        Command::new("umoci").arg("--version").output().is_ok(),
        "umoci is oracle 3 of this test: apt-get install umoci"
    );
    assert!(
        fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")),
        "kernel overlayfs is an oracle of this test: modprobe overlay"
    );
}

fn fuzz(variant: Variant) {
    if let Ok(v) = std::env::var("LAYERCTL_FUZZ_COMMIT_VARIANT") {
        let want = match variant {
            Variant::Layerfs => "layerfs",
            Variant::Kernel => "kernel",
        };
        if !v.is_empty() && v != want {
            eprintln!("LAYERCTL_FUZZ_COMMIT_VARIANT={v}: the {want} variant does not run");
            return;
        }
    }
    check_tools();
    let tmp = tempfile::Builder::new()
        .prefix("fuzz-commit")
        .tempdir()
        .unwrap();
    let canary = make_canary(tmp.path());
    let w = World {
        canary: &canary,
        variant,
    };
    let seeds = env_num("LAYERCTL_FUZZ_COMMIT_SEEDS", 10);
    let start = env_num("LAYERCTL_FUZZ_COMMIT_SEED_START", 0);
    let ops = env_num("LAYERCTL_FUZZ_COMMIT_OPS", 40) as usize;
    let (mut total_ops, mut commits) = (0, 0);
    for seed in start..start + seeds {
        let mut r = Rng(seed ^ ((variant as u64) << 40));
        let mut steps = Vec::new();
        let res = run_case(&w, &mut steps, Some((&mut r, ops)));
        total_ops += steps.iter().filter(|s| **s != Step::Commit).count();
        commits += steps.iter().filter(|s| **s == Step::Commit).count();
        if let Err(f) = res {
            let (small, why) = shrink(&w, &steps, &f);
            panic!(
                "{variant:?} seed {seed}: {}: {}\nminimal script ({} steps, then a commit):\n{}which fails with: {}: {}",
                f.sig,
                f.detail,
                small.len(),
                show(&small),
                why.sig,
                why.detail
            );
        }
    }
    eprintln!("{variant:?}: {seeds} seeds, {total_ops} ops, {commits} commits, all oracles agree");
}

#[test]
fn random_commits_round_trip_layerfs_containers() {
    fuzz(Variant::Layerfs);
}

#[test]
fn random_commits_round_trip_kernel_containers() {
    fuzz(Variant::Kernel);
}

/// Runs one fixed script (a reproducer the fuzzer found), with both container mounts.
fn regression(steps: &[Step]) {
    check_tools();
    let tmp = tempfile::Builder::new()
        .prefix("fuzz-commit")
        .tempdir()
        .unwrap();
    let canary = make_canary(tmp.path());
    for variant in [Variant::Layerfs, Variant::Kernel] {
        let w = World {
            canary: &canary,
            variant,
        };
        let mut s = steps.to_vec();
        if let Err(f) = run_case(&w, &mut s, None) {
            panic!("{variant:?}: {}: {}", f.sig, f.detail);
        }
    }
}

fn s(p: &str) -> String {
    p.to_string()
}

/// A renamed lower directory holding one name of a hard-link set is copied into the new
/// layer; the set's other names (still in the image's layer) must join the copy, as the
/// container showed them as one inode.
#[test]
fn renamed_dir_keeps_hard_links_to_names_outside_it() {
    regression(&[Step::Rename(s("d3"), s("d1/sub/n2"))]);
}

/// The same, with the set changed through a name outside the renamed directory: the
/// copy in the renamed directory shows the new content too.
#[test]
fn renamed_dir_copy_of_a_changed_hard_link_set_takes_the_new_content() {
    regression(&[
        Step::Rename(s("d3"), s("n1")),
        Step::Append(s("d1/hl"), b"more".to_vec()),
    ]);
}

/// Two commits without a change give the same empty layer twice in the chain; a mount of
/// the image must still work (kernel overlayfs refuses a lowerdir listed twice).
#[test]
fn the_same_layer_twice_in_a_chain_mounts() {
    regression(&[Step::Commit, Step::Commit, Step::Commit]);
}

/// A hard-linked file copied by a renamed directory's expansion and then replaced by the
/// container (here by a symlink to the canary, deep in a renamed tree): the replacement
/// often gets the freed inode number, which must not make it "the copy" that the set's
/// other names are linked to or that takes the index's content.
#[test]
fn replaced_copy_of_a_hard_link_is_not_linked_again() {
    regression(&[
        Step::Rename(s("d2/sub/inner"), s("d3/a/b/sub2")),
        Step::Rename(s("d1/sub/deep"), s("d1/sub/x")),
        Step::Rename(s("d2"), s("d1/sub/sub2")),
        Step::Rename(s("d3"), s("etc/sub2")),
        Step::Rename(s("etc/sub2"), s("d1/sub/f")),
        Step::Rename(s("d1/sub/sub2"), s("d1/sub/x/more/deep")),
        Step::Rename(s("d1/sub/x/more/deep/hl"), s("d1/sub/f/a/b/sub2/x")),
        Step::Symlink(s("@up4"), s("d1/sub/x/more/deep/hl")),
    ]);
}

/// The same with a new file in place of the copy: the set's names outside the renamed
/// directory stay one inode of their own, not links to the new file.
#[test]
fn new_file_in_place_of_a_copied_hard_link_stays_apart() {
    regression(&[
        Step::Rename(s("d3"), s("n1")),
        Step::RmRf(s("n1/a/hl")),
        Step::Write(s("n1/a/hl"), b"new".to_vec()),
    ]);
}
