//! `layerctl load`: images into the store from an OCI image layout (a directory or a tar)
//! or a `docker save` archive (a tar or its unpacked directory).
//!
//! Three phases, so that bad input changes nothing:
//! 1. read: unpack an archive file into the store's tmp (regular files only, symlinks kept
//!    as lexical aliases that may not leave the archive), read index/manifests/configs,
//!    checking each against the digest and size its parent names;
//! 2. verify and extract: hash every layer blob against its descriptor, then unpack each
//!    layer (gzip, zstd or plain) with the safe extractor into a private tmp directory, checking
//!    the uncompressed stream against the config's diff_id and the --max-size bound;
//! 3. store: move the layers in, then the image configs, then the names: the same order
//!    and the same atomic renames as import and commit.
//!
//! Layers are stored under the digest of their canonical tar (as everything in the store
//! is). For a layer layerctl saved that is the archive's own diff_id; for one another tool
//! wrote (different header details) it differs, and the loaded config names the canonical
//! ids, so such an image gets a new id while its tree is the same.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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
use layerfs::layers::writer::{LayerPath, LayerWriter, Meta};
use layerfs::sys;

mod source;
use source::{check_bytes, kind_name, Source};

/// One layer to extract.
struct LayerSrc {
    /// Opened (and checked to be a regular file) while planning; hashed and extracted
    /// through this same descriptor, so what is verified is what is extracted.
    file: fs::File,
    /// Archive-relative name, for messages.
    rel: String,
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
    // Opened before the lock, non-blocking, and only a directory or a regular file is
    // kept: a FIFO or a device given as PATH is refused, never waited on with the store
    // locked.
    let input = open_input(path)?;
    let _lock = store.lock()?;
    let tmp = store.tmp_dir()?;
    let res = load_locked(store, path, input, name, max, &tmp);
    // On success the layers have been renamed out of tmp; what is left is scratch.
    let _ = crate::copytree::remove_any(&tmp);
    res
}

/// What `layerctl load` reads: a layout (or unpacked docker save) directory, or an
/// archive file.
enum Input {
    Dir(OwnedFd),
    Archive(fs::File),
}

fn open_input(path: &Path) -> Result<Input> {
    let shown = path.display();
    let cannot = |e: io::Error| {
        err!("{shown} cannot be read ({e}): give an OCI layout directory, an oci-archive or a docker save archive")
    };
    // Looked at through an O_PATH handle first, so that nothing but a directory or a
    // regular file is ever opened (opening a FIFO or a device can block or act); the
    // same inode is then reopened for reading.
    let p = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(cannot)?;
    let st = sys::fstat(p.as_fd()).map_err(cannot)?;
    let is_dir = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => true,
        libc::S_IFREG => false,
        m => {
            return Err(err!(
                "{shown} is {}: give an OCI layout directory, an oci-archive or a docker save archive (a regular file)",
                kind_name(m)
            ))
        }
    };
    let f = sys::reopen(
        p.as_fd(),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(cannot)?;
    Ok(if is_dir {
        Input::Dir(f)
    } else {
        Input::Archive(fs::File::from(f))
    })
}

fn load_locked(
    store: &Store,
    path: &Path,
    input: Input,
    name: Option<&str>,
    max: u64,
    tmp: &Path,
) -> Result<Vec<(String, String)>> {
    let shown = path.display().to_string();
    let mut budget = max;
    let src = match input {
        Input::Dir(dir) => Source {
            dir,
            shown,
            links: HashMap::new(),
        },
        Input::Archive(f) => {
            let root = tmp.join("archive");
            fs::create_dir(&root).ctx(|| format!("creating {}", root.display()))?;
            let pb = progress::spinner("reading archive");
            let links = unpack_archive(f, &root, &shown, &mut budget, &|| pb.inc(1))?;
            pb.finish_and_clear();
            let dir = fs::File::open(&root).ctx(|| format!("opening {}", root.display()))?;
            Source {
                dir: OwnedFd::from(dir),
                shown,
                links,
            }
        }
    };

    // Phase 1: records.
    let mut plans = if src.exists("index.json")? {
        read_oci(&src, max)?
    } else if src.exists("manifest.json")? {
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
            let mut h = oci::HashingWriter::new(io::sink());
            io::copy(&mut &l.file, &mut h)
                .and_then(|_| (&l.file).seek(io::SeekFrom::Start(0)))
                .ctx(|| format!("reading {} ({}) in {}", l.what, l.rel, src.shown))?;
            let (got, n) = (h.digest(), h.count);
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
        let blob_len = l.file.metadata().map(|m| m.len()).unwrap_or(0);
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
    f: impl Read,
    root: &Path,
    shown: &str,
    budget: &mut u64,
    tick: &dyn Fn(),
) -> Result<HashMap<Vec<Vec<u8>>, Vec<u8>>> {
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
    let mut w = LayerWriter::open(root).ctx(|| format!("opening {}", root.display()))?;
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
            // Written through the confined writer like any layer: nothing below a symlink
            // (none is ever made here), nothing outside `root`.
            let path = LayerPath::parse(&raw)
                .map_err(|why| err!("refusing archive member {name} in {shown}: {why}"))?;
            let meta = |mode| Meta {
                mode,
                uid: layerfs::sys::process::geteuid(),
                gid: layerfs::sys::process::getegid(),
                ..Meta::default()
            };
            let refused = |e: layerfs::layers::writer::Refused| {
                err!("refusing archive member {name} in {shown}: {}", e.why)
            };
            match e.header().entry_type() {
                tar::EntryType::Directory => w.mkdir(&path, meta(0o755)).map_err(refused)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    w.file(&path, &meta(0o644), &mut e).map_err(refused)?;
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
    w.finish().map_err(|e| err!("unpacking {shown}: {e}"))?;
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
    let mut r = BufReader::new(progress::Reader::new(&l.file, read));
    let head = r.fill_buf().ctx(|| format!("reading {}", l.what))?.to_vec();
    let inner: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .ctx(|| format!("decompressing {} in {shown}", l.what))?,
        )
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

/// One layer a manifest lists: archive-relative name, the blob digest when the format
/// gives one, and the size its descriptor promises (OCI only).
type LayerRef = (String, Option<String>, Option<u64>);

/// Opens every layer blob now (regular files only, size checked against the descriptor
/// before a byte is read), so that phase 2 hashes and extracts these same descriptors.
fn plan_layers(
    src: &Source,
    cfg: &ImageConfig,
    files: Vec<LayerRef>,
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
    for (i, ((rel, digest, want), d)) in files.into_iter().zip(&cfg.rootfs.diff_ids).enumerate() {
        crate::store::hex_of(d).map_err(|e| err!("{what} in {}: bad diff_id: {e}", src.shown))?;
        let lwhat = format!("layer {} of {what}", i + 1);
        let Some((file, size)) = src.open(&rel, &lwhat)? else {
            return Err(match (&digest, want) {
                (Some(dg), Some(_)) => err!(
                    "{lwhat} names blob {dg} ({rel}), which is missing from {}",
                    src.shown
                ),
                _ => err!(
                    "{lwhat} ({rel}) is missing from {}: the archive is incomplete",
                    src.shown
                ),
            });
        };
        if let (Some(dg), Some(w)) = (&digest, want) {
            if w != size {
                return Err(err!(
                    "{lwhat} blob {dg} in {} is {size} bytes but its descriptor says {w}: the archive is damaged or was tampered with",
                    src.shown
                ));
            }
        }
        out.push(LayerSrc {
            file,
            rel,
            blob: digest.map(|dg| (dg, size)),
            diff_id: d.clone(),
            what: lwhat,
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
                oci::blob_rel(&l.digest)?,
                Some(l.digest.clone()),
                Some(l.size),
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
        .for_host()
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
            // Newer docker names layers by digest: check those.
            let digest = l
                .starts_with("blobs/sha256/")
                .then(|| digest_in_name(l))
                .flatten();
            files.push((l.clone(), digest, None));
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
        files.push((blob_file(l)?, Some(l.digest.clone()), Some(l.size)));
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
                let input = open_input(&file)?;
                load_locked(store, &file, input, name, max, &tmp)
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
