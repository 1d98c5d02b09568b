//! Tar-stream fuzzer for `layerctl import` (seeded, shrinking to a minimal stream printed
//! with its seed, like tests/differential.rs).
//!
//! Random streams of directories, files, symlinks (inside and pointing out), hard links,
//! FIFOs, entries that replace earlier ones (every pair of types), whiteouts and opaque
//! markers, PAX xattrs, set-id modes and owners. Two oracles, neither of them ours:
//! 1. for streams with no entry beneath a symlink, GNU tar (`--overwrite
//!    --recursive-unlink`) into an empty directory is the reference tree; the test's own
//!    reference applier then reads that tree as an OCI layer over a fixed base (whiteouts
//!    hide base entries, opaque markers hide base directories' content, a whiteout never
//!    hides an entry of its own layer). `layerctl import` of the stream, mounted by layerfs
//!    over the same base, must show the same tree (names, types, modes, owners, sizes,
//!    content hashes, link targets, user xattrs, hard-link groups, times of files and of
//!    directories the stream names), and must fail exactly when GNU tar fails;
//!    a stream with an entry beneath a symlink must be refused;
//! 2. for every stream, a canary directory outside the store (hashed before and after,
//!    watched with inotify for any change) is untouched, and `layerctl fsck` is clean.
//!
//! Environment: `LAYERCTL_FUZZ_TAR_SEEDS` (default 150), `LAYERCTL_FUZZ_TAR_SEED_START`
//! (default 0); `scripts/fuzz-tar` runs 10^5 streams.
mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hard(String),
    Fifo,
    /// `.wh.NAME` for the entry's path.
    Whiteout,
    /// `.wh..wh..opq` inside the entry's path (a directory).
    Opaque,
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattr: Option<(String, Vec<u8>)>,
}

impl Entry {
    fn tar_name(&self) -> String {
        match self.kind {
            Kind::Whiteout => match self.path.rsplit_once('/') {
                Some((d, n)) => format!("{d}/.wh.{n}"),
                None => format!(".wh.{}", self.path),
            },
            Kind::Opaque if self.path.is_empty() => ".wh..wh..opq".to_string(),
            Kind::Opaque => format!("{}/.wh..wh..opq", self.path),
            Kind::Dir => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

fn gen_path(r: &mut Rng) -> String {
    let depth = 1 + r.below(3);
    (0..depth)
        .map(|_| *r.pick(&["a", "b", "c"]))
        .collect::<Vec<_>>()
        .join("/")
}

fn gen_stream(r: &mut Rng, canary: &Path) -> Vec<Entry> {
    let n = 1 + r.below(14);
    let mut out: Vec<Entry> = Vec::new();
    for _ in 0..n {
        let path = gen_path(r);
        let kind = match r.below(20) {
            0..=5 => Kind::Dir,
            6..=10 => Kind::File(vec![b'x'; r.below(3) * 700 + r.below(5)]),
            11..=12 => {
                let outside = format!("{}", canary.display());
                let up = format!("{}canary", "../".repeat(12));
                let t = r
                    .pick(&["a", "../b", "c/a", ".", "..", &outside, &up])
                    .to_string();
                Kind::Symlink(t)
            }
            13..=14 if !out.is_empty() => {
                let i = r.below(out.len());
                Kind::Hard(out[i].path.clone())
            }
            15 => Kind::Fifo,
            16..=17 => Kind::Whiteout,
            18 => Kind::Opaque,
            _ => Kind::Dir,
        };
        let path = if matches!(kind, Kind::Opaque) && r.below(8) == 0 {
            String::new()
        } else {
            path
        };
        let mode = *r.pick(&[0o755, 0o644, 0o4755, 0o2711, 0o600, 0o1777, 0o700]);
        let (uid, gid) = *r.pick(&[(0, 0), (1000, 1000), (1234, 5678)]);
        let xattr = (matches!(kind, Kind::Dir | Kind::File(_)) && r.below(3) == 0)
            .then(|| ("user.k".to_string(), vec![b'v'; 1 + r.below(4)]));
        out.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime: 1_000_000 + r.below(1000) as u64,
            xattr,
        });
    }
    out
}

fn tar_bytes(stream: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in stream {
        if let Some((k, v)) = &e.xattr {
            let key = format!("SCHILY.xattr.{k}");
            b.append_pax_extensions([(key.as_str(), v.as_slice())])
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        let name = e.tar_name();
        h.set_path(&name).unwrap();
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        let mut data: &[u8] = &[];
        match &e.kind {
            Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                data = d;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name_literal(t).unwrap();
            }
            Kind::Hard(t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name_literal(t).unwrap();
            }
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
            Kind::Whiteout | Kind::Opaque => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
            }
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// What the stream means for the checks that need a model: whether an entry goes through
/// a symlink of the stream, and which directories are named by an entry last.
struct Model {
    beneath_symlink: bool,
    /// A directory entry names a directory that exists (tar merges them).
    dir_over_dir: bool,
    /// Anything else replaces a directory (tar needs `--recursive-unlink` to do it, which
    /// then also stops merging directories).
    nondir_over_dir: bool,
    /// A symlink that could lead out is replaced later: GNU tar makes such links at the
    /// very end, over whatever replaced them, so it is no oracle for that stream.
    replaced_unsafe_link: bool,
    /// An entry replaces a non-directory (`--overwrite` would write into it in place).
    nondir_replaced: bool,
    explicit_dirs: BTreeSet<String>,
}

fn model(stream: &[Entry]) -> Model {
    #[derive(Clone, Copy, PartialEq)]
    enum T {
        Dir,
        Link,
        Other,
        Wh,
    }
    let mut m: BTreeMap<String, T> = BTreeMap::new();
    let mut explicit: BTreeSet<String> = BTreeSet::new();
    let mut beneath = false;
    let (mut dir_over_dir, mut nondir_over_dir) = (false, false);
    let mut nondir_replaced = false;
    let prefixes = |p: &str| -> Vec<String> {
        let c: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        (1..c.len()).map(|i| c[..i].join("/")).collect()
    };
    let mut through = |p: &str, m: &mut BTreeMap<String, T>, explicit: &mut BTreeSet<String>| {
        for q in prefixes(p) {
            match m.get(&q).copied() {
                Some(T::Link) => beneath = true,
                Some(T::Dir) | Some(T::Other) => {}
                None | Some(T::Wh) => {
                    m.insert(q.clone(), T::Dir);
                    explicit.remove(&q);
                }
            }
        }
    };
    for e in stream {
        match &e.kind {
            Kind::Opaque => {
                if !e.path.is_empty() {
                    through(&format!("{}/x", e.path), &mut m, &mut explicit);
                }
                continue;
            }
            Kind::Whiteout => {
                through(&e.path, &mut m, &mut explicit);
                m.entry(e.path.clone()).or_insert(T::Wh);
                continue;
            }
            Kind::Hard(t) => through(t, &mut m, &mut explicit),
            _ => {}
        }
        through(&e.path, &mut m, &mut explicit);
        let t = match e.kind {
            Kind::Dir => T::Dir,
            Kind::Symlink(_) => T::Link,
            _ => T::Other,
        };
        let was_dir = m.get(&e.path) == Some(&T::Dir);
        if matches!(m.get(&e.path), Some(T::Other) | Some(T::Link)) {
            nondir_replaced = true;
        }
        if was_dir {
            if t == T::Dir {
                dir_over_dir = true;
            } else {
                nondir_over_dir = true;
            }
        }
        if !(was_dir && t == T::Dir) {
            let below: Vec<String> = m
                .keys()
                .filter(|k| k.starts_with(&format!("{}/", e.path)))
                .cloned()
                .collect();
            for k in below {
                m.remove(&k);
                explicit.remove(&k);
            }
        }
        m.insert(e.path.clone(), t);
        if t == T::Dir {
            explicit.insert(e.path.clone());
        } else {
            explicit.remove(&e.path);
        }
    }
    // GNU tar gives a directory its times once the archive has moved past it; an entry
    // below it that comes back later changes its mtime again. Those directories' times are
    // left out of the comparison (layerctl keeps the header's).
    for (i, e) in stream.iter().enumerate() {
        if !matches!(e.kind, Kind::Dir) {
            continue;
        }
        // As GNU tar sees it: by the names in the archive.
        let below = |x: &Entry| x.tar_name().starts_with(&format!("{}/", e.path));
        let same = |x: &Entry| x.tar_name().trim_end_matches('/') == e.path;
        let mut left = false;
        for x in &stream[i + 1..] {
            if below(x) && left {
                explicit.remove(&e.path);
            }
            if !below(x) && !same(x) {
                left = true;
            }
        }
    }
    let mut replaced_unsafe_link = false;
    for (i, e) in stream.iter().enumerate() {
        if let Kind::Symlink(t) = &e.kind {
            if t.starts_with('/') || t.split('/').any(|c| c == "..") {
                let touches = |p: &str| {
                    p == e.path
                        || p.starts_with(&format!("{}/", e.path))
                        || e.path.starts_with(&format!("{p}/"))
                };
                replaced_unsafe_link |= stream[i + 1..]
                    .iter()
                    .any(|x| touches(&x.path) || matches!(&x.kind, Kind::Hard(t) if touches(t)));
            }
        }
    }
    Model {
        nondir_replaced,
        replaced_unsafe_link,
        beneath_symlink: beneath,
        dir_over_dir,
        nondir_over_dir,
        explicit_dirs: explicit,
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Item {
    kind: String,
    mode: u32,
    owner: (u32, u32),
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
    ino: (u64, u64),
}

fn tree(root: &Path) -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
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
            out.insert(
                rel,
                Item {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    owner: (m.uid(), m.gid()),
                    mtime: m.mtime(),
                    xattrs: if ft.is_symlink() {
                        Vec::new()
                    } else {
                        user_xattrs(&p)
                    },
                    ino: (m.dev(), m.ino()),
                },
            );
        }
    }
    out
}

/// Names of regular files sharing an inode, as sorted groups.
fn groups(t: &BTreeMap<String, Item>) -> Vec<Vec<String>> {
    let mut by: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for (p, i) in t {
        if i.kind.starts_with("file:") {
            by.entry(i.ino).or_default().push(p.clone());
        }
    }
    let mut g: Vec<Vec<String>> = by.into_values().filter(|v| v.len() > 1).collect();
    g.sort();
    g
}

fn is_below(p: &str, q: &str) -> bool {
    q.is_empty() || p.starts_with(&format!("{q}/"))
}

fn wh_name(p: &str) -> bool {
    p.rsplit('/').next().is_some_and(|n| n.starts_with(".wh."))
}

/// The OCI reading of layer tree `g` (as GNU tar extracted it, `.wh.` files included)
/// over the base tree `b`.
fn reference(b: &BTreeMap<String, Item>, g: &BTreeMap<String, Item>) -> BTreeMap<String, Item> {
    let mut opaque: BTreeSet<String> = BTreeSet::new();
    let mut white: BTreeSet<String> = BTreeSet::new();
    for p in g.keys() {
        let (dir, name) = match p.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), p.as_str()),
        };
        if name == ".wh..wh..opq" {
            opaque.insert(dir);
        } else if let Some(t) = name.strip_prefix(".wh.") {
            white.insert(if dir.is_empty() {
                t.to_string()
            } else {
                format!("{dir}/{t}")
            });
        }
    }
    let layer: BTreeMap<String, Item> = g
        .iter()
        .filter(|(p, _)| !wh_name(p))
        .map(|(p, i)| (p.clone(), i.clone()))
        .collect();
    for w in &white {
        if layer.get(w).is_some_and(|i| i.kind == "dir") {
            opaque.insert(w.clone());
        }
    }
    let mut r: BTreeMap<String, Item> = BTreeMap::new();
    'base: for (p, i) in b {
        for o in &opaque {
            if is_below(p, o) {
                continue 'base;
            }
        }
        for w in &white {
            if p == w || is_below(p, w) {
                continue 'base;
            }
        }
        for (lp, li) in &layer {
            if li.kind != "dir" && is_below(p, lp) {
                continue 'base;
            }
        }
        r.insert(p.clone(), i.clone());
    }
    for (p, i) in layer {
        r.insert(p, i);
    }
    r
}

fn make_base(dir: &Path) {
    for d in ["a", "a/a", "a/b", "b", "b/c", "c"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    for f in ["a/f", "a/a/f", "a/b/g", "b/c/h", "c/a", "b/b"] {
        fs::write(dir.join(f), f.as_bytes()).unwrap();
    }
    Command::new("find")
        .arg(dir)
        .args(["-exec", "touch", "-h", "-d", "@1000000000", "{}", "+"])
        .status()
        .unwrap();
}

/// Everything of the canary that could change, to compare before and after.
fn canary_state(c: &Path) -> String {
    let t = tree(c);
    let top = fs::symlink_metadata(c).unwrap();
    format!(
        "{:?} {:o} {}:{} {}",
        t,
        top.mode(),
        top.uid(),
        top.gid(),
        top.mtime()
    )
}

/// Every event that changes something. Opens, reads and closes are left out: while one test
/// thread has the canary open (hashing it), a child another thread forks holds copies of
/// those descriptors until it execs, and their close is reported on the canary too.
const CHANGES: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

struct Inotify(i32);

impl Inotify {
    fn watch(paths: &[PathBuf]) -> Inotify {
        // SAFETY: plain syscalls; the fd is owned by the returned value.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        for p in paths {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid fd and C string.
            let w = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), CHANGES) };
            assert!(w >= 0, "inotify watch on {}", p.display());
        }
        Inotify(fd)
    }
    fn events(&self) -> usize {
        let mut buf = [0u8; 4096];
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        n.max(0) as usize
    }
}

impl Drop for Inotify {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

fn user_or_trusted_opaque(dir: &Path) -> bool {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|a| {
            let n = CString::new(*a).unwrap();
            let mut v = [0u8; 4];
            // SAFETY: valid C strings and buffer.
            let r =
                unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
            r == 1 && v[0] == b'y'
        })
        || dir.join(".wh..wh..opq").exists()
}

fn layerfs_bin() -> PathBuf {
    layerctl_bin().with_file_name("layerfs")
}

/// Runs one stream; `Err` says how it went wrong.
fn run_case(
    env: &Env,
    base: &Path,
    canary: &Path,
    stream: &[Entry],
    tag: &str,
) -> Result<(), String> {
    let work = env.path(&format!("case-{tag}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let tarp = work.join("s.tar");
    fs::write(&tarp, tar_bytes(stream)).unwrap();
    let m = model(stream);

    let before = canary_state(canary);
    let mut watched = vec![canary.to_path_buf()];
    for (p, _) in tree(canary) {
        watched.push(canary.join(p));
    }
    let ino = Inotify::watch(&watched);
    let o = env.run(&["import", tarp.to_str().unwrap(), &format!("fuzz:{tag}")]);
    let events = ino.events();
    drop(ino);
    let after = canary_state(canary);
    if events > 0 || before != after {
        return Err(format!(
            "the canary outside the store was touched ({events} inotify bytes; changed: {})",
            before != after
        ));
    }
    let fsck = env.run(&["fsck"]);
    if !fsck.status.success() {
        return Err(format!(
            "fsck after import: {}",
            String::from_utf8_lossy(&fsck.stderr)
        ));
    }
    let imported = o.status.success();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if m.beneath_symlink {
        // Refused, by that entry or by an earlier one that is wrong in another way.
        return if imported {
            Err("a stream with an entry beneath a symlink was imported".into())
        } else if !err.starts_with("layerctl: refusing tar entry") || err.trim().contains('\n') {
            Err(format!(
                "refused without a one-line error naming the entry: {err}"
            ))
        } else {
            Ok(())
        };
    }
    // GNU tar has no one mode with the semantics of "the last entry wins": --unlink-first
    // replaces files but removes directories named again, --overwrite keeps directories but
    // writes into existing files in place. Each stream gets the mode its replacements need;
    // a stream needing both has only oracle 2.
    let flags = match (m.dir_over_dir, m.nondir_over_dir, m.nondir_replaced) {
        _ if m.replaced_unsafe_link => return Ok(()),
        // --unlink-first removes a self-link's own target first.
        _ if stream
            .iter()
            .any(|e| matches!(&e.kind, Kind::Hard(t) if *t == e.path)) =>
        {
            return Ok(())
        }
        (false, false, _) => "--unlink-first",
        (false, true, _) => "--unlink-first --recursive-unlink",
        (true, false, false) => "--overwrite",
        _ => return Ok(()),
    };
    let gnu = work.join("gnu");
    fs::create_dir(&gnu).unwrap();
    let g = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; exec tar --xattrs --xattrs-include='*' --numeric-owner {flags} -xpf \"$0\" -C \"$1\""))
        .arg(&tarp)
        .arg(&gnu)
        .output()
        .unwrap();
    let gnu_ok = g.status.success();
    if gnu_ok != imported {
        return Err(format!(
            "GNU tar {} ({}) but layerctl import {} ({})",
            if gnu_ok { "succeeded" } else { "failed" },
            String::from_utf8_lossy(&g.stderr).trim(),
            if imported { "succeeded" } else { "failed" },
            err.trim()
        ));
    }
    if !imported {
        return Ok(());
    }
    let id = env.ok(&["inspect", &format!("fuzz:{tag}")]);
    let v: serde_json::Value = serde_json::from_str(&id).map_err(|e| format!("inspect: {e}"))?;
    let diff_id = v["image"]["config"]["rootfs"]["diff_ids"][0]
        .as_str()
        .ok_or("inspect has no diff_id")?
        .to_string();
    let layer = env
        .root
        .join("layers")
        .join(diff_id.trim_start_matches("sha256:"))
        .join("diff");
    let mnt = work.join("mnt");
    fs::create_dir(&mnt).unwrap();
    // A layer with an opaque root hides everything below it: layerctl ends the chain there
    // (images::lower_dirs), so the base is not mounted under it.
    let opaque_root = user_or_trusted_opaque(&layer);
    let lowers = if opaque_root {
        layer.display().to_string()
    } else {
        format!("{}:{}", layer.display(), base.display())
    };
    let st = Command::new(layerfs_bin())
        .arg("-o")
        .arg(format!("lowerdir={lowers}"))
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        return Err("layerfs could not mount the imported layer".into());
    }
    let guard = MountGuard(vec![mnt.clone()]);
    let got = tree(&mnt);
    drop(guard);
    let gnu_tree = tree(&gnu);
    // GNU tar makes a symlink that could lead out as a placeholder and the real link at
    // the very end, after it set the directories' times: its parent's mtime is then the
    // time of the run, not the header's.
    let late_links: BTreeSet<String> = gnu_tree
        .iter()
        .filter(|(_, i)| i.kind.starts_with("link->"))
        .map(|(p, _)| {
            p.rsplit_once('/')
                .map(|x| x.0.to_string())
                .unwrap_or_default()
        })
        .collect();
    let want = reference(&tree(base), &gnu_tree);
    let mut dir_modes: BTreeMap<String, u32> = BTreeMap::new();
    for e in stream {
        if matches!(e.kind, Kind::Dir) {
            dir_modes.insert(e.path.clone(), e.mode);
        }
    }
    let norm = |t: &BTreeMap<String, Item>| -> BTreeMap<String, Item> {
        t.iter()
            .map(|(p, i)| {
                let mut i = i.clone();
                i.ino = (0, 0);
                if i.kind == "dir" && (!m.explicit_dirs.contains(p) || late_links.contains(p)) {
                    i.mtime = 0;
                }
                // A directory no entry names is made by layerctl as 0755, the importer's
                // ids, time 0 (documented); GNU tar's takes its group from a set-gid parent
                // if the parent had its mode by then, which depends on GNU's timing.
                if i.kind == "dir" && !m.explicit_dirs.contains(p) {
                    i.owner.1 = 0;
                }
                // GNU tar keeps the set-gid bit a directory inherits from its parent even
                // when the header lacks it; layerctl gives the header's mode exactly (as
                // containerd does). The bit is compared only where a header sets it.
                if i.kind == "dir" && dir_modes.get(p).is_none_or(|m| m & 0o2000 == 0) {
                    i.mode &= !0o2000;
                }
                (p.clone(), i)
            })
            .collect()
    };
    let (a, b) = (norm(&got), norm(&want));
    if a != b {
        let mut d = String::new();
        for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            if a.get(k) != b.get(k) {
                d += &format!("\n  {k}: mount {:?} / reference {:?}", a.get(k), b.get(k));
            }
        }
        return Err(format!("trees differ:{d}"));
    }
    if groups(&got) != groups(&want) {
        return Err(format!(
            "hard-link groups differ: mount {:?} / reference {:?}",
            groups(&got),
            groups(&want)
        ));
    }
    Ok(())
}

fn show(stream: &[Entry]) -> String {
    stream
        .iter()
        .map(|e| {
            let k = match &e.kind {
                Kind::File(d) => format!("file({} bytes)", d.len()),
                k => format!("{k:?}"),
            };
            format!(
                "  {:?} {k} mode {:o} {}:{} mtime {} xattr {:?}\n",
                e.tar_name(),
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                e.xattr.as_ref().map(|x| &x.0)
            )
        })
        .collect()
}

/// Delta debugging over the entries: the smallest stream that still fails.
fn shrink(env: &Env, base: &Path, canary: &Path, mut s: Vec<Entry>) -> Vec<Entry> {
    let mut chunk = s.len() / 2;
    while chunk >= 1 {
        let mut i = 0;
        let mut progress = false;
        while i < s.len() {
            let mut t = s.clone();
            t.drain(i..(i + chunk).min(s.len()));
            if !t.is_empty() && run_case(env, base, canary, &t, "shrink").is_err() {
                s = t;
                progress = true;
            } else {
                i += chunk;
            }
        }
        if !progress {
            chunk /= 2;
        }
    }
    s
}

#[test]
fn random_tar_streams_match_gnu_tar_and_never_leave_the_layer() {
    assert!(
        Command::new("tar")
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar")),
        "GNU tar is the oracle of this test: install it (apt-get install tar)"
    );
    let env = Env::new();
    let base = env.path("base");
    make_base(&base);
    // Where the stream's symlinks point: outside the store, as far up as they can reach.
    let canary = env.dir.path().join("canary");
    fs::create_dir_all(canary.join("sub")).unwrap();
    fs::write(canary.join("file"), "canary").unwrap();
    fs::write(canary.join("sub/f"), "canary").unwrap();
    let seeds: u64 = std::env::var("LAYERCTL_FUZZ_TAR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let start: u64 = std::env::var("LAYERCTL_FUZZ_TAR_SEED_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut refused_beneath = 0;
    for seed in start..start + seeds {
        let mut r = Rng(seed);
        let stream = gen_stream(&mut r, &canary);
        if model(&stream).beneath_symlink {
            refused_beneath += 1;
        }
        if let Err(e) = run_case(&env, &base, &canary, &stream, &seed.to_string()) {
            let small = shrink(&env, &base, &canary, stream.clone());
            let why = run_case(&env, &base, &canary, &small, "final")
                .err()
                .unwrap_or(e.clone());
            panic!(
                "seed {seed}: {e}\nminimal stream ({} entries):\n{}\nwhich fails with: {why}",
                small.len(),
                show(&small)
            );
        }
    }
    eprintln!("{seeds} streams, {refused_beneath} with an entry beneath a symlink (refused)");
}

fn entry(path: &str, kind: Kind, mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        kind,
        mode,
        uid: 1234,
        gid: 5678,
        mtime: 1_000_000,
        xattr: Some(("user.k".to_string(), b"v".to_vec())),
    }
}

/// The streams that changed files outside the store or came out wrong before the confined
/// writer, each checked by both oracles (GNU tar, the canary).
#[test]
fn replaced_entries_never_carry_queued_metadata_elsewhere() {
    let env = Env::new();
    let base = env.path("base");
    make_base(&base);
    let canary = env.dir.path().join("canary");
    fs::create_dir_all(canary.join("sub")).unwrap();
    fs::write(canary.join("file"), "canary").unwrap();
    let out = canary.display().to_string();
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "a directory replaced by a symlink to a host path",
            vec![
                entry("d", Kind::Dir, 0o4755),
                entry("d", Kind::Symlink(out.clone()), 0o777),
            ],
        ),
        (
            "a directory replaced by a symlink, then an entry below it",
            vec![
                entry("d", Kind::Dir, 0o755),
                entry("d", Kind::Symlink(out.clone()), 0o777),
                entry("d/file", Kind::File(b"x".to_vec()), 0o4755),
            ],
        ),
        (
            "a directory replaced by a regular file keeps the file's own mode",
            vec![
                entry("d", Kind::Dir, 0o4755),
                entry("d", Kind::File(b"x".to_vec()), 0o644),
            ],
        ),
        (
            "a hard link replacing a directory does not chmod the link's target",
            vec![
                entry("t", Kind::File(b"x".to_vec()), 0o600),
                entry("d", Kind::Dir, 0o4755),
                entry("d", Kind::Hard("t".into()), 0o777),
            ],
        ),
        (
            "a directory tree replaced by a file",
            vec![
                entry("d", Kind::Dir, 0o755),
                entry("d/e", Kind::Dir, 0o700),
                entry("d/e/f", Kind::File(b"x".to_vec()), 0o644),
                entry("d", Kind::File(b"y".to_vec()), 0o640),
            ],
        ),
        (
            "a whiteout then an entry below its name",
            vec![
                entry("a", Kind::Whiteout, 0o644),
                entry("a/b/c", Kind::File(b"x".to_vec()), 0o644),
            ],
        ),
        (
            "a whiteout for a path whose parent does not exist",
            vec![entry("x/y/z", Kind::Whiteout, 0o644)],
        ),
        (
            "a root-level opaque marker",
            vec![entry("", Kind::Opaque, 0o644)],
        ),
    ];
    for (what, stream) in cases {
        if let Err(e) = run_case(&env, &base, &canary, &stream, "case") {
            panic!("{what}: {e}\n{}", show(&stream));
        }
    }
}
