//! `layerctl pull REF`: manifest (or index, then this platform's manifest) and config
//! first, checked against their digests; then the layer blobs the store lacks, several at
//! once, each streamed into `ROOT/blobs/partial/HEX` with its sha256 computed as it is
//! written and continued with a Range request after an interruption; then, under the
//! store lock, each layer extracted through the confined writer and checked against the
//! config's diff_id. Layers, image and name are stored only once everything verified.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::client::{body_text, Body, Client, Options};
use super::{short, Remote};
use crate::err;
use crate::error::{Context, Result};
use crate::image::ImageConfig;
use crate::oci::{self, Descriptor, Index, Manifest};
use crate::output::out;
use crate::progress;
use crate::store::{hex_of, sha256_id, Store};

/// Every manifest shape layerctl reads, as the Accept header says it.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests, indexes and configs are a few kB; a bigger one is refused unread.
const RECORD_MAX: u64 = 4 << 20;

pub struct Opts {
    /// `os/arch[/variant]`; the host's by default.
    pub platform: Option<String>,
    pub jobs: usize,
    pub reg: Options,
    /// Bound on each layer's uncompressed tar stream.
    pub max: u64,
}

/// A manifest or index as fetched: its bytes, media type and digest.
struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
    digest: String,
}

/// What the pull did, for its last lines and for tests.
pub struct Pulled {
    pub name: String,
    pub id: String,
    pub digest: String,
    pub fresh: bool,
}

fn say(s: String) {
    out(s);
}

/// The one-line error for a failed status on `what` of `remote`.
fn refused(c: &Client, status: u16, what: &str, resp: ureq::Response) -> crate::error::Error {
    let r = &c.remote;
    match status {
        401 => c.unauthorized(),
        403 => err!(
            "registry {} denied access to {} ({what}): check that the repository exists and your account may pull it (`layerctl login {}`)",
            r.registry,
            r.full_name(),
            r.registry
        ),
        _ => err!(
            "registry {} answered {status} for {what} of {}: {}",
            r.registry,
            r.shown(),
            body_text(resp)
        ),
    }
}

fn read_bounded(resp: ureq::Response, what: &str, shown: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    resp.into_reader()
        .take(RECORD_MAX + 1)
        .read_to_end(&mut buf)
        .ctx(|| format!("reading {what} of {shown}"))?;
    if buf.len() as u64 > RECORD_MAX {
        return Err(err!(
            "{what} of {shown} is more than 4 MiB: not an image record, refusing it"
        ));
    }
    Ok(buf)
}

fn fetch_manifest(c: &Client, reference: &str) -> Result<Fetched> {
    let shown = c.remote.shown();
    let resp = c.send(
        "GET",
        &c.repo_path(&format!("manifests/{reference}")),
        &[("Accept", ACCEPT)],
        Body::Empty,
    )?;
    match resp.status() {
        200 => {}
        404 => {
            return Err(if reference.starts_with("sha256:") {
                err!(
                    "{shown}: manifest {reference} is not in {} on {} (check the digest)",
                    c.remote.repo,
                    c.remote.registry
                )
            } else {
                err!(
                    "{shown}: no such image (tag {reference:?} of {} is not on {}): check the name and tag",
                    c.remote.repo,
                    c.remote.registry
                )
            })
        }
        s => return Err(refused(c, s, "the manifest", resp)),
    }
    let ct = resp
        .header("Content-Type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let bytes = read_bounded(resp, "the manifest", &shown)?;
    let digest = sha256_id(&bytes);
    if reference.starts_with("sha256:") && digest != reference {
        return Err(err!(
            "{shown}: the registry sent a manifest that hashes to {digest}, not the {reference} asked for: refusing it"
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| err!("the manifest of {shown} is not JSON: {e}"))?;
    let media_type = v["mediaType"].as_str().map(str::to_string).unwrap_or(ct);
    if v["schemaVersion"] == 1
        || media_type.starts_with("application/vnd.docker.distribution.manifest.v1+")
    {
        return Err(err!(
            "{shown} is a docker schema 1 image, which layerctl does not read: convert it with `skopeo copy` to schema 2 or OCI"
        ));
    }
    Ok(Fetched {
        bytes,
        media_type,
        digest,
    })
}

/// The entry of an index for `platform` (os/arch[/variant]), else the host's.
fn pick(idx: &Index, platform: Option<&str>, shown: &str) -> Result<Descriptor> {
    let want: Vec<String> = match platform {
        Some(p) => p.split('/').map(str::to_string).collect(),
        None => vec!["linux".to_string(), crate::image::host_arch().to_string()],
    };
    if want.len() < 2 || want.len() > 3 || want.iter().any(|w| w.is_empty()) {
        return Err(err!(
            "--platform {:?} is not OS/ARCH[/VARIANT] (e.g. linux/arm64/v8)",
            platform.unwrap_or_default()
        ));
    }
    let hit = idx.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want[0]
                && p.architecture == want[1]
                && want
                    .get(2)
                    .is_none_or(|v| p.variant.as_deref() == Some(v.as_str()))
        })
    });
    match hit {
        Some(d) => Ok(d.clone()),
        None => {
            let have: Vec<String> = idx
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            Err(err!(
                "{shown} has no image for {}: it has {}; pick one with --platform",
                want.join("/"),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ))
        }
    }
}

fn is_index(f: &Fetched) -> bool {
    f.media_type == oci::MT_INDEX || f.media_type == oci::MT_DOCKER_LIST
}

/// A small blob (the config), read whole and checked against its descriptor.
fn fetch_record(c: &Client, d: &Descriptor, what: &str) -> Result<Vec<u8>> {
    hex_of(&d.digest)?;
    let shown = c.remote.shown();
    if d.size > RECORD_MAX {
        return Err(err!(
            "{what} of {shown} is {} bytes by its descriptor, more than 4 MiB: refusing it",
            d.size
        ));
    }
    let resp = c.send(
        "GET",
        &c.repo_path(&format!("blobs/{}", d.digest)),
        &[],
        Body::Empty,
    )?;
    match resp.status() {
        200 => {}
        404 => {
            return Err(err!(
                "{shown}: {what} blob {} is missing from the registry (the image there is incomplete: push it again)",
                d.digest
            ))
        }
        s => return Err(refused(c, s, what, resp)),
    }
    let bytes = read_bounded(resp, what, &shown)?;
    let got = sha256_id(&bytes);
    if got != d.digest || bytes.len() as u64 != d.size {
        return Err(err!(
            "{shown}: {what} blob {} from the registry hashes to {got} ({} bytes, descriptor says {}): refusing damaged content",
            d.digest,
            bytes.len(),
            d.size
        ));
    }
    Ok(bytes)
}

/// A blob fetched and verified: its file, and the open handle whose flock keeps gc off
/// it until this pull ends.
struct Blob {
    path: PathBuf,
    file: fs::File,
}

fn flock_wait(f: &fs::File) -> Result<()> {
    while !crate::sys::flock_try_exclusive(f).ctx(|| "locking a partial blob".to_string())? {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Fetches blob `d` into ROOT/blobs, continuing what an earlier pull left in
/// blobs/partial, retrying dropped streams from where they stopped.
fn download(
    store: &Store,
    c: &Client,
    d: &Descriptor,
    retries: u32,
    stop: &AtomicBool,
) -> Result<Blob> {
    let hex = hex_of(&d.digest)?.to_string();
    let shown = c.remote.shown();
    let done = store.blobs_dir("sha256")?.join(&hex);
    let part = store.blobs_dir("partial")?.join(&hex);
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .ctx(|| format!("opening {}", p.display()))
    };
    let mut f = open(&part)?;
    flock_wait(&f)?;
    // A blob an earlier pull verified (and was killed before storing its layer).
    if let Ok(g) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&done)
    {
        flock_wait(&g)?;
        if g.metadata().map(|m| m.len()).unwrap_or(0) == d.size {
            if f.metadata().map(|m| m.len()).unwrap_or(1) == 0 {
                let _ = fs::remove_file(&part);
            }
            return Ok(Blob {
                path: done,
                file: g,
            });
        }
    }
    let mut h = Sha256::new();
    let mut off = f
        .metadata()
        .ctx(|| format!("stat {}", part.display()))?
        .len();
    if off > d.size {
        f.set_len(0)
            .ctx(|| format!("truncating {}", part.display()))?;
        off = 0;
    }
    // Hash what is kept, so that the digest covers every byte once more bytes come.
    if off > 0 {
        f.seek(io::SeekFrom::Start(0))
            .ctx(|| format!("reading {}", part.display()))?;
        let n = io::copy(&mut (&f).take(off), &mut HashInto(&mut h))
            .ctx(|| format!("reading {}", part.display()))?;
        off = n;
    }
    f.seek(io::SeekFrom::Start(off))
        .ctx(|| format!("seeking {}", part.display()))?;
    let pb = progress::bytes(&format!("{}: Downloading", short(&d.digest)), d.size);
    pb.set_position(off);
    let path = c.repo_path(&format!("blobs/{}", d.digest));
    let mut fails = 0u32;
    let mut buf = vec![0u8; 256 << 10];
    while off < d.size {
        if stop.load(Ordering::Relaxed) {
            return Err(err!("stopped"));
        }
        let range = format!("bytes={off}-");
        let hdrs: Vec<(&str, &str)> = if off > 0 {
            vec![("Range", range.as_str())]
        } else {
            vec![]
        };
        let resp = c.send("GET", &path, &hdrs, Body::Empty)?;
        match resp.status() {
            200 => {
                if off > 0 {
                    // No range support: start over.
                    f.set_len(0).ctx(|| format!("truncating {}", part.display()))?;
                    f.seek(io::SeekFrom::Start(0))
                        .ctx(|| format!("seeking {}", part.display()))?;
                    h = Sha256::new();
                    off = 0;
                    pb.set_position(0);
                }
            }
            206 => {
                let start = resp
                    .header("Content-Range")
                    .and_then(|v| v.trim().strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(off) {
                    return Err(err!(
                        "{shown}: the registry answered a range request for blob {} from byte {off} with {:?}: refusing it",
                        d.digest,
                        resp.header("Content-Range")
                    ));
                }
            }
            404 => {
                return Err(err!(
                    "{shown}: layer blob {} is missing from the registry (the image there is incomplete: push it again)",
                    d.digest
                ))
            }
            416 if fails < retries => {
                f.set_len(0).ctx(|| format!("truncating {}", part.display()))?;
                f.seek(io::SeekFrom::Start(0))
                    .ctx(|| format!("seeking {}", part.display()))?;
                h = Sha256::new();
                off = 0;
                fails += 1;
                continue;
            }
            s => return Err(refused(c, s, &format!("layer blob {}", d.digest), resp)),
        }
        let mut r = resp.into_reader();
        let mut progressed = false;
        let broke = loop {
            match r.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    if off + n as u64 > d.size {
                        let _ = f.set_len(0);
                        return Err(err!(
                            "{shown}: layer blob {} is longer than the {} bytes its descriptor says: refusing it",
                            d.digest,
                            d.size
                        ));
                    }
                    f.write_all(&buf[..n])
                        .ctx(|| format!("writing {}", part.display()))?;
                    h.update(&buf[..n]);
                    off += n as u64;
                    pb.inc(n as u64);
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        if off < d.size {
            if progressed {
                fails = 0;
            }
            fails += 1;
            if fails > retries {
                return Err(err!(
                    "{shown}: fetching layer blob {} stopped at byte {off} of {} ({}) after {retries} retries: pull again to continue from there",
                    d.digest,
                    d.size,
                    broke.unwrap_or_else(|| "the connection closed early".to_string())
                ));
            }
            std::thread::sleep(Duration::from_millis((250u64 << fails.min(5)).min(8000)));
        }
    }
    pb.finish_and_clear();
    let got = format!("sha256:{:x}", h.finalize());
    if got != d.digest {
        let _ = fs::remove_file(&part);
        return Err(err!(
            "{shown}: layer blob {} from the registry hashes to {got}: refusing damaged content (the partial blob is dropped; pull again)",
            d.digest
        ));
    }
    f.sync_all().ctx(|| format!("syncing {}", part.display()))?;
    fs::rename(&part, &done).ctx(|| format!("moving {} into place", part.display()))?;
    Ok(Blob {
        path: done,
        file: f,
    })
}

struct HashInto<'a>(&'a mut Sha256);

impl Write for HashInto<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Extracts a fetched layer blob (gzip, zstd or plain tar, told by its first bytes) into
/// `diff`, checking the uncompressed stream against `diff_id`.
fn extract(blob: &Blob, diff: &Path, diff_id: &str, max: u64, what: &str) -> Result<()> {
    let f = blob
        .file
        .try_clone()
        .ctx(|| format!("reading {}", blob.path.display()))?;
    let mut f = f;
    f.seek(io::SeekFrom::Start(0))
        .ctx(|| format!("reading {}", blob.path.display()))?;
    let mut r = BufReader::with_capacity(256 << 10, f);
    let head = r
        .fill_buf()
        .ctx(|| format!("reading {}", blob.path.display()))?
        .to_vec();
    let inner: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r).ctx(|| format!("decompressing {what}"))?,
        )
    } else {
        Box::new(r)
    };
    let mut hr = oci::HashingReader::new(inner, max);
    crate::extract::extract_limited(&mut hr, diff, what, &|| {}, max)?;
    io::copy(&mut hr, &mut io::sink()).ctx(|| format!("reading {what}"))?;
    let got = hr.digest();
    if got != diff_id {
        return Err(err!(
            "{what}: uncompressed content hashes to {got} but the image config says {diff_id}: the image in the registry is damaged"
        ));
    }
    Ok(())
}

/// `layerctl pull REF`.
pub fn pull(store: &Store, reference: &str, o: &Opts) -> Result<Pulled> {
    let remote = Remote::parse(reference)?;
    let name = remote.local_name();
    crate::store::parse_ref(&name)?;
    let shown = remote.shown();
    let c = Client::connect(&remote, false, &o.reg)?;
    say(format!(
        "{}: Pulling from {}",
        remote.tag.as_deref().unwrap_or(remote.reference()),
        remote.repo
    ));
    let top = fetch_manifest(&c, remote.reference())?;
    let m = if is_index(&top) {
        let idx: Index = serde_json::from_slice(&top.bytes)
            .map_err(|e| err!("the index of {shown} is not an image index: {e}"))?;
        let d = pick(&idx, o.platform.as_deref(), &shown)?;
        let f = fetch_manifest(&c, &d.digest)?;
        if is_index(&f) {
            return Err(err!(
                "{shown}: the index entry for this platform is another index: layerctl follows one level"
            ));
        }
        f
    } else {
        top_clone(&top)
    };
    let man: Manifest = serde_json::from_slice(&m.bytes)
        .map_err(|e| err!("the manifest of {shown} is not an image manifest: {e}"))?;
    let cbytes = fetch_record(&c, &man.config, "config")?;
    let mut cfg: ImageConfig = serde_json::from_slice(&cbytes)
        .map_err(|e| err!("the config of {shown} is not an image config: {e}"))?;
    if cfg.rootfs.diff_ids.len() != man.layers.len() {
        return Err(err!(
            "{shown}: the config lists {} diff_ids but the manifest {} layers: the image in the registry is malformed",
            cfg.rootfs.diff_ids.len(),
            man.layers.len()
        ));
    }
    for (l, d) in man.layers.iter().zip(&cfg.rootfs.diff_ids) {
        hex_of(&l.digest).map_err(|e| err!("{shown}: layer descriptor: {e}"))?;
        hex_of(d).map_err(|e| err!("{shown}: config diff_id: {e}"))?;
    }

    // Which layers the store has; the rest, once per blob.
    let mut canon: Vec<Option<String>> = Vec::new();
    let mut todo: Vec<Descriptor> = Vec::new();
    for (l, d) in man.layers.iter().zip(&cfg.rootfs.diff_ids) {
        let have = store.layer_for(d);
        if have.is_some() {
            say(format!("{}: Already exists", short(&l.digest)));
        } else if !todo.iter().any(|t| t.digest == l.digest) {
            say(format!("{}: Pulling fs layer", short(&l.digest)));
            todo.push(l.clone());
        }
        canon.push(have);
    }

    let blobs = fetch_all(store, &c, &todo, o)?;

    // Store: extract and check every layer, then move them in, then image, then name.
    let _lock = store.lock()?;
    let tmp = store.tmp_dir()?;
    let res = (|| -> Result<Pulled> {
        let mut fresh_layers: BTreeMap<String, (PathBuf, String, u64)> = BTreeMap::new();
        for (i, (l, d)) in man.layers.iter().zip(&cfg.rootfs.diff_ids).enumerate() {
            if canon[i].is_some() || fresh_layers.contains_key(d) {
                continue;
            }
            let blob = blobs
                .get(&l.digest)
                .ok_or_else(|| err!("internal: blob {} was not fetched", l.digest))?;
            let dir = tmp.join(format!("layer-{i}"));
            let diff = dir.join("diff");
            fs::create_dir_all(&diff).ctx(|| format!("creating {}", diff.display()))?;
            let what = format!("layer {} ({}) of {shown}", i + 1, short(&l.digest));
            extract(blob, &diff, d, o.max, &what)?;
            let pb = progress::spinner(&format!("{}: hashing", short(&l.digest)));
            let (id, size) = crate::tarfile::digest(&diff, &|| pb.inc(1))?;
            pb.finish_and_clear();
            say(format!("{}: Pull complete", short(&l.digest)));
            fresh_layers.insert(d.clone(), (dir, id, size));
        }
        let mut aliases: BTreeMap<String, String> = store.blob_map("aliases.json");
        for (d, (dir, id, size)) in &fresh_layers {
            store.insert_layer(dir, id, *size)?;
            if d != id {
                aliases.insert(d.clone(), id.clone());
            }
        }
        let ids: Vec<String> = cfg
            .rootfs
            .diff_ids
            .iter()
            .enumerate()
            .map(|(i, d)| {
                canon[i]
                    .clone()
                    .or_else(|| fresh_layers.get(d).map(|x| x.1.clone()))
                    .unwrap_or_else(|| d.clone())
            })
            .collect();
        let same = ids == cfg.rootfs.diff_ids;
        cfg.rootfs.diff_ids = ids;
        // Kept byte for byte when its layers are stored under its own diff_ids, so the
        // id is the registry's config digest (and a push sends the same config back).
        let id = if same {
            store.write_image_bytes(&cbytes)?
        } else {
            store.write_image(&cfg)?
        };
        if aliases.len() > store.blob_map::<String>("aliases.json").len() {
            store.write_blob_map("aliases.json", &aliases)?;
        }
        let before = store.refs()?.get(&name).cloned();
        crate::images::tag(store, &name, &id)?;
        for b in blobs.values() {
            let _ = fs::remove_file(&b.path);
        }
        Ok(Pulled {
            fresh: before.as_deref() != Some(id.as_str()),
            name: name.clone(),
            id,
            digest: top.digest.clone(),
        })
    })();
    let _ = crate::copytree::remove_any(&tmp);
    let p = res?;
    say(format!("Digest: {}", p.digest));
    if p.fresh {
        say(format!("Status: Downloaded newer image for {}", p.name));
    } else {
        say(format!("Status: Image is up to date for {}", p.name));
    }
    say(shown);
    Ok(p)
}

fn top_clone(f: &Fetched) -> Fetched {
    Fetched {
        bytes: f.bytes.clone(),
        media_type: f.media_type.clone(),
        digest: f.digest.clone(),
    }
}

/// Fetches `todo` with `o.jobs` threads; the first failure stops the others (their
/// partial blobs stay for the next pull).
fn fetch_all(
    store: &Store,
    c: &Client,
    todo: &[Descriptor],
    o: &Opts,
) -> Result<BTreeMap<String, Blob>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(String, Result<Blob>)>> = Mutex::new(Vec::new());
    let jobs = o.jobs.clamp(1, 64).min(todo.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = todo.get(i) else { break };
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = download(store, c, d, o.reg.retries, &stop);
                match &r {
                    Ok(_) => {
                        say(format!("{}: Verifying Checksum", short(&d.digest)));
                        say(format!("{}: Download complete", short(&d.digest)));
                    }
                    Err(_) => stop.store(true, Ordering::Relaxed),
                }
                if let Ok(mut g) = results.lock() {
                    g.push((d.digest.clone(), r));
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| err!("a download thread panicked"))?;
    let mut out = BTreeMap::new();
    let mut first_err = None;
    for (d, r) in results {
        match r {
            Ok(b) => {
                out.insert(d, b);
            }
            Err(e) if e.to_string() == "stopped" => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(out)
}
