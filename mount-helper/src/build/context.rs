//! The build context: `.containerignore`/`.dockerignore` rules (with `!` exceptions),
//! COPY/ADD sources resolved inside the context (globs; `..` out of it and symlinked
//! directories on the way refused), their checksum for the cache key (names, types,
//! modes, owners, link targets, contents; not mtimes), content hashed in parallel and
//! remembered per file by (device, inode, size, mtime), and the copy into a new layer
//! through the confined writer.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use layerfs::layers::writer::{LayerPath, LayerWriter, Meta};
use layerfs::sys::{self, Stat};
use sha2::{Digest, Sha256};

use crate::copytree;
use crate::err;
use crate::error::{Context, Result};

// ---------------------------------------------------------------- ignore rules

/// One component pattern matcher: `*`, `?`, `[...]` (with `!`/`^` negation and ranges),
/// `\` escapes; never crosses '/'.
fn component_match(pat: &[char], s: &[char]) -> bool {
    // Iterative wildcard matching with one backtrack point per `*`.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = if p < pat.len() {
            match pat[p] {
                '*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                '?' => Some(p + 1),
                '[' => class_match(pat, p, s[i]).and_then(|(ok, end)| ok.then_some(end)),
                '\\' if p + 1 < pat.len() => (pat[p + 1] == s[i]).then_some(p + 2),
                c => (c == s[i]).then_some(p + 1),
            }
        } else {
            None
        };
        match step {
            Some(np) => {
                p = np;
                i += 1;
            }
            None => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    while p < pat.len() && pat[p] == '*' {
        p += 1;
    }
    p == pat.len()
}

/// `[...]` at `pat[p]` against `c`: (matched, index after the class), or None if malformed.
fn class_match(pat: &[char], p: usize, c: char) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let neg = matches!(pat.get(j), Some('!') | Some('^'));
    if neg {
        j += 1;
    }
    let mut hit = false;
    let mut first = true;
    while j < pat.len() {
        if pat[j] == ']' && !first {
            return Some((hit != neg, j + 1));
        }
        first = false;
        let mut lo = pat[j];
        if lo == '\\' && j + 1 < pat.len() {
            j += 1;
            lo = pat[j];
        }
        if pat.get(j + 1) == Some(&'-') && pat.get(j + 2).is_some_and(|x| *x != ']') {
            let hi = pat[j + 2];
            if lo <= c && c <= hi {
                hit = true;
            }
            j += 3;
        } else {
            if lo == c {
                hit = true;
            }
            j += 1;
        }
    }
    None
}

pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

pub fn glob_component(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let s: Vec<char> = name.chars().collect();
    component_match(&p, &s)
}

/// A pattern split on '/', `**` matching any number of components (none included).
#[derive(Debug, Clone)]
struct Pattern(Vec<String>);

impl Pattern {
    /// Whether the pattern matches the whole of `path` (components).
    fn matches(&self, path: &[&str]) -> bool {
        let p = &self.0;
        // dp[j] = pattern prefix of length i matches path prefix of length j.
        let mut dp = vec![false; path.len() + 1];
        dp[0] = true;
        for pc in p {
            let mut next = vec![false; path.len() + 1];
            if pc == "**" {
                let mut any = false;
                for j in 0..=path.len() {
                    any |= dp[j];
                    next[j] = any;
                }
            } else {
                for j in 1..=path.len() {
                    next[j] = dp[j - 1] && glob_component(pc, path[j - 1]);
                }
            }
            dp = next;
        }
        dp[path.len()]
    }
}

/// `.containerignore` (else `.dockerignore`) of a context: the last rule that matches a
/// path, or one of its parent directories, decides; `!` rules re-include.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<(bool, Pattern)>,
}

/// Lexically cleans a context-relative path; None if it climbs out of the context.
pub fn clean_rel(p: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c.to_string()),
        }
    }
    Some(out)
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut rules = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (include, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            // As docker: the pattern is cleaned, a leading '/' means the context root,
            // and a `..` above it is dropped.
            let mut comps = Vec::new();
            for c in pat.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        comps.pop();
                    }
                    c => comps.push(c.to_string()),
                }
            }
            if comps.is_empty() {
                continue;
            }
            rules.push((!include, Pattern(comps)));
        }
        Ignore { rules }
    }

    /// The rules of the context open as `root`.
    pub fn load(root: BorrowedFd) -> Result<Ignore> {
        for name in [".containerignore", ".dockerignore"] {
            match sys::openat_beneath(root, Path::new(name), libc::O_RDONLY, 0) {
                Ok(fd) => {
                    let mut text = String::new();
                    File::from(fd)
                        .read_to_string(&mut text)
                        .ctx(|| format!("reading {name} of the build context"))?;
                    return Ok(Ignore::parse(&text));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(err!("opening {name} of the build context: {e}")),
            }
        }
        Ok(Ignore::default())
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the context path `rel` (components) is left out.
    pub fn excluded(&self, rel: &[&str]) -> bool {
        let mut out = false;
        for (exclude, pat) in &self.rules {
            let hit = (1..=rel.len()).any(|n| pat.matches(&rel[..n]));
            if hit {
                out = *exclude;
            }
        }
        out
    }

    /// Whether some `!` rule could re-include something below the excluded directory
    /// `rel` (then its content is walked, else the whole subtree is skipped).
    pub fn may_reinclude_below(&self, rel: &[&str]) -> bool {
        self.rules.iter().any(|(exclude, pat)| {
            !exclude && {
                // Could the pattern match a path that starts with `rel`? Compare the
                // pattern's leading components with rel where both have them.
                let n = pat.0.len().min(rel.len());
                pat.0.iter().any(|c| c == "**")
                    || (pat.0.len() > rel.len()
                        && (0..n).all(|i| glob_component(&pat.0[i], rel[i])))
            }
        })
    }
}

// ---------------------------------------------------------------- sources

/// One entry to copy: its path in the context (components) and where it goes, relative
/// to the copy's destination.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ctx: Vec<OsString>,
    pub dst: Vec<OsString>,
    pub stat: Stat,
}

impl Entry {
    fn kind(&self) -> u32 {
        self.stat.st_mode & libc::S_IFMT
    }
}

/// What one source names: the entries to copy (the first is the source itself).
pub struct Source {
    pub name: String,
    pub is_dir: bool,
    pub entries: Vec<Entry>,
}

fn rel_path(c: &[OsString]) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::new();
    for x in c {
        p.push(x);
    }
    p
}

fn strs(c: &[OsString]) -> Vec<&str> {
    c.iter().map(|x| x.to_str().unwrap_or("\u{fffd}")).collect()
}

/// Opens directory `rel` of the context, refusing symlinks on the way.
fn open_dir(root: BorrowedFd, rel: &[OsString]) -> std::io::Result<OwnedFd> {
    sys::openat_beneath(root, &rel_path(rel), libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Resolves the source `src` (as written, after expansion) in the context `root`:
/// globs match names of the context (ignored entries never match); a `..` that leaves
/// the context and a symlink on the way to the source are refused.
pub fn resolve(root: BorrowedFd, src: &str, ignore: &Ignore, what: &str) -> Result<Vec<Source>> {
    let comps = clean_rel(src).ok_or_else(|| {
        err!("{what}: source {src:?} points outside the build context: sources are paths inside the context directory")
    })?;
    // Candidates, component by component (a glob may match several names).
    let mut cands: Vec<Vec<OsString>> = vec![Vec::new()];
    for (depth, c) in comps.iter().enumerate() {
        let last = depth + 1 == comps.len();
        let mut next = Vec::new();
        for cand in &cands {
            if has_glob(c) {
                let dir = match open_dir(root, cand) {
                    Ok(d) => d,
                    Err(_) => continue,
                };
                let names = copytree::sorted_names(dir.as_fd()).ctx(|| {
                    format!(
                        "{what}: reading {} in the build context",
                        rel_path(cand).display()
                    )
                })?;
                for n in names {
                    let Some(ns) = n.to_str() else { continue };
                    if glob_component(c, ns) {
                        let mut p = cand.clone();
                        p.push(n.clone());
                        if !ignore.excluded(&strs(&p)) {
                            next.push(p);
                        }
                    }
                }
            } else {
                let mut p = cand.clone();
                p.push(OsString::from(c));
                next.push(p);
            }
        }
        if !last && has_glob(c) {
            // A glob's matches on the way must be real directories (a named component
            // that is not one is reported below, with the reason).
            next.retain(|p| open_dir(root, p).is_ok());
        }
        cands = next;
    }
    if cands.is_empty() {
        return Err(err!(
            "{what}: no source file matches {src:?} in the build context (or .dockerignore excludes it)"
        ));
    }
    let mut out = Vec::new();
    for cand in cands {
        let shown = if cand.is_empty() {
            ".".to_string()
        } else {
            rel_path(&cand).display().to_string()
        };
        let (parent, name) = match cand.split_last() {
            Some((n, p)) => (p.to_vec(), n.clone()),
            None => (Vec::new(), OsString::new()),
        };
        let pdir = open_dir(root, &parent).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                err!("{what}: source {shown} is reached through a symlink: symlinked directories in a source path are not followed, give the real path")
            } else {
                err!("{what}: source {shown} not found in the build context ({e})")
            }
        })?;
        let st = if name.is_empty() {
            sys::fstat(pdir.as_fd())
        } else {
            sys::fstatat(pdir.as_fd(), &name)
        }
        .map_err(|e| err!("{what}: source {shown} not found in the build context ({e})"))?;
        if !cand.is_empty() && ignore.excluded(&strs(&cand)) {
            return Err(err!(
                "{what}: source {shown} is excluded by .containerignore/.dockerignore: remove the rule or the source"
            ));
        }
        let is_dir = copytree::is_dir(&st);
        let mut entries = vec![Entry {
            ctx: cand.clone(),
            dst: Vec::new(),
            stat: st,
        }];
        if is_dir {
            walk(root, &cand, ignore, &mut entries)
                .ctx(|| format!("{what}: reading {shown} in the build context"))?;
        }
        out.push(Source {
            name: shown,
            is_dir,
            entries,
        });
    }
    Ok(out)
}

/// Everything below directory `base` of the context, sorted, minus ignored entries.
/// Explicit stack: the context's depth is its own to choose.
fn walk(root: BorrowedFd, base: &[OsString], ignore: &Ignore, out: &mut Vec<Entry>) -> Result<()> {
    let mut stack: Vec<Vec<OsString>> = vec![Vec::new()];
    while let Some(sub) = stack.pop() {
        let mut full = base.to_vec();
        full.extend(sub.iter().cloned());
        let dir = open_dir(root, &full).ctx(|| format!("opening {}", rel_path(&full).display()))?;
        let names = copytree::sorted_names(dir.as_fd())
            .ctx(|| format!("listing {}", rel_path(&full).display()))?;
        let mut dirs = Vec::new();
        for n in names {
            let st = sys::fstatat(dir.as_fd(), &n)
                .ctx(|| format!("stat {}", rel_path(&full).join(&n).display()))?;
            let mut c = full.clone();
            c.push(n.clone());
            let mut d = sub.clone();
            d.push(n);
            let is_dir = copytree::is_dir(&st);
            if !ignore.is_empty() && ignore.excluded(&strs(&c)) {
                if is_dir && ignore.may_reinclude_below(&strs(&c)) {
                    dirs.push(d);
                }
                continue;
            }
            out.push(Entry {
                ctx: c,
                dst: d.clone(),
                stat: st,
            });
            if is_dir {
                dirs.push(d);
            }
        }
        // Reverse so the stack pops them in name order.
        stack.extend(dirs.into_iter().rev());
    }
    Ok(())
}

// ---------------------------------------------------------------- checksums

/// Content hashes remembered between builds, by (device, inode, size, mtime, ctime).
#[derive(Default)]
pub struct HashCache {
    pub known: HashMap<String, String>,
    pub used: Mutex<HashMap<String, String>>,
}

fn file_key(st: &Stat) -> String {
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec
    )
}

impl HashCache {
    pub fn load(path: &Path) -> HashCache {
        let known = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            known,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the hashes this build used (the next build of the same context reads no
    /// unchanged file again).
    pub fn save(&self, path: &Path) -> Result<()> {
        let used = self.used.lock().map_err(|_| err!("hash cache poisoned"))?;
        if used.is_empty() {
            return Ok(());
        }
        let mut all = self.known.clone();
        all.extend(used.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Bounded: what this build used, plus older entries while there is room.
        if all.len() > 200_000 {
            all = used.clone();
        }
        let bytes = serde_json::to_vec(&all).map_err(|e| err!("encoding hash cache: {e}"))?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        crate::store::atomic_write(path, &bytes)
    }
}

fn hash_file(root: BorrowedFd, e: &Entry) -> Result<String> {
    let fd = sys::openat_beneath(
        root,
        &rel_path(&e.ctx),
        libc::O_RDONLY | libc::O_NOFOLLOW,
        0,
    )
    .ctx(|| {
        format!(
            "opening {} in the build context",
            rel_path(&e.ctx).display()
        )
    })?;
    let mut f = File::from(fd);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = f.read(&mut buf).ctx(|| {
            format!(
                "reading {} in the build context",
                rel_path(&e.ctx).display()
            )
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The checksum of what the sources copy: every entry's destination name, type, mode,
/// owner, link target and content (mtimes left out). Contents are hashed on all cores.
pub fn checksum(root: BorrowedFd, sources: &[Source], cache: &HashCache) -> Result<String> {
    let files: Vec<&Entry> = sources
        .iter()
        .flat_map(|s| s.entries.iter())
        .filter(|e| e.kind() == libc::S_IFREG)
        .collect();
    let hashes: Vec<Mutex<Option<String>>> = files.iter().map(|_| Mutex::new(None)).collect();
    let todo: Vec<usize> = (0..files.len())
        .filter(|&i| match cache.known.get(&file_key(&files[i].stat)) {
            Some(h) => {
                if let Ok(mut slot) = hashes[i].lock() {
                    *slot = Some(h.clone());
                }
                false
            }
            None => true,
        })
        .collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<crate::error::Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
        .min(todo.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else { break };
                match hash_file(root, files[i]) {
                    Ok(h) => {
                        if let Ok(mut slot) = hashes[i].lock() {
                            *slot = Some(h);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut by_file: HashMap<(u64, u64), String> = HashMap::new();
    {
        let mut used = cache.used.lock().map_err(|_| err!("hash cache poisoned"))?;
        for (i, e) in files.iter().enumerate() {
            let h = hashes[i]
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .ok_or_else(|| err!("hashing {}: no result", rel_path(&e.ctx).display()))?;
            used.insert(file_key(&e.stat), h.clone());
            by_file.insert((e.stat.st_dev, e.stat.st_ino), h);
        }
    }
    let mut h = Sha256::new();
    for s in sources {
        h.update(s.name.as_bytes());
        h.update([0]);
        for e in &s.entries {
            let st = &e.stat;
            let content = match e.kind() {
                libc::S_IFREG => by_file
                    .get(&(st.st_dev, st.st_ino))
                    .cloned()
                    .unwrap_or_default(),
                libc::S_IFLNK => {
                    let (p, n) = parent_and_name(&e.ctx);
                    let dir = open_dir(root, &p).ctx(|| "reading a link".to_string())?;
                    let t = sys::readlinkat(dir.as_fd(), &n)
                        .ctx(|| format!("reading link {}", rel_path(&e.ctx).display()))?;
                    String::from_utf8_lossy(t.as_bytes()).into_owned()
                }
                _ => String::new(),
            };
            let line = format!(
                "{}\0{:o}\0{}\0{}\0{}\0{content}\n",
                rel_path(&e.dst).display(),
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_rdev,
            );
            h.update(line.as_bytes());
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

fn parent_and_name(c: &[OsString]) -> (Vec<OsString>, OsString) {
    match c.split_last() {
        Some((n, p)) => (p.to_vec(), n.clone()),
        None => (Vec::new(), OsString::from(".")),
    }
}

// ---------------------------------------------------------------- copying

/// How copied entries are owned and stamped.
#[derive(Clone, Copy, Default)]
pub struct CopyMeta {
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<u32>,
    /// Clamp mtimes to this (a reproducible build).
    pub clamp: Option<i64>,
    /// Keep the source's owners (COPY --from of an image keeps them; the context's are 0).
    pub keep_owner: bool,
}

impl CopyMeta {
    pub fn meta(&self, dir: BorrowedFd, name: &OsStr, st: &Stat) -> Result<Meta> {
        let mut m = copytree::meta_of(dir, name, st)
            .ctx(|| format!("reading the metadata of {}", name.to_string_lossy()))?;
        // Only the user namespace survives a COPY (docker drops security.* of the host).
        m.xattrs.retain(|(k, _)| k.as_bytes().starts_with(b"user."));
        let (uid, gid) = match self.chown {
            Some(o) => o,
            None if self.keep_owner => (st.st_uid, st.st_gid),
            None => (0, 0),
        };
        m.uid = uid;
        m.gid = gid;
        if let Some(mode) = self.chmod {
            m.mode = mode;
        }
        if let Some(t) = self.clamp {
            if m.mtime > t || (m.mtime == t && m.mtime_nsec > 0) {
                m.mtime = t;
                m.mtime_nsec = 0;
            }
        }
        Ok(m)
    }
}

/// Copies `src`'s entries into the layer being written by `w`, the source itself at
/// `dst` (a directory source: its content into `dst`).
pub fn copy_source(
    root: BorrowedFd,
    src: &Source,
    w: &mut LayerWriter,
    dst: &LayerPath,
    how: &CopyMeta,
) -> Result<()> {
    for e in &src.entries {
        let mut to = dst.clone();
        for c in &e.dst {
            to = to.join(c);
        }
        let (p, n) = parent_and_name(&e.ctx);
        let dir = open_dir(root, &p).ctx(|| format!("opening {}", rel_path(&p).display()))?;
        let name: &OsStr = if e.ctx.is_empty() {
            OsStr::new(".")
        } else {
            &n
        };
        let shown = || rel_path(&e.ctx).display().to_string();
        let meta = how.meta(dir.as_fd(), name, &e.stat)?;
        let done = match e.kind() {
            // The destination of a directory source is the caller's to make (its
            // content is copied, not the directory itself).
            libc::S_IFDIR if e.dst.is_empty() => continue,
            libc::S_IFDIR => w.mkdir(&to, meta),
            libc::S_IFREG => {
                let fd = sys::openat(dir.as_fd(), name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
                    .ctx(|| format!("opening {} in the source", shown()))?;
                let mut f = File::from(fd);
                w.file(&to, &meta, &mut f).map(drop)
            }
            libc::S_IFLNK => {
                let t = sys::readlinkat(dir.as_fd(), name)
                    .ctx(|| format!("reading link {}", shown()))?;
                w.symlink(&to, &t, &meta)
            }
            libc::S_IFIFO => w.mknod(&to, libc::S_IFIFO, 0, &meta),
            libc::S_IFCHR | libc::S_IFBLK if w.privileged() => {
                w.mknod(&to, e.kind(), e.stat.st_rdev, &meta)
            }
            libc::S_IFSOCK => continue,
            _ => {
                return Err(err!(
                "cannot copy the device node {} without root: leave it out of the build context",
                shown()
            ))
            }
        };
        done.map_err(|e| err!("copying {} to {}: {}", shown(), to.display(), e.why))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_component("*.txt", "a.txt"));
        assert!(!glob_component("*.txt", "a.txt.x"));
        assert!(glob_component("a?c", "abc"));
        assert!(glob_component("[a-c]x", "bx"));
        assert!(!glob_component("[!a-c]x", "bx"));
        assert!(glob_component("*", ""));
        assert!(glob_component("\\*", "*"));
        assert!(!glob_component("\\*", "a"));
        assert!(glob_component("a*b*c", "aXXbYYc"));
    }

    #[test]
    fn ignore_rules() {
        let ig = Ignore::parse("# c\n*.log\n!keep.log\nbuild/\n**/tmp\n/secret\n");
        let ex = |p: &str| ig.excluded(&p.split('/').collect::<Vec<_>>());
        assert!(ex("a.log"));
        assert!(!ex("keep.log"));
        assert!(!ex("sub/a.log"));
        assert!(ex("build"));
        assert!(ex("build/x/y"));
        assert!(ex("tmp"));
        assert!(ex("a/b/tmp/c"));
        assert!(ex("secret"));
        assert!(!ex("src/main.rs"));
        let ig = Ignore::parse("docs\n!docs/keep.md\n");
        assert!(ig.excluded(&["docs", "x.md"]));
        assert!(!ig.excluded(&["docs", "keep.md"]));
        assert!(ig.may_reinclude_below(&["docs"]));
        assert!(!Ignore::parse("docs\n").may_reinclude_below(&["docs"]));
    }

    #[test]
    fn clean() {
        assert_eq!(clean_rel("./a//b/../c").unwrap(), ["a", "c"]);
        assert!(clean_rel("../x").is_none());
        assert!(clean_rel("a/../../x").is_none());
        assert_eq!(clean_rel("/abs").unwrap(), ["abs"]);
    }
}
