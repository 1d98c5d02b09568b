//! Image-level operations: import a rootfs, remove images, garbage-collect, check.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::changeset;
use crate::copytree::Copier;
use crate::err;
use crate::error::{Context, Result};
use crate::extract;
use crate::image::{now_rfc3339, ImageConfig};
use crate::lowerview::LowerView;
use crate::output::human;
use crate::progress;
use crate::store::{hex_of, parse_ref, Store};
use crate::tarfile;
use layerfs::layers::writer::{LayerPath, LayerWriter};

/// Hashes the finished layer in `tmp/diff` and moves it into the store.
/// Returns (diff_id, size, newly stored).
pub fn store_layer(store: &Store, tmp: &Path, msg: &str) -> Result<(String, u64, bool)> {
    // Bytes of the canonical tar as they are hashed, against the files' sizes (the tar's
    // headers make it a little more): one big file would otherwise be one still entry.
    let dir = tmp.join("diff");
    let pb = progress::bytes(msg, crate::container::tree_size(&dir));
    let (diff_id, size) =
        tarfile::write_tar(&dir, progress::Writer::new(std::io::sink(), &pb), &|| {})?;
    pb.finish_and_clear();
    let fresh = store.insert_layer(tmp, &diff_id, size)?;
    Ok((diff_id, size, fresh))
}

/// Points NAME:TAG at `id` (the old target, if any, becomes dangling until gc).
pub fn tag(store: &Store, reference: &str, id: &str) -> Result<String> {
    let (name, t) = parse_ref(reference)?;
    let full = format!("{name}:{t}");
    let mut refs = store.refs()?;
    refs.insert(full.clone(), id.to_string());
    store.write_refs(&refs)?;
    Ok(full)
}

/// `layerctl import SOURCE NAME[:TAG]`: a directory or tar(.gz) becomes a base layer and
/// a one-layer image. Returns (image ref, image id, diff_id).
pub fn import(store: &Store, source: &Path, reference: &str) -> Result<(String, String, String)> {
    // Validate everything cheap before any work, so bad input changes nothing.
    parse_ref(reference)?;
    let meta = fs::metadata(source).ctx(|| {
        format!(
            "import source {} cannot be read (give a directory or a .tar/.tar.gz file)",
            source.display()
        )
    })?;
    // A FIFO or device would block the open below with the store locked.
    if !meta.is_dir() && !meta.is_file() {
        return Err(err!(
            "import source {} is not a directory or a regular file: give a directory or a .tar/.tar.gz file",
            source.display()
        ));
    }
    let _lock = store.lock()?;
    let tmp = store.tmp_dir()?;
    let diff = tmp.join("diff");
    fs::create_dir(&diff).ctx(|| format!("creating {}", diff.display()))?;
    let pb = progress::spinner("importing");
    let tick = || pb.inc(1);
    let res = if meta.is_dir() {
        import_dir(source, &diff, &tick)
    } else {
        let what = source.display().to_string();
        extract::open_tar(source).and_then(|r| extract::extract(r, &diff, &what, &tick))
    };
    pb.finish_and_clear();
    if let Err(e) = res {
        let _ = crate::copytree::remove_any(&tmp);
        return Err(e);
    }
    let (diff_id, _, _) = store_layer(store, &tmp, "hashing")?;
    let now = now_rfc3339();
    let cfg = ImageConfig::base(
        diff_id.clone(),
        now,
        format!("layerctl import {}", source.display()),
        Some(format!("Imported from {}", source.display())),
    );
    let id = store.write_image(&cfg)?;
    let full = tag(store, reference, &id)?;
    Ok((full, id, diff_id))
}

/// `layerctl rmi IMAGE [--force]`. Removes the name (or, given an id, its one name; every
/// name only with --force) and the image record once nothing names it. Returns what was removed, one per line.
pub fn rmi(store: &Store, reference: &str, force: bool) -> Result<Vec<String>> {
    let _lock = store.lock()?;
    let id = store.resolve_image(reference)?;
    let users: Vec<String> = store
        .container_names()?
        .into_iter()
        .filter(|n| {
            store
                .read_container(n)
                .map(|c| c.image_id == id)
                .unwrap_or(false)
        })
        .collect();
    if !users.is_empty() && !force {
        return Err(err!(
            "image {reference} is used by container(s) {}: remove them first (`layerctl rm`) or use --force",
            users.join(", ")
        ));
    }
    let mut refs = store.refs()?;
    let mut out = Vec::new();
    let by_name = Some(reference.to_string())
        .filter(|r| refs.contains_key(r))
        .or_else(|| parse_ref(reference).ok().map(|(n, t)| format!("{n}:{t}")))
        .filter(|r| refs.get(r) == Some(&id));
    match &by_name {
        Some(r) => {
            refs.remove(r);
            out.push(format!("Untagged: {r}"));
        }
        None => {
            let names: Vec<String> = refs
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect();
            // As docker: an id names the image, not one of its tags; removing them all
            // is asked for explicitly.
            if names.len() > 1 && !force {
                return Err(err!(
                    "image {reference} has {} tags ({}): remove one by name (`layerctl rmi {}`) or all with --force",
                    names.len(),
                    names.join(", "),
                    names[0]
                ));
            }
            for n in names {
                refs.remove(&n);
                out.push(format!("Untagged: {n}"));
            }
        }
    }
    // As docker: an image other images were made from stays, unnamed, while they exist
    // (their history rows and the build cache point at it); gc removes it after them.
    let mut children = Vec::new();
    for other in store.image_ids()? {
        if other != id && store.parent(&other)?.as_deref() == Some(id.as_str()) {
            children.push(other);
        }
    }
    if by_name.is_none() && !children.is_empty() && !force {
        return Err(err!(
            "image {reference} has dependent child images ({}): remove them first, or use --force to untag it",
            children.iter().map(|c| crate::output::short(c)).collect::<Vec<_>>().join(", ")
        ));
    }
    store.write_refs(&refs)?;
    if !refs.values().any(|v| *v == id) && children.is_empty() && store.image_ids()?.contains(&id) {
        // Containers keep a copy of their image's config, so deleting the record
        // (with --force) does not break their commit.
        store.remove_image(&id)?;
        out.push(format!("Deleted: {id}"));
    }
    Ok(out)
}

/// `layerctl gc`: drops image records no name or container uses and layers no image or
/// container uses. Returns the lines to print.
pub fn gc(store: &Store) -> Result<Vec<String>> {
    // Measured before the lock clears them, so that what they held is counted.
    let left = leftovers(store);
    let _lock = store.lock()?;
    remove_leftovers(&left);
    let mut out = Vec::new();
    let refs = store.refs()?;
    let mut keep_layers = BTreeSet::new();
    let mut keep_images: BTreeSet<String> = refs.values().cloned().collect();
    for n in store.container_names()? {
        // An unreadable container record keeps everything: never delete what might be used.
        let c = store
            .read_container(&n)
            .map_err(|e| err!("{e}; gc refuses to run until that is fixed"))?;
        keep_images.insert(c.image_id.clone());
        keep_layers.extend(c.image_config.rootfs.diff_ids.iter().cloned());
    }
    // An image kept keeps the images it was built on (docker's parent chain): a build's
    // cached steps live as long as an image made from them.
    for id in keep_images.clone() {
        keep_images.extend(store.ancestry(&id)?);
    }
    for id in store.image_ids()? {
        if !keep_images.contains(&id) {
            store.remove_image(&id)?;
            out.push(format!("deleted image {id}"));
            continue;
        }
        let cfg = store
            .read_image(&id)
            .map_err(|e| err!("{e}; gc refuses to run until that is fixed"))?;
        keep_layers.extend(cfg.rootfs.diff_ids);
    }
    let stale = crate::build::cache::prune(store)?;
    if stale > 0 {
        out.push(format!(
            "deleted {stale} build cache entr{}",
            if stale == 1 { "y" } else { "ies" }
        ));
    }
    let mut freed = 0u64;
    for l in store.layer_ids()? {
        if keep_layers.contains(&l) {
            continue;
        }
        freed += store.layer_record(&l).map(|r| r.size).unwrap_or(0);
        store.remove_layer(&l)?;
        out.push(format!("deleted layer {l}"));
    }
    let (nblobs, blob_bytes) = remove_idle_blobs(store)?;
    prune_blob_maps(store)?;
    freed += blob_bytes;
    if nblobs > 0 {
        out.push(format!(
            "deleted {nblobs} partial or unstored registry blob(s) ({})",
            human(blob_bytes)
        ));
    }
    let layers = out
        .iter()
        .filter(|l| l.starts_with("deleted layer"))
        .count();
    let left_bytes: u64 = left.iter().map(|(_, b)| b).sum();
    let mut line = format!("freed {} in {layers} layer(s)", human(freed + left_bytes));
    if !left.is_empty() {
        line.push_str(&format!(
            " and {} leftover(s) of interrupted commands ({})",
            left.len(),
            human(left_bytes)
        ));
    }
    out.push(line);
    Ok(out)
}

/// `layerctl fsck`: re-hashes every layer and checks every reference. Returns
/// (problems, notes); any problem means exit 1.
pub fn fsck(store: &Store) -> Result<(Vec<String>, Vec<String>)> {
    // Leftovers of killed commands: reported (they mean something was interrupted, and
    // they hold space), then removed by the lock.
    let left = leftovers(store);
    let _lock = store.lock()?;
    remove_leftovers(&left);
    let mut bad = Vec::new();
    for (p, bytes) in left.iter().take(10) {
        let rel = p.strip_prefix(&store.root).unwrap_or(p);
        bad.push(format!(
            "leftover of an interrupted command: {} ({}), removed now",
            rel.display(),
            human(*bytes)
        ));
    }
    if left.len() > 10 {
        bad.push(format!(
            "leftover of an interrupted command: {} more, removed now",
            left.len() - 10
        ));
    }
    let mut notes = Vec::new();
    let layers = store.layer_ids()?;
    let pb = progress::bar("checking layers", layers.len() as u64);
    let mut good_layers = BTreeSet::new();
    for l in &layers {
        pb.inc(1);
        if hex_of(l).is_err() {
            bad.push(format!("stray entry in layers/: {l}"));
            continue;
        }
        let rec = match store.layer_record(l) {
            Ok(r) => r,
            Err(e) => {
                bad.push(e.to_string());
                continue;
            }
        };
        match tarfile::digest(&store.layer_dir(l)?, &|| {}) {
            Ok((d, size)) if d == *l && rec.diff_id == *l => {
                if size != rec.size {
                    bad.push(format!(
                        "layer {l}: recorded size {} but tar is {size} bytes",
                        rec.size
                    ));
                } else {
                    good_layers.insert(l.clone());
                }
            }
            Ok((d, _)) => bad.push(format!("layer {l} is damaged: its content hashes to {d}")),
            Err(e) => bad.push(format!("layer {l} is damaged: {e}")),
        }
    }
    pb.finish_and_clear();
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    let images = store.image_ids()?;
    for id in &images {
        match store.read_image(id) {
            Ok(cfg) => {
                let path = store
                    .root
                    .join("images")
                    .join(format!("{}.json", hex_of(id)?));
                let bytes = fs::read(&path).unwrap_or_default();
                if crate::store::sha256_id(&bytes) != *id {
                    bad.push(format!(
                        "image record {id} does not match its id (edited or damaged)"
                    ));
                }
                for d in &cfg.rootfs.diff_ids {
                    *used.entry(d.clone()).or_default() += 1;
                    if !store.has_layer(d) {
                        bad.push(format!("image {id} needs missing layer {d}"));
                    }
                }
            }
            Err(e) => bad.push(e.to_string()),
        }
    }
    for (name, id) in store.refs()? {
        if !images.contains(&id) {
            bad.push(format!("name {name} points at missing image {id}"));
        }
    }
    for n in store.container_names()? {
        match store.read_container(&n) {
            Ok(c) => {
                for d in &c.image_config.rootfs.diff_ids {
                    if !store.has_layer(d) {
                        bad.push(format!("container {n} needs missing layer {d}"));
                    }
                }
                if !store.container_dir(&n).join("upper").is_dir() {
                    bad.push(format!("container {n} has no upper directory"));
                }
            }
            Err(e) => bad.push(e.to_string()),
        }
    }
    let (nblobs, blob_bytes) = idle_blobs(store);
    if nblobs > 0 {
        notes.push(format!(
            "{nblobs} partial registry blob(s) ({}) kept so the next pull continues them (`layerctl gc` removes them)",
            human(blob_bytes)
        ));
    }
    let unused = layers.iter().filter(|l| !used.contains_key(*l)).count();
    notes.push(format!(
        "{} layer(s) ok, {} image(s), {} unused layer(s) (`layerctl gc` removes them)",
        good_layers.len(),
        images.len(),
        unused
    ));
    Ok((bad, notes))
}

/// Registry blobs no running pull holds (its flock): partial downloads kept for the next
/// pull, and verified blobs a killed pull did not get to store. Counted, or removed.
fn blob_files(store: &Store) -> Vec<(std::path::PathBuf, fs::File, u64)> {
    let mut out = Vec::new();
    for sub in ["partial", "sha256"] {
        let d = store.root.join("blobs").join(sub);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(f) = fs::File::open(&p) else { continue };
            if crate::sys::flock_try_exclusive(&f).unwrap_or(false) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((p, f, len));
            }
        }
    }
    out
}

fn idle_blobs(store: &Store) -> (usize, u64) {
    let b = blob_files(store);
    (b.len(), b.iter().map(|x| x.2).sum())
}

fn remove_idle_blobs(store: &Store) -> Result<(usize, u64)> {
    let b = blob_files(store);
    let mut bytes = 0;
    for (p, _lock, len) in &b {
        fs::remove_file(p).ctx(|| format!("removing {}", p.display()))?;
        bytes += len;
    }
    Ok((b.len(), bytes))
}

/// Drops the hints in ROOT/blobs whose layer is gone.
fn prune_blob_maps(store: &Store) -> Result<()> {
    let a: BTreeMap<String, String> = store.blob_map("aliases.json");
    let kept: BTreeMap<String, String> = a
        .iter()
        .filter(|(_, l)| store.has_layer(l))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if kept.len() != a.len() {
        store.write_blob_map("aliases.json", &kept)?;
    }
    let c: BTreeMap<String, serde_json::Value> = store.blob_map("compressed.json");
    let kept: BTreeMap<String, serde_json::Value> = c
        .iter()
        .filter(|(k, _)| k.split(' ').nth(1).is_some_and(|l| store.has_layer(l)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if kept.len() != c.len() {
        store.write_blob_map("compressed.json", &kept)?;
    }
    Ok(())
}

/// Temp entries of commands that are no longer running: everything in tmp/ (named
/// `PID-N` by `Store::tmp_dir`; other names cannot be ours to keep), half-written records
/// (`.tmp-PID-N`), `load`'s copies of stdin (`.load-stdin-PID`) and `run` scratch
/// directories (`run/PID-N`). Entries of live processes
/// are theirs. With the apparent size of each.
pub fn leftovers(store: &Store) -> Vec<(std::path::PathBuf, u64)> {
    let dead = |name: &str, prefix: &str| -> bool {
        let Some(rest) = name.strip_prefix(prefix) else {
            return false;
        };
        match rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) {
            Some(pid) => pid != std::process::id() as i32 && !crate::sys::pid_alive(pid),
            None => prefix.is_empty(),
        }
    };
    let mut out = Vec::new();
    for (dir, prefix) in [
        ("tmp", ""),
        ("images", ".tmp-"),
        (".", ".tmp-"),
        (".", crate::load::STDIN_COPY_PREFIX),
        ("blobs", ".tmp-"),
        ("run", ""),
    ] {
        let d = store.root.join(dir);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut found: Vec<_> = rd
            .flatten()
            .filter(|e| dead(&e.file_name().to_string_lossy(), prefix))
            .map(|e| e.path())
            .collect();
        found.sort();
        for p in found {
            // Removing a layer or container leaves its emptied tmp directory behind for
            // the next writer: nothing was interrupted there.
            let empty_dir = fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none());
            if !empty_dir {
                let size = crate::container::tree_size(&p);
                out.push((p, size));
            }
        }
    }
    out
}

/// Removes what [`leftovers`] found (the store lock is held: no writer can be using it).
/// A `run` directory with a mount still inside is left alone.
fn remove_leftovers(left: &[(std::path::PathBuf, u64)]) {
    for (p, _) in left {
        if p.exists() {
            crate::interrupt::remove_unmounting(p);
        }
    }
}

/// Layer chain of an image as lower dirs, top-most first (an image with no layers
/// gets the store's empty directory: an empty root).
pub fn lower_dirs(store: &Store, cfg: &ImageConfig) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for d in cfg.rootfs.diff_ids.iter().rev() {
        if !store.has_layer(d) {
            return Err(err!("layer {d} is missing from the store: run `layerctl fsck`, then re-import the image"));
        }
        let dir = store.layer_dir(d)?;
        // The same layer twice in one chain (two commits without a change give the same
        // empty layer): kernel overlayfs refuses a lowerdir list naming a directory twice
        // (ELOOP, "overlapping layers"). The lower occurrence changes nothing under the
        // upper one, which decides every path the layer names, so it is left out.
        if out.contains(&dir) {
            continue;
        }
        let opaque_root = fs::File::open(&dir)
            .map(|f| layerfs::whiteout::is_opaque(std::os::fd::AsFd::as_fd(&f), "".as_ref()))
            .unwrap_or(false);
        out.push(dir);
        // A layer whose root is opaque (a root-level `.wh..wh..opq` in its tar) hides every
        // layer below it, as the OCI spec reads the marker; overlay mounts ignore opacity
        // on a layer root, so the chain ends here instead.
        if opaque_root {
            break;
        }
    }
    if out.is_empty() {
        out.push(store.empty_layer_dir()?);
    }
    Ok(out)
}

pub fn lower_view(store: &Store, cfg: &ImageConfig) -> Result<LowerView> {
    LowerView::new(lower_dirs(store, cfg)?).ctx(|| "opening the image's layers".to_string())
}

/// Copies the directory tree `source` into the new layer directory `diff`.
fn import_dir(source: &Path, diff: &Path, tick: &dyn Fn()) -> Result<()> {
    let src = fs::File::open(source).ctx(|| format!("opening {}", source.display()))?;
    let w = LayerWriter::open(diff).ctx(|| format!("opening {}", diff.display()))?;
    let mut c = Copier::new(w);
    c.copy_tree_into(src.into(), &LayerPath::root(), tick)?;
    c.finish()
}

pub use changeset::Change;
