//! The store layout, its lock and atomic writes.
//!
//! ```text
//! ROOT/lock                      flock'd by every writer; holds "PID COMMAND" of the holder
//! ROOT/empty/                    an empty directory: the lower dir of an image with no layers
//! ROOT/tmp/                      work in progress; cleared by the next writer
//! ROOT/layers/HEX/diff/          the layer directory (a lower dir as it is)
//! ROOT/layers/HEX/layer.json     {diff_id, size, created}
//! ROOT/images/HEX.json           image config; HEX = sha256 of these bytes (the image id)
//! ROOT/images/HEX.parent         the id of the image this one was built on (commit, build
//!                                steps), as docker's parent chain: it keeps intermediate
//!                                images alive while a child is kept and names history rows
//! ROOT/refs.json                 {"name:tag": "sha256:..."}
//! ROOT/build-cache/HEX           a build step's cache entry: HEX = sha256 of the step key,
//!                                content = the step image's id (gc drops entries whose image
//!                                is gone); files.json: content hashes by (dev, ino, size,
//!                                mtime, ctime) so an unchanged context is not read again
//! ROOT/containers/NAME/          container.json, upper/, work/
//! ROOT/blobs/partial/HEX         the first bytes of registry blob sha256:HEX as far as a
//!                                pull got; the next pull continues it with a Range request.
//!                                flock'd by the pull writing it; `gc` removes unlocked ones
//! ROOT/blobs/sha256/HEX          a fetched blob whose digest verified, until the pull that
//!                                fetched it has stored its layer (flock'd the same way)
//! ROOT/blobs/aliases.json        {"registry diff_id": "stored layer id"}: layers another tool
//!                                made are stored under their canonical tar's digest; this
//!                                lets the next pull say `Already exists` (hints only: every
//!                                use checks the layer is there; gc drops stale entries)
//! ROOT/blobs/compressed.json     {"gzip sha256:LAYER": {digest, size}}: what push's
//!                                deterministic compression of a layer gives, so a second
//!                                push asks the registry without compressing again
//! ```
//!
//! Every record appears by a rename of something complete and fsynced (a whole layer
//! directory, a whole file), so a reader or a crash sees the old state or the new one.
//! Layers are written before the images that name them, and images before refs, so a
//! crash leaves at worst an unreferenced layer or image, which `gc` removes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Seek, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::err;
use crate::error::{Context, Result};
use crate::image::ImageConfig;
use crate::sys;

pub struct Store {
    pub root: PathBuf,
}

/// Held while writing; dropping it (or dying) releases the flock.
pub struct Lock {
    file: fs::File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Cleared before the flock goes (on close), so a waiter never names a writer that
        // has finished; a killed writer leaves its pid, which no waiter reads once free.
        let _ = self.file.set_len(0);
    }
}

/// How long `Store::lock` waits for another writer: LAYERCTL_LOCK_TIMEOUT seconds
/// (fractions allowed), 10 by default.
pub fn lock_wait() -> Result<Duration> {
    match std::env::var("LAYERCTL_LOCK_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(10)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                err!("LAYERCTL_LOCK_TIMEOUT={v:?} is not a number of seconds (e.g. 30 or 0.5)")
            }),
    }
}

/// `layerctl pid N (CMD)` from the lock file's contents, as the holder wrote them.
fn holder(f: &fs::File) -> String {
    let mut buf = [0u8; 128];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut it = text.trim().splitn(2, ' ');
    match (it.next().and_then(|p| p.parse::<u32>().ok()), it.next()) {
        (Some(pid), Some(cmd)) if !cmd.is_empty() => format!("layerctl pid {pid} ({cmd})"),
        (Some(pid), _) => format!("layerctl pid {pid}"),
        _ => "another layerctl process".to_string(),
    }
}

/// The subcommand this process runs (the first argument that is not `--root DIR`).
fn command_name() -> String {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--root" {
            args.next();
        } else if !a.starts_with('-') {
            return a
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(32)
                .collect();
        }
    }
    String::new()
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LayerRecord {
    pub diff_id: String,
    /// Size in bytes of the layer's canonical tar.
    pub size: u64,
    pub created: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ContainerRecord {
    pub name: String,
    pub image_id: String,
    /// The reference the user gave (for display); the image may have been retagged since.
    pub image_ref: String,
    /// The image config at creation time, so commit still works after `rmi --force`.
    pub image_config: ImageConfig,
    pub created: String,
    pub read_only: bool,
    /// Where it is mounted, while it is.
    pub mountpoint: Option<PathBuf>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn default_root() -> PathBuf {
    if let Some(r) = std::env::var_os("LAYERFS_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(r);
    }
    if sys::is_root() {
        return PathBuf::from("/var/lib/layerfs");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|r| !r.is_empty()) {
        return PathBuf::from(x).join("layerfs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/layerfs")
}

pub fn hex_of(id: &str) -> Result<&str> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(hex)
    } else {
        Err(err!(
            "{id:?} is not a sha256 digest (expected sha256:<64 lowercase hex digits>)"
        ))
    }
}

pub fn sha256_id(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An image reference as the distribution reference grammar (distribution/reference,
/// `reference.go`) defines it: `[host[:port]/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `[host[:port]/]path`, as given.
    pub name: String,
    /// None when the reference has no `:tag`.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, when the reference has one.
    pub digest: Option<String>,
}

/// The one rule every name and tag layerctl stores or looks up is held to.
const NAME_RULE: &str = "names are [HOST[:PORT]/]COMPONENT[/COMPONENT...] where each COMPONENT is lowercase letters and digits joined by single '.', '_', '__' or runs of '-' (e.g. registry.example:5000/team/app)";
const TAG_RULE: &str =
    "a tag is 1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'";

fn alnum_run(b: &[u8], i: &mut usize, ok: impl Fn(u8) -> bool) -> bool {
    let start = *i;
    while *i < b.len() && ok(b[*i]) {
        *i += 1;
    }
    *i > start
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let an = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    if !alnum_run(b, &mut i, an) {
        return false;
    }
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !alnum_run(b, &mut i, an) {
            return false;
        }
    }
    true
}

/// `host[:port]`: host is dot-separated `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` labels,
/// the port decimal digits. (Bracketed IPv6 hosts, which the newest grammar allows, are
/// refused: podman and docker releases in use still refuse them.)
fn domain_ok(d: &str) -> bool {
    let (host, port) = d.split_at(d.find(':').unwrap_or(d.len()));
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    port_ok && !host.is_empty() && host.split('.').all(label_ok)
}

fn tag_ok(t: &str) -> bool {
    let w = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && w(b[0])
        && b.iter().all(|x| w(*x) || *x == b'.' || *x == b'-')
}

/// Parses `s` against the distribution reference grammar. Refuses anything else with the
/// rule it breaks, so a name is checked before anything is written.
pub fn parse_reference(s: &str) -> Result<Reference> {
    let bad = |why: String| err!("invalid image name {s:?}: {why}; {NAME_RULE}");
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !d.starts_with("sha256:") {
                return Err(bad(format!(
                    "digest {d:?} is not sha256:<64 lowercase hex digits> (layerctl verifies sha256 only)"
                )));
            }
            hex_of(d).map_err(|_| {
                bad(format!(
                    "digest {d:?} is not sha256:<64 lowercase hex digits>"
                ))
            })?;
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // The tag is after the last ':' that is not part of `host:port/` (no '/' after it).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        if !tag_ok(t) {
            return Err(err!("invalid tag {t:?} in {s:?}: {TAG_RULE}"));
        }
    }
    if name.is_empty() {
        return Err(bad("the name is empty".into()));
    }
    let comps: Vec<&str> = name.split('/').collect();
    if comps.iter().any(|c| c.is_empty()) {
        return Err(bad(
            "components are separated by single '/' (no empty component, no leading or trailing '/')".into(),
        ));
    }
    // The first of several components may instead be a registry host (with uppercase
    // letters or a :port) when it looks like one (a '.', a ':port', or "localhost"): the
    // rule docker and podman use to tell a host from a path.
    let first = comps[0];
    let skip = if comps.len() > 1 && !path_component_ok(first) {
        if !(first.contains('.') || first.contains(':') || first == "localhost") {
            let hint = if first.bytes().any(|b| b.is_ascii_uppercase()) {
                " (repository names are lowercase; a registry host has a '.' or a :PORT)"
            } else {
                ""
            };
            return Err(bad(format!("component {first:?} is not allowed{hint}")));
        }
        if !domain_ok(first) {
            return Err(bad(format!(
                "{first:?} is not a registry host[:port] (dot-separated letters, digits and inner '-', then an optional :PORT)"
            )));
        }
        1
    } else {
        0
    };
    for c in &comps[skip..] {
        if !path_component_ok(c) {
            let hint = if c.bytes().any(|b| b.is_ascii_uppercase()) {
                " (repository names are lowercase)"
            } else {
                ""
            };
            return Err(bad(format!("component {c:?} is not allowed{hint}")));
        }
    }
    if name.len() > 255 {
        return Err(bad(format!(
            "it is {} characters, more than 255",
            name.len()
        )));
    }
    Ok(Reference {
        name: name.to_string(),
        tag: tag.map(str::to_string),
        digest,
    })
}

/// Splits and validates a NAME[:TAG] that names an image (tag defaults to "latest").
/// A digest cannot name an image (it is computed from the content), so it is refused here.
pub fn parse_ref(s: &str) -> Result<(String, String)> {
    let r = parse_reference(s)?;
    if r.digest.is_some() {
        return Err(err!(
            "invalid image name {s:?}: a digest (@sha256:...) identifies content and cannot name an image; give NAME[:TAG]"
        ));
    }
    Ok((r.name, r.tag.unwrap_or_else(|| "latest".to_string())))
}

/// NAME and TAG of a stored `name:tag` key, without judging it (names stored by older
/// versions of layerctl may predate the grammar; listing them must not fail).
pub fn split_ref(r: &str) -> (String, String) {
    match r.rfind(':') {
        Some(i) if !r[i + 1..].contains('/') => (r[..i].to_string(), r[i + 1..].to_string()),
        _ => (r.to_string(), "latest".to_string()),
    }
}

pub fn valid_container_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err!(
            "invalid container name {n:?}: use letters, digits, '_', '.', '-'"
        ))
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| err!("{} has no parent", path.display()))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(err!("writing {}: {}", path.display(), e));
    }
    fsync_dir(dir)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str, fix: &str) -> Result<T> {
    let bytes = fs::read(path).ctx(|| {
        format!(
            "{what} ({}) is missing or unreadable; {fix}",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| err!("{what} ({}) is corrupt: {e}; {fix}", path.display()))
}

impl Store {
    /// Opens the store at `root`, creating its directories on first use.
    pub fn open(root: PathBuf) -> Result<Store> {
        for sub in ["layers", "images", "containers", "tmp"] {
            fs::create_dir_all(root.join(sub)).ctx(|| {
                format!(
                    "cannot create store at {} (pick another with --root or LAYERFS_ROOT)",
                    root.display()
                )
            })?;
        }
        Ok(Store { root })
    }

    /// Takes the writer lock and clears leftovers of writers that died (safe: no other
    /// writer can be running while we hold the lock). Waits at most `lock_wait()` for
    /// another writer, then names it: a stuck writer never hangs every other command.
    pub fn lock(&self) -> Result<Lock> {
        let p = self.root.join("lock");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
            .ctx(|| format!("opening lock {}", p.display()))?;
        let wait = lock_wait()?;
        let start = Instant::now();
        loop {
            if sys::flock_try_exclusive(&f).ctx(|| format!("locking {}", p.display()))? {
                break;
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(err!(
                    "store busy: {} holds it ({}); retry when it is done, or wait longer with LAYERCTL_LOCK_TIMEOUT=SECONDS",
                    holder(&f),
                    p.display()
                ));
            }
            std::thread::sleep((wait - waited).min(Duration::from_millis(20)));
        }
        // Who holds it, for the message of whoever waits; failing to say is not fatal.
        let me = format!("{} {}\n", std::process::id(), command_name());
        let _ = f.set_len(0).and_then(|_| f.write_all_at(me.as_bytes(), 0));
        let _ = f.seek(io::SeekFrom::Start(0));
        self.clear_tmp()?;
        Ok(Lock { file: f })
    }

    /// Removes every leftover temp entry; returns how many there were. Needs the lock.
    pub fn clear_tmp(&self) -> Result<usize> {
        let tmp = self.root.join("tmp");
        let mut n = 0;
        for e in fs::read_dir(&tmp).ctx(|| format!("reading {}", tmp.display()))? {
            let e = e.ctx(|| format!("reading {}", tmp.display()))?;
            crate::copytree::remove_any(&e.path())?;
            n += 1;
        }
        // Half-written record files next to their final place.
        for sub in ["images", ".", "blobs"] {
            let d = self.root.join(sub);
            if sub == "blobs" && !d.is_dir() {
                continue;
            }
            for e in fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))? {
                let e = e.ctx(|| format!("reading {}", d.display()))?;
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_file(e.path());
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// A fresh private directory under ROOT/tmp (same filesystem as the records).
    pub fn tmp_dir(&self) -> Result<PathBuf> {
        let p = self.root.join("tmp").join(format!(
            "{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&p).ctx(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    // ----- layers -----

    pub fn layer_root(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers").join(hex_of(diff_id)?))
    }

    /// The directory to use as a lower dir.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.layer_root(diff_id)?.join("diff"))
    }

    /// The lower dir of an image with no layers (`FROM scratch`, as podman mounts it: an
    /// empty root). Mount programs need at least one lower dir; this one is created on
    /// first use and never written (writes go to the container's upper dir).
    pub fn empty_layer_dir(&self) -> Result<PathBuf> {
        let p = self.root.join("empty");
        match fs::create_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err!("creating {}: {e}", p.display())),
        }
        let m = fs::symlink_metadata(&p).ctx(|| format!("stat {}", p.display()))?;
        let empty = m.is_dir()
            && fs::read_dir(&p)
                .ctx(|| format!("reading {}", p.display()))?
                .next()
                .is_none();
        if !empty {
            return Err(err!(
                "{} must be an empty directory (the root of images with no layers): remove it, layerctl recreates it",
                p.display()
            ));
        }
        Ok(p)
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_root(diff_id)
            .map(|p| p.join("layer.json").is_file())
            .unwrap_or(false)
    }

    pub fn layer_record(&self, diff_id: &str) -> Result<LayerRecord> {
        let p = self.layer_root(diff_id)?.join("layer.json");
        read_json(
            &p,
            &format!("layer {diff_id}"),
            "run `layerctl fsck` and re-import or re-commit it",
        )
    }

    pub fn layer_ids(&self) -> Result<Vec<String>> {
        let d = self.root.join("layers");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))? {
            let e = e.ctx(|| format!("reading {}", d.display()))?;
            out.push(format!("sha256:{}", e.file_name().to_string_lossy()));
        }
        out.sort();
        Ok(out)
    }

    /// Moves a finished layer (`tmp/X/diff`) into place under its diff_id. Returns false
    /// when the store already had it (the same change committed again): the new copy is
    /// dropped and the stored one is used.
    pub fn insert_layer(&self, tmp: &Path, diff_id: &str, size: u64) -> Result<bool> {
        let dst = self.layer_root(diff_id)?;
        if self.has_layer(diff_id) {
            crate::copytree::remove_any(tmp)?;
            return Ok(false);
        }
        // A directory without layer.json would be damage; it cannot come from us (rename
        // is atomic), but do not let it block a good copy either.
        crate::copytree::remove_any(&dst)?;
        let rec = LayerRecord {
            diff_id: diff_id.to_string(),
            size,
            created: crate::image::now_rfc3339(),
        };
        let json =
            serde_json::to_vec_pretty(&rec).map_err(|e| err!("encoding layer record: {e}"))?;
        fs::write(tmp.join("layer.json"), json).ctx(|| format!("writing {}", tmp.display()))?;
        let f = fs::File::open(tmp).ctx(|| format!("opening {}", tmp.display()))?;
        sys::syncfs(&f).ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(tmp, &dst).ctx(|| format!("moving layer into {}", dst.display()))?;
        fsync_dir(&self.root.join("layers"))?;
        Ok(true)
    }

    pub fn remove_layer(&self, diff_id: &str) -> Result<()> {
        // Rename out of the way first so that a crash mid-delete never leaves a
        // half-deleted layer under a valid name.
        let src = self.layer_root(diff_id)?;
        let tmp = self.tmp_dir()?.join("gone");
        fs::rename(&src, &tmp).ctx(|| format!("removing layer {diff_id}"))?;
        fsync_dir(&self.root.join("layers"))?;
        crate::copytree::remove_any(&tmp)
    }

    // ----- images -----

    pub fn image_ids(&self) -> Result<Vec<String>> {
        let d = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))? {
            let name = e.ctx(|| format!("reading {}", d.display()))?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".json") {
                if !name.starts_with('.') {
                    out.push(format!("sha256:{hex}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn read_image(&self, id: &str) -> Result<ImageConfig> {
        let p = self
            .root
            .join("images")
            .join(format!("{}.json", hex_of(id)?));
        read_json(
            &p,
            &format!("image record {id}"),
            "remove it with `layerctl rmi --force` and re-import, or restore the file",
        )
    }

    pub fn write_image(&self, cfg: &ImageConfig) -> Result<String> {
        let bytes = cfg.to_bytes()?;
        let id = sha256_id(&bytes);
        atomic_write(
            &self
                .root
                .join("images")
                .join(format!("{}.json", hex_of(&id)?)),
            &bytes,
        )?;
        Ok(id)
    }

    /// Stores config bytes as they are (a pulled config whose diff_ids need no
    /// re-keying): the id is their digest, as the registry named them.
    pub fn write_image_bytes(&self, bytes: &[u8]) -> Result<String> {
        let id = sha256_id(bytes);
        atomic_write(
            &self
                .root
                .join("images")
                .join(format!("{}.json", hex_of(&id)?)),
            bytes,
        )?;
        Ok(id)
    }

    pub fn remove_image(&self, id: &str) -> Result<()> {
        let dir = self.root.join("images");
        let p = dir.join(format!("{}.json", hex_of(id)?));
        fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
        let parent = dir.join(format!("{}.parent", hex_of(id)?));
        match fs::remove_file(&parent) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err!("removing {}: {e}", parent.display()))
            }
            _ => {}
        }
        fsync_dir(&dir)
    }

    /// Records that `child` was made from `parent` (an image id each). Written after the
    /// child's record, so a crash leaves at worst a child without a parent link.
    pub fn set_parent(&self, child: &str, parent: &str) -> Result<()> {
        hex_of(parent)?;
        let p = self
            .root
            .join("images")
            .join(format!("{}.parent", hex_of(child)?));
        atomic_write(&p, parent.as_bytes())
    }

    /// The image `id` was made from, if it was recorded and is still stored.
    pub fn parent(&self, id: &str) -> Result<Option<String>> {
        let p = self
            .root
            .join("images")
            .join(format!("{}.parent", hex_of(id)?));
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err!("reading {}: {e}", p.display())),
        };
        let parent = text.trim().to_string();
        if hex_of(&parent).is_err() || !self.has_image(&parent) {
            return Ok(None);
        }
        Ok(Some(parent))
    }

    /// `id` and the images it was made from, child first. Bounded by the number of stored
    /// images, so a damaged cycle of parent links cannot loop.
    pub fn ancestry(&self, id: &str) -> Result<Vec<String>> {
        let limit = self.image_ids()?.len() + 1;
        let mut chain = vec![id.to_string()];
        while chain.len() < limit {
            match self.parent(&chain[chain.len() - 1])? {
                Some(p) if !chain.contains(&p) => chain.push(p),
                _ => break,
            }
        }
        Ok(chain)
    }

    pub fn has_image(&self, id: &str) -> bool {
        hex_of(id)
            .map(|h| self.root.join("images").join(format!("{h}.json")).exists())
            .unwrap_or(false)
    }

    // ----- refs -----

    pub fn refs(&self) -> Result<BTreeMap<String, String>> {
        let p = self.root.join("refs.json");
        if !p.exists() {
            return Ok(BTreeMap::new());
        }
        read_json(
            &p,
            "the image name list",
            "restore it or delete it and re-tag images",
        )
    }

    pub fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(refs).map_err(|e| err!("encoding refs: {e}"))?;
        atomic_write(&self.root.join("refs.json"), &bytes)
    }

    /// Resolves NAME[:TAG], a full image id, or a unique id prefix (>= 4 hex digits).
    pub fn resolve_image(&self, r: &str) -> Result<String> {
        let refs = self.refs()?;
        // Names stored before the grammar was enforced stay reachable by their exact text.
        if let Some(id) = refs.get(r) {
            return Ok(id.clone());
        }
        if let Ok(rf) = parse_reference(r) {
            if let Some(d) = rf.digest {
                // layerctl keeps no manifests: a digest names an image id (the sha256 of
                // its config), the same whatever name precedes it.
                if self.image_ids()?.contains(&d) {
                    return Ok(d);
                }
                return Err(err!(
                    "no such image: {r} (a digest is matched against image ids: see `layerctl images`)"
                ));
            }
            let key = format!("{}:{}", rf.name, rf.tag.as_deref().unwrap_or("latest"));
            if let Some(id) = refs.get(&key) {
                return Ok(id.clone());
            }
        }
        let hex = r.strip_prefix("sha256:").unwrap_or(r);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<String> = self
                .image_ids()?
                .into_iter()
                .filter(|id| id["sha256:".len()..].starts_with(hex))
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                n if n > 1 => {
                    return Err(err!("image id prefix {r} is ambiguous: give more digits"))
                }
                _ => {}
            }
        }
        Err(err!("no such image: {r} (see `layerctl images`)"))
    }

    // ----- containers -----

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    pub fn container_names(&self) -> Result<Vec<String>> {
        let d = self.root.join("containers");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).ctx(|| format!("reading {}", d.display()))? {
            out.push(
                e.ctx(|| format!("reading {}", d.display()))?
                    .file_name()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        out.sort();
        Ok(out)
    }

    pub fn read_container(&self, name: &str) -> Result<ContainerRecord> {
        valid_container_name(name)
            .map_err(|_| err!("no such container: {name} (see `layerctl ps`)"))?;
        let p = self.container_dir(name).join("container.json");
        if !self.container_dir(name).exists() {
            return Err(err!("no such container: {name} (see `layerctl ps`)"));
        }
        read_json(
            &p,
            &format!("container record {name}"),
            "remove the container with `layerctl rm --force`",
        )
    }

    pub fn write_container(&self, rec: &ContainerRecord) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(rec).map_err(|e| err!("encoding container record: {e}"))?;
        atomic_write(
            &self.container_dir(&rec.name).join("container.json"),
            &bytes,
        )
    }

    /// Creates the container directory (record + empty upper and work) in one rename.
    pub fn create_container(&self, rec: &ContainerRecord) -> Result<()> {
        let dst = self.container_dir(&rec.name);
        if dst.exists() {
            return Err(err!(
                "container name {} is already in use (pick another with --name)",
                rec.name
            ));
        }
        let tmp = self.tmp_dir()?;
        fs::create_dir(tmp.join("upper")).ctx(|| format!("creating {}", tmp.display()))?;
        fs::create_dir(tmp.join("work")).ctx(|| format!("creating {}", tmp.display()))?;
        let bytes =
            serde_json::to_vec_pretty(rec).map_err(|e| err!("encoding container record: {e}"))?;
        fs::write(tmp.join("container.json"), bytes)
            .ctx(|| format!("writing {}", tmp.display()))?;
        let f = fs::File::open(&tmp).ctx(|| format!("opening {}", tmp.display()))?;
        sys::syncfs(&f).ctx(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, &dst).ctx(|| format!("creating container {}", dst.display()))?;
        fsync_dir(&self.root.join("containers"))
    }

    // ----- registry blobs -----

    /// `ROOT/blobs/SUB`, created on first use.
    pub fn blobs_dir(&self, sub: &str) -> Result<PathBuf> {
        let p = self.root.join("blobs").join(sub);
        fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// A JSON map kept under ROOT/blobs (aliases.json, compressed.json): hints, so an
    /// unreadable one reads as empty rather than failing a pull.
    pub fn blob_map<T: for<'de> Deserialize<'de>>(&self, name: &str) -> BTreeMap<String, T> {
        fs::read(self.root.join("blobs").join(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes a ROOT/blobs map atomically (the lock is held).
    pub fn write_blob_map<T: Serialize>(&self, name: &str, m: &BTreeMap<String, T>) -> Result<()> {
        self.blobs_dir("")?;
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| err!("encoding {name}: {e}"))?;
        atomic_write(&self.root.join("blobs").join(name), &bytes)
    }

    /// The stored layer whose content a registry diff_id names: itself, or its alias.
    pub fn layer_for(&self, diff_id: &str) -> Option<String> {
        if self.has_layer(diff_id) {
            return Some(diff_id.to_string());
        }
        let a: BTreeMap<String, String> = self.blob_map("aliases.json");
        a.get(diff_id).filter(|l| self.has_layer(l)).cloned()
    }

    pub fn remove_container(&self, name: &str) -> Result<()> {
        let src = self.container_dir(name);
        let tmp = self.tmp_dir()?.join("gone");
        fs::rename(&src, &tmp).ctx(|| format!("removing container {name}"))?;
        fsync_dir(&self.root.join("containers"))?;
        crate::copytree::remove_any(&tmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_tag_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("reg.example:5000/team/app:v1.2@{d}")).unwrap();
        assert_eq!(r.name, "reg.example:5000/team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        // A port is not a tag.
        let r = parse_reference("localhost:5000/x").unwrap();
        assert_eq!((r.name.as_str(), r.tag), ("localhost:5000/x", None));
        assert_eq!(
            parse_ref("a/b").unwrap(),
            ("a/b".to_string(), "latest".to_string())
        );
        assert!(parse_ref(&format!("a@{d}")).is_err());
        assert!(parse_reference(&format!("a@sha256:{}", "A".repeat(64))).is_err());
        assert!(parse_reference("a@md5:0123456789abcdef0123456789abcdef").is_err());
        let e = parse_ref("Foo").unwrap_err().to_string();
        assert!(e.contains("lowercase") && e.contains(NAME_RULE), "{e}");
        assert_eq!(split_ref("h:5/x:t"), ("h:5/x".to_string(), "t".to_string()));
        assert_eq!(
            split_ref("Old..Name"),
            ("Old..Name".to_string(), "latest".to_string())
        );
    }
}
