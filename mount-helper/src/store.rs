//! The store layout, its lock and atomic writes.
//!
//! ```text
//! ROOT/lock                      flock'd by every writer
//! ROOT/tmp/                      work in progress; cleared by the next writer
//! ROOT/layers/HEX/diff/          the layer directory (a lower dir as it is)
//! ROOT/layers/HEX/layer.json     {diff_id, size, created}
//! ROOT/images/HEX.json           image config; HEX = sha256 of these bytes (the image id)
//! ROOT/refs.json                 {"name:tag": "sha256:..."}
//! ROOT/containers/NAME/          container.json, upper/, work/
//! ```
//!
//! Every record appears by a rename of something complete and fsynced (a whole layer
//! directory, a whole file), so a reader or a crash sees the old state or the new one.
//! Layers are written before the images that name them, and images before refs, so a
//! crash leaves at worst an unreferenced layer or image, which `gc` removes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    _file: fs::File,
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

/// Splits and validates NAME[:TAG] (tag defaults to "latest").
pub fn parse_ref(s: &str) -> Result<(String, String)> {
    let (name, tag) = match s.rfind(':') {
        Some(i) if !s[i + 1..].contains('/') => (&s[..i], &s[i + 1..]),
        _ => (s, "latest"),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !name_ok {
        return Err(err!(
            "invalid image name {name:?}: use lowercase letters, digits, '.', '_', '-', '/' (e.g. myimage:1.0)"
        ));
    }
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !tag_ok {
        return Err(err!(
            "invalid tag {tag:?}: use letters, digits, '.', '_', '-' (at most 128)"
        ));
    }
    Ok((name.to_string(), tag.to_string()))
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
    /// writer can be running while we hold the lock).
    pub fn lock(&self) -> Result<Lock> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx(|| format!("opening lock {}", p.display()))?;
        sys::flock_exclusive(&f).ctx(|| format!("locking {}", p.display()))?;
        self.clear_tmp()?;
        Ok(Lock { _file: f })
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
        for sub in ["images", "."] {
            let d = self.root.join(sub);
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

    pub fn remove_image(&self, id: &str) -> Result<()> {
        let p = self
            .root
            .join("images")
            .join(format!("{}.json", hex_of(id)?));
        fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
        fsync_dir(&self.root.join("images"))
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
        if let Ok((name, tag)) = parse_ref(r) {
            if let Some(id) = self.refs()?.get(&format!("{name}:{tag}")) {
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

    pub fn remove_container(&self, name: &str) -> Result<()> {
        let src = self.container_dir(name);
        let tmp = self.tmp_dir()?.join("gone");
        fs::rename(&src, &tmp).ctx(|| format!("removing container {name}"))?;
        fsync_dir(&self.root.join("containers"))?;
        crate::copytree::remove_any(&tmp)
    }
}
