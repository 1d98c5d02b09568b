//! `layerctl load`: images into the store from an OCI image layout (a directory or a tar)
//! or a `docker save` archive (a tar or its unpacked directory).
//!
//! Three phases, so that bad input changes nothing:
//! 1. read: unpack an archive file into the store's tmp (regular files only, symlinks kept
//!    as lexical aliases that may not leave the archive), read index/manifests/configs,
//!    checking each against the digest and size its parent names;
//! 2. verify and extract: hash every layer blob against its descriptor, then unpack each
//!    layer (gzip or plain) with the safe extractor into a private tmp directory, checking
//!    the uncompressed stream against the config's diff_id and the --max-size bound;
//! 3. store: move the layers in, then the image configs, then the names: the same order
//!    and the same atomic renames as import and commit.
//!
//! Layers are stored under the digest of their canonical tar (as everything in the store
//! is). For a layer layerctl saved that is the archive's own diff_id; for one another tool
//! wrote (different header details) it differs, and the loaded config names the canonical
//! ids, so such an image gets a new id while its tree is the same.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::err;
use crate::error::{Context, Result};
use crate::extract;
use crate::image::ImageConfig;
use crate::images::tag;
use crate::oci::{self, Descriptor, DockerEntry, Index, Manifest};
use crate::progress;
use crate::store::{parse_ref, Store};
use crate::tarfile;

/// An archive's content: a directory plus, for unpacked tar files, the symlinks it held.
struct Source {
    root: PathBuf,
    /// Shown in messages: the path the user gave.
    shown: String,
    /// Archive-relative symlink path -> its raw target (only from unpacked tars).
    links: HashMap<Vec<Vec<u8>>, Vec<u8>>,
}

impl Source {
    /// The real path of archive member `rel`, resolving the archive's own symlinks
    /// lexically. Refuses absolute names and anything that climbs out of the archive.
    fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let bad = |why: &str| err!("{} names {rel:?}, which {why}", self.shown);
        if rel.starts_with('/') {
            return Err(bad("is an absolute path (archive members are relative)"));
        }
        let mut todo: Vec<Vec<u8>> = rel
            .as_bytes()
            .split(|b| *b == b'/')
            .rev()
            .map(|c| c.to_vec())
            .collect();
        let mut cur: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if cur.pop().is_none() {
                        return Err(bad("leads outside the archive"));
                    }
                    continue;
                }
                _ => cur.push(c),
            }
            if let Some(t) = self.links.get(&cur) {
                hops += 1;
                if hops > 40 || t.starts_with(b"/") {
                    return Err(bad("goes through a symlink that leads outside the archive"));
                }
                cur.pop();
                todo.extend(t.split(|b| *b == b'/').rev().map(|c| c.to_vec()));
            }
        }
        let mut p = self.root.clone();
        for c in cur {
            p.push(OsString::from_vec(c));
        }
        Ok(p)
    }

    fn read(&self, rel: &str, what: &str, max: u64) -> Result<Vec<u8>> {
        let p = self.resolve(rel)?;
        let f = fs::File::open(&p).map_err(|_| {
            err!(
                "{what} ({rel}) is missing from {}: the archive is incomplete",
                self.shown
            )
        })?;
        let mut buf = Vec::new();
        // Records (JSON) are small; a huge one is an attack, not an image.
        f.take(max.min(64 << 20) + 1)
            .read_to_end(&mut buf)
            .ctx(|| format!("reading {rel} in {}", self.shown))?;
        if buf.len() as u64 > max.min(64 << 20) {
            return Err(err!("{what} ({rel}) in {} is too large", self.shown));
        }
        Ok(buf)
    }

    /// A blob named by `desc`, checked against its digest and size.
    fn blob(&self, desc: &Descriptor, what: &str, max: u64) -> Result<Vec<u8>> {
        let rel = oci::blob_rel(&desc.digest)?;
        let bytes = self.read(&rel, &format!("{what} {}", desc.digest), max)?;
        check_bytes(&bytes, &desc.digest, Some(desc.size), what, &self.shown)?;
        Ok(bytes)
    }
}

fn check_bytes(
    bytes: &[u8],
    digest: &str,
    size: Option<u64>,
    what: &str,
    shown: &str,
) -> Result<()> {
    if let Some(s) = size {
        if bytes.len() as u64 != s {
            return Err(err!(
                "{what} {digest} in {shown} is {} bytes but its descriptor says {s}: the archive is damaged or was tampered with",
                bytes.len()
            ));
        }
    }
    let got = crate::store::sha256_id(bytes);
    if got != digest {
        return Err(err!(
            "{what} {digest} in {shown} does not match its digest (content hashes to {got}): the archive is damaged or was tampered with"
        ));
    }
    Ok(())
}

/// One layer to extract.
struct LayerSrc {
    file: PathBuf,
    /// Descriptor digest and size of the (possibly compressed) blob, when the format has them.
    blob: Option<(String, u64)>,
    /// The uncompressed digest the config promises.
    diff_id: String,
    what: String,
}

struct ImagePlan {
    names: Vec<String>,
    config: ImageConfig,
    layers: Vec<LayerSrc>,
    /// The image id the archive gives it (its config digest), to say when the store's
    /// id differs.
    orig_id: Option<String>,
}

/// Parses `--max-size`: bytes, or with a K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => 0,
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| mul != 0)
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| {
            err!("bad --max-size {s:?}: give bytes or a number with K, M, G or T (e.g. 2G)")
        })
}

/// `layerctl load PATH [NAME[:TAG]]`. Returns (name, image id, layers, new layers) per image.
pub fn load(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    max: u64,
) -> Result<Vec<(String, String)>> {
    if let Some(n) = name {
        parse_ref(n)?;
    }
    let meta = fs::metadata(path).ctx(|| {
        format!(
            "{} cannot be read (give an OCI layout directory, an oci-archive or a docker save archive)",
            path.display()
        )
    })?;
    let _lock = store.lock()?;
    let tmp = store.tmp_dir()?;
    let res = load_locked(store, path, &meta, name, max, &tmp);
    // On success the layers have been renamed out of tmp; what is left is scratch.
    let _ = crate::copytree::remove_any(&tmp);
    res
}

fn load_locked(
    store: &Store,
    path: &Path,
    meta: &fs::Metadata,
    name: Option<&str>,
    max: u64,
    tmp: &Path,
) -> Result<Vec<(String, String)>> {
    let shown = path.display().to_string();
    let mut budget = max;
    let src = if meta.is_dir() {
        Source {
            root: path.to_path_buf(),
            shown,
            links: HashMap::new(),
        }
    } else {
        let root = tmp.join("archive");
        fs::create_dir(&root).ctx(|| format!("creating {}", root.display()))?;
        let pb = progress::spinner("reading archive");
        let links = unpack_archive(path, &root, &shown, &mut budget, &|| pb.inc(1))?;
        pb.finish_and_clear();
        Source { root, shown, links }
    };

    // Phase 1: records.
    let mut plans = if src.resolve("index.json")?.is_file() {
        read_oci(&src, max)?
    } else if src.resolve("manifest.json")?.is_file() {
        read_docker_or_dir(&src, max)?
    } else {
        return Err(err!(
            "{} is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json); for a plain rootfs use `layerctl import`",
            src.shown
        ));
    };
    if plans.is_empty() {
        return Err(err!("{} holds no images", src.shown));
    }
    if let Some(n) = name {
        if plans.len() > 1 {
            return Err(err!(
                "{} holds {} images; NAME[:TAG] can only name one (load without a name to keep theirs)",
                src.shown,
                plans.len()
            ));
        }
        let (n, t) = parse_ref(n)?;
        plans[0].names = vec![format!("{n}:{t}")];
    }
    for p in &plans {
        if p.names.is_empty() {
            return Err(err!(
                "an image in {} has no usable name: give one, `layerctl load {} NAME[:TAG]`",
                src.shown,
                src.shown
            ));
        }
    }

    // Phase 2: verify every blob, then extract and verify every layer.
    let all: Vec<&LayerSrc> = plans.iter().flat_map(|p| p.layers.iter()).collect();
    let pb = progress::bar("verifying blobs", all.len() as u64);
    for l in &all {
        pb.inc(1);
        if let Some((digest, size)) = &l.blob {
            if !l.file.is_file() {
                return Err(err!(
                    "{} names blob {digest} ({}), which is missing from {}",
                    l.what,
                    l.file.strip_prefix(&src.root).unwrap_or(&l.file).display(),
                    src.shown
                ));
            }
            let (got, n) = oci::hash_file(&l.file)?;
            if n != *size {
                return Err(err!(
                    "{} blob {digest} in {} is {n} bytes but its descriptor says {size}: the archive is damaged or was tampered with",
                    l.what,
                    src.shown
                ));
            }
            if got != *digest {
                return Err(err!(
                    "{} blob {digest} in {} does not match its digest (content hashes to {got}): the archive is damaged or was tampered with",
                    l.what,
                    src.shown
                ));
            }
        } else if !l.file.is_file() {
            return Err(err!(
                "{} ({}) is missing from {}: the archive is incomplete",
                l.what,
                l.file.strip_prefix(&src.root).unwrap_or(&l.file).display(),
                src.shown
            ));
        }
    }
    pb.finish_and_clear();

    // diff_id from the archive -> (tmp dir, canonical id, canonical size)
    let mut done: BTreeMap<String, (PathBuf, String, u64)> = BTreeMap::new();
    for (i, l) in all.iter().enumerate() {
        if done.contains_key(&l.diff_id) {
            continue;
        }
        let dir = tmp.join(format!("layer-{i}"));
        let diff = dir.join("diff");
        fs::create_dir_all(&diff).ctx(|| format!("creating {}", diff.display()))?;
        // One spinner per layer (entry count), numbered against the whole load.
        let pb = progress::spinner(&format!("extracting layer {}/{}", i + 1, all.len()));
        // ... and the blob's bytes as they are read (one big file is one entry).
        let blob_len = fs::metadata(&l.file).map(|m| m.len()).unwrap_or(0);
        let read = progress::bytes(&format!("reading layer {}/{}", i + 1, all.len()), blob_len);
        let used = extract_layer(l, &diff, budget, &src.shown, &|| pb.inc(1), &read)?;
        read.finish_and_clear();
        budget = budget.saturating_sub(used);
        pb.set_message(format!("hashing layer {}/{}", i + 1, all.len()));
        // The count restarts: entries hashed, not extracted plus hashed.
        pb.set_position(0);
        let (canon, size) = tarfile::digest(&diff, &|| pb.inc(1))?;
        pb.finish_and_clear();
        done.insert(l.diff_id.clone(), (dir, canon, size));
    }

    // Phase 3: store. Everything above has been checked; from here on only renames.
    let mut out = Vec::new();
    let mut moved: BTreeMap<String, ()> = BTreeMap::new();
    for (dir, canon, size) in done.values() {
        if moved.insert(canon.clone(), ()).is_none() {
            store.insert_layer(dir, canon, *size)?;
        }
    }
    for mut p in plans {
        p.config.rootfs.diff_ids = p
            .layers
            .iter()
            .map(|l| done[&l.diff_id].1.clone())
            .collect();
        let id = store.write_image(&p.config)?;
        for n in &p.names {
            out.push((tag(store, n, &id)?, id.clone()));
        }
        if let Some(orig) = p.orig_id.as_ref().filter(|o| **o != id) {
            eprintln!("{}", rekey_note(&p, orig, &id, &done));
        }
    }
    Ok(out)
}

/// Unpacks an archive file (tar, optionally gzip-compressed as a whole) into `root`:
/// directories and regular files only; symlinks are returned as aliases (docker save links
/// duplicate layers that way), never created on disk.
fn unpack_archive(
    path: &Path,
    root: &Path,
    shown: &str,
    budget: &mut u64,
    tick: &dyn Fn(),
) -> Result<HashMap<Vec<Vec<u8>>, Vec<u8>>> {
    let f = fs::File::open(path).ctx(|| format!("opening {shown}"))?;
    let mut r = BufReader::new(f);
    let head = r.fill_buf().ctx(|| format!("reading {shown}"))?.to_vec();
    let inner: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(err!(
            "{shown} is zstd-compressed; layerctl reads plain or gzip archives (decompress it with `zstd -d` first)"
        ));
    } else {
        Box::new(r)
    };
    let mut counted = oci::HashingReader::new(inner, *budget);
    let mut links = HashMap::new();
    {
        let mut ar = tar::Archive::new(&mut counted);
        let entries = ar
            .entries()
            .ctx(|| format!("{shown} is not a tar archive"))?;
        for e in entries {
            tick();
            let mut e =
                e.ctx(|| format!("{shown} is not a readable tar archive (or is truncated)"))?;
            let raw = e.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let mut comps: Vec<Vec<u8>> = Vec::new();
            for c in raw.split(|b| *b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => {
                        return Err(err!(
                            "refusing archive member {name} in {shown}: '..' in path"
                        ))
                    }
                    _ => comps.push(c.to_vec()),
                }
            }
            if raw.starts_with(b"/") {
                return Err(err!(
                    "refusing archive member {name} in {shown}: absolute path"
                ));
            }
            if comps.is_empty() {
                continue;
            }
            // Checked on the header, so the member is named and never written.
            let data = e.raw_file_position().saturating_add(e.size());
            if data > *budget {
                return Err(err!(
                    "refusing archive member {name} in {shown}: it takes the content past the size limit of {} bytes (raise --max-size if the archive is trusted)",
                    *budget
                ));
            }
            let mut p = root.to_path_buf();
            for c in &comps {
                p.push(OsString::from_vec(c.clone()));
            }
            match e.header().entry_type() {
                tar::EntryType::Directory => {
                    fs::create_dir_all(&p).ctx(|| format!("archive member {name}"))?
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if let Some(parent) = p.parent() {
                        fs::create_dir_all(parent).ctx(|| format!("archive member {name}"))?;
                    }
                    // Directories are created here only from names already cleaned of
                    // `..`, and no symlink is ever created, so nothing resolves outside.
                    let mut f =
                        fs::File::create(&p).ctx(|| format!("archive member {name}"))?;
                    io::copy(&mut e, &mut f).ctx(|| format!("archive member {name}: reading"))?;
                }
                tar::EntryType::Symlink => {
                    let t = e
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default();
                    // Kept raw: `resolve` reads it relative to the link's directory, as
                    // the filesystem would, and refuses it if it climbs out.
                    if t.starts_with(b"/") {
                        return Err(err!(
                            "refusing archive member {name} in {shown}: symlink to an absolute path"
                        ));
                    }
                    links.insert(comps, t);
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(err!(
                        "refusing archive member {name} in {shown}: unexpected entry type {other:?} in an image archive"
                    ))
                }
            }
        }
    }
    *budget = budget.saturating_sub(counted.count);
    Ok(links)
}

fn extract_layer(
    l: &LayerSrc,
    diff: &Path,
    budget: u64,
    shown: &str,
    tick: &dyn Fn(),
    read: &indicatif::ProgressBar,
) -> Result<u64> {
    let f = fs::File::open(&l.file).ctx(|| format!("opening {}", l.file.display()))?;
    let mut r = BufReader::new(progress::Reader::new(f, read));
    let head = r.fill_buf().ctx(|| format!("reading {}", l.what))?.to_vec();
    let inner: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(err!(
            "{} in {shown} is zstd-compressed; layerctl reads gzip and plain tar layers (convert with `skopeo copy --dest-compress-format gzip`)",
            l.what
        ));
    } else {
        Box::new(r)
    };
    let mut hr = oci::HashingReader::new(inner, budget);
    let what = format!("{} of {shown}", l.what);
    extract::extract_limited(&mut hr, diff, &what, tick, budget)?;
    // The tar reader stops at the end-of-archive marker; the digest covers every byte.
    io::copy(&mut hr, &mut io::sink()).ctx(|| format!("reading {what}"))?;
    let got = hr.digest();
    if got != l.diff_id {
        return Err(err!(
            "{what}: uncompressed content hashes to {got} but the image config says {}: the archive is damaged or was tampered with",
            l.diff_id
        ));
    }
    Ok(hr.count)
}

fn parse_config(bytes: &[u8], what: &str, shown: &str) -> Result<ImageConfig> {
    serde_json::from_slice(bytes).map_err(|e| err!("{what} in {shown} is not an image config: {e}"))
}

fn plan_layers(
    src: &Source,
    cfg: &ImageConfig,
    files: Vec<(PathBuf, Option<(String, u64)>)>,
    what: &str,
) -> Result<Vec<LayerSrc>> {
    if cfg.rootfs.diff_ids.len() != files.len() {
        return Err(err!(
            "{what} in {}: the config lists {} diff_ids but the manifest {} layers",
            src.shown,
            cfg.rootfs.diff_ids.len(),
            files.len()
        ));
    }
    let mut out = Vec::new();
    for (i, ((file, blob), d)) in files.into_iter().zip(&cfg.rootfs.diff_ids).enumerate() {
        crate::store::hex_of(d).map_err(|e| err!("{what} in {}: bad diff_id: {e}", src.shown))?;
        out.push(LayerSrc {
            file,
            blob,
            diff_id: d.clone(),
            what: format!("layer {} of {what}", i + 1),
        });
    }
    Ok(out)
}

/// Name to store an OCI index entry under: the full name when one is given, else nothing
/// (a bare tag does not say which repository).
fn oci_name(desc: &Descriptor) -> Option<String> {
    let a = desc.annotations.as_ref()?;
    let cand = a
        .get(oci::ANNOT_IMAGE_NAME)
        .or_else(|| a.get(oci::ANNOT_REF_NAME))?;
    let (n, t) = parse_ref(&normalize(cand)).ok()?;
    // `ref.name` of just a tag parses as a name with tag "latest": not a real name.
    if a.get(oci::ANNOT_IMAGE_NAME).is_none() && !cand.contains(':') && !cand.contains('/') {
        return None;
    }
    Some(format!("{n}:{t}"))
}

/// Drops a `docker.io/library/` style prefix that podman and docker add, so a name
/// saved as `demo:1` comes back as `demo:1`; other registries stay in the name.
fn normalize(r: &str) -> String {
    let r = r.split('@').next().unwrap_or(r);
    for p in ["docker.io/library/", "docker.io/", "localhost/"] {
        if let Some(rest) = r.strip_prefix(p) {
            return rest.to_string();
        }
    }
    r.to_string()
}

fn read_oci(src: &Source, max: u64) -> Result<Vec<ImagePlan>> {
    let layout = src.read("oci-layout", "the oci-layout file", max)?;
    let v: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| err!("oci-layout in {} is not JSON: {e}", src.shown))?;
    if v["imageLayoutVersion"] != oci::LAYOUT_VERSION {
        return Err(err!(
            "{} has image layout version {}; layerctl reads {}",
            src.shown,
            v["imageLayoutVersion"],
            oci::LAYOUT_VERSION
        ));
    }
    let idx_bytes = src.read("index.json", "the index", max)?;
    let idx: Index = serde_json::from_slice(&idx_bytes)
        .map_err(|e| err!("index.json in {} is not an OCI index: {e}", src.shown))?;
    let mut plans = Vec::new();
    for top in &idx.manifests {
        let names: Vec<String> = oci_name(top).into_iter().collect();
        let desc = pick_manifest(src, top, max, 0)?;
        let mbytes = src.blob(&desc, "manifest", max)?;
        let m: Manifest = serde_json::from_slice(&mbytes).map_err(|e| {
            err!(
                "manifest {} in {} is not an image manifest: {e}",
                desc.digest,
                src.shown
            )
        })?;
        let what = format!(
            "image {}",
            names.first().cloned().unwrap_or(desc.digest.clone())
        );
        let cbytes = src.blob(&m.config, "config", max)?;
        let cfg = parse_config(&cbytes, &format!("config of {what}"), &src.shown)?;
        let mut files = Vec::new();
        for l in &m.layers {
            files.push((
                src.resolve(&oci::blob_rel(&l.digest)?)?,
                Some((l.digest.clone(), l.size)),
            ));
        }
        let layers = plan_layers(src, &cfg, files, &what)?;
        // The same manifest under several names is one image with several names.
        if let Some(p) = plans
            .iter_mut()
            .find(|p: &&mut ImagePlan| p.config == cfg && !names.is_empty())
        {
            p.names.extend(names);
            continue;
        }
        plans.push(ImagePlan {
            names,
            config: cfg,
            layers,
            orig_id: Some(m.config.digest.clone()),
        });
    }
    Ok(plans)
}

/// Follows nested indexes (multi-platform images) down to the manifest for this host.
fn pick_manifest(src: &Source, desc: &Descriptor, max: u64, depth: u32) -> Result<Descriptor> {
    let mt = desc.media_type.as_str();
    if mt != oci::MT_INDEX && mt != oci::MT_DOCKER_LIST {
        return Ok(desc.clone());
    }
    if depth > 4 {
        return Err(err!("{} nests indexes too deeply", src.shown));
    }
    let bytes = src.blob(desc, "index", max)?;
    let idx: Index = serde_json::from_slice(&bytes).map_err(|e| {
        err!(
            "index {} in {} is not an OCI index: {e}",
            desc.digest,
            src.shown
        )
    })?;
    let arch = crate::image::host_arch();
    let hit = idx
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or(if idx.manifests.len() == 1 {
            idx.manifests.first()
        } else {
            None
        })
        .ok_or_else(|| {
            err!(
                "{} has no image for linux/{arch} (copy that platform with `skopeo copy --override-arch`)",
                src.shown
            )
        })?;
    pick_manifest(src, hit, max, depth + 1)
}

fn read_docker(src: &Source, max: u64) -> Result<Vec<ImagePlan>> {
    let bytes = src.read("manifest.json", "manifest.json", max)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        err!(
            "manifest.json in {} is not a docker save manifest: {e}",
            src.shown
        )
    })?;
    let mut plans = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let names: Vec<String> = e
            .repo_tags
            .iter()
            .flatten()
            .filter_map(|t| parse_ref(&normalize(t)).ok())
            .map(|(n, t)| format!("{n}:{t}"))
            .collect();
        let what = format!(
            "image {}",
            names.first().cloned().unwrap_or(format!("#{}", i + 1))
        );
        let cbytes = src.read(&e.config, &format!("config of {what}"), max)?;
        // Docker names the config (and newer docker the layers) by digest: check those.
        if let Some(d) = digest_in_name(&e.config) {
            check_bytes(&cbytes, &d, None, "config", &src.shown)?;
        }
        let cfg = parse_config(&cbytes, &format!("config of {what}"), &src.shown)?;
        let mut files = Vec::new();
        for l in &e.layers {
            let p = src.resolve(l)?;
            let blob = if l.starts_with("blobs/sha256/") {
                let d = digest_in_name(l);
                match d {
                    Some(d) => {
                        let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                        Some((d, size))
                    }
                    None => None,
                }
            } else {
                None
            };
            files.push((p, blob));
        }
        plans.push(ImagePlan {
            names,
            layers: plan_layers(src, &cfg, files, &what)?,
            config: cfg,
            orig_id: Some(crate::store::sha256_id(&cbytes)),
        });
    }
    Ok(plans)
}

/// What `load` says when an image's id in the store is not the archive's: which layers
/// were stored under another id (written by another tool: their canonical tar differs)
/// or, if none, that the config was re-encoded.
fn rekey_note(
    p: &ImagePlan,
    orig: &str,
    id: &str,
    done: &BTreeMap<String, (PathBuf, String, u64)>,
) -> String {
    let rekeyed = p
        .layers
        .iter()
        .filter(|l| done.get(&l.diff_id).is_some_and(|d| d.1 != l.diff_id))
        .count();
    let name = p.names.first().map(String::as_str).unwrap_or("image");
    let why = if rekeyed > 0 {
        format!(
            "{rekeyed} of its {} layer(s) were written by another tool and are stored under the digest of their canonical tar (same files)",
            p.layers.len()
        )
    } else {
        "its config was re-encoded".to_string()
    };
    format!("layerctl: {name}: re-keyed: image {orig} is stored as {id}: {why}")
}

/// A `manifest.json` at the top is a `docker save` manifest (a JSON array) or, from
/// the `dir:` transport (`podman save --format docker-dir`, `skopeo copy ... dir:`), one
/// image's schema 2 manifest (an object) with the blobs as files named by hex digest.
fn read_docker_or_dir(src: &Source, max: u64) -> Result<Vec<ImagePlan>> {
    let bytes = src.read("manifest.json", "manifest.json", max)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return read_docker(src, max);
    }
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        err!(
            "manifest.json in {} is neither a docker save manifest nor an image manifest: {e}",
            src.shown
        )
    })?;
    let blob_file = |d: &Descriptor| -> Result<String> {
        let rel = oci::blob_rel(&d.digest)?;
        Ok(rel.rsplit('/').next().unwrap_or_default().to_string())
    };
    let cdesc = &m.config;
    let cbytes = src.read(&blob_file(cdesc)?, &format!("config {}", cdesc.digest), max)?;
    check_bytes(
        &cbytes,
        &cdesc.digest,
        Some(cdesc.size),
        "config",
        &src.shown,
    )?;
    let what = "the image".to_string();
    let cfg = parse_config(&cbytes, "config of the image", &src.shown)?;
    let mut files = Vec::new();
    for l in &m.layers {
        files.push((
            src.resolve(&blob_file(l)?)?,
            Some((l.digest.clone(), l.size)),
        ));
    }
    Ok(vec![ImagePlan {
        names: Vec::new(),
        layers: plan_layers(src, &cfg, files, &what)?,
        config: cfg,
        orig_id: Some(cdesc.digest.clone()),
    }])
}

/// `layerctl load` of an archive read from stdin (`-i -`, or no input). The stream is
/// copied (bounded by `max`) into `.load-stdin-PID` in the store's directory *before* the
/// store lock is taken, so a slow pipe (`save | ssh host layerctl load`) never holds the
/// lock; under the lock it is renamed into tmp/ and loaded as a file. A SIGKILL's copy is
/// a leftover that `fsck` and `gc` remove.
pub fn load_stdin(store: &Store, name: Option<&str>, max: u64) -> Result<Vec<(String, String)>> {
    if let Some(n) = name {
        parse_ref(n)?;
    }
    let copy = store
        .root
        .join(format!("{STDIN_COPY_PREFIX}{}", std::process::id()));
    let _cleanup = crate::interrupt::register(&copy);
    let res = (|| {
        let mut f = fs::File::create(&copy).ctx(|| format!("creating {}", copy.display()))?;
        let pb = progress::bytes("reading stdin", 0);
        let n = io::copy(
            &mut progress::Reader::new(io::stdin().lock().take(max.saturating_add(1)), &pb),
            &mut f,
        )
        .ctx(|| "reading the archive from stdin".to_string())?;
        pb.finish_and_clear();
        if n > max {
            return Err(err!(
                "the archive on stdin is larger than --max-size ({max} bytes): raise it if the archive is trusted"
            ));
        }
        if n == 0 {
            return Err(err!(
                "stdin is empty: pipe an archive in (`layerctl load < img.tar`) or give one with -i FILE"
            ));
        }
        drop(f);
        let _lock = store.lock()?;
        let tmp = store.tmp_dir()?;
        let file = tmp.join("stdin");
        let res = fs::rename(&copy, &file)
            .ctx(|| format!("moving {} into {}", copy.display(), tmp.display()))
            .and_then(|()| {
                let meta = fs::metadata(&file).ctx(|| format!("reading {}", file.display()))?;
                load_locked(store, &file, &meta, name, max, &tmp)
            });
        let _ = crate::copytree::remove_any(&tmp);
        res
    })();
    let _ = fs::remove_file(&copy);
    res
}

/// Name prefix (then the pid) of `load_stdin`'s copy in the store's directory.
pub const STDIN_COPY_PREFIX: &str = ".load-stdin-";

/// `sha256:HEX` when the last component of `rel` is HEX or HEX.json (a content address).
fn digest_in_name(rel: &str) -> Option<String> {
    let base = rel.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let d = format!("sha256:{hex}");
    crate::store::hex_of(&d).is_ok().then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn lexical_resolution() {
        let mut links = HashMap::new();
        links.insert(
            vec![b"a".to_vec(), b"layer.tar".to_vec()],
            b"../b/layer.tar".to_vec(),
        );
        links.insert(vec![b"evil".to_vec()], b"../../etc".to_vec());
        let s = Source {
            root: PathBuf::from("/r"),
            shown: "x".into(),
            links,
        };
        assert_eq!(
            s.resolve("a/layer.tar").unwrap(),
            PathBuf::from("/r/b/layer.tar")
        );
        assert!(s.resolve("evil/passwd").is_err());
        assert!(s.resolve("../x").is_err());
        assert!(s.resolve("/etc/passwd").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(normalize("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(normalize("localhost/demo:2"), "demo:2");
        assert_eq!(
            digest_in_name(&format!("{}.json", "a".repeat(64))),
            Some(format!("sha256:{}", "a".repeat(64)))
        );
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }
}
