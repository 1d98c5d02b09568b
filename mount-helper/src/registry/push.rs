//! `layerctl push IMAGE [DEST]`: each layer's canonical tar compressed deterministically
//! (as `save` writes it, so the digests are the same every time), asked for with HEAD
//! first and uploaded only when the registry lacks it; then the stored config itself (its
//! digest is the image id) and an OCI manifest. The store lock is held throughout, as
//! `save` holds it, so gc cannot take a layer away mid-push.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::client::{body_text, Body, Client, Options};
use super::{short, Remote};
use crate::err;
use crate::error::{Context, Result};
use crate::oci::{self, Descriptor, Manifest};
use crate::output::out;
use crate::progress;
use crate::store::{hex_of, sha256_id, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
    fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => oci::MT_LAYER_GZIP,
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => oci::MT_LAYER_TAR,
        }
    }
}

pub struct Opts {
    pub compression: Compression,
    pub reg: Options,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct BlobInfo {
    digest: String,
    size: u64,
}

/// Compresses layer `diff_id` into a file in `dir`; returns the file and its digest/size.
fn compress(
    store: &Store,
    diff_id: &str,
    how: Compression,
    dir: &Path,
) -> Result<(PathBuf, BlobInfo)> {
    let layer = store.layer_dir(diff_id)?;
    let p = dir.join(hex_of(diff_id)?);
    let f = fs::File::create(&p).ctx(|| format!("creating {}", p.display()))?;
    let len = store.layer_record(diff_id).map(|r| r.size).unwrap_or(0);
    let pb = progress::bytes(&format!("{}: Compressing", short(diff_id)), len);
    let mut hw = oci::HashingWriter::new(BufWriter::new(f));
    let (got, _) = match how {
        Compression::None => {
            crate::tarfile::write_tar(&layer, progress::Writer::new(&mut hw, &pb), &|| {})?
        }
        Compression::Gzip => {
            let mut gz = oci::gzip_writer(&mut hw);
            let r = crate::tarfile::write_tar(&layer, progress::Writer::new(&mut gz, &pb), &|| {})?;
            gz.finish().ctx(|| format!("compressing layer {diff_id}"))?;
            r
        }
        Compression::Zstd => {
            // Level 3, one thread, no checksum: the bytes depend only on the input (and
            // the zstd library version).
            let mut z = zstd::stream::write::Encoder::new(&mut hw, 3)
                .ctx(|| format!("compressing layer {diff_id}"))?;
            let r = crate::tarfile::write_tar(&layer, progress::Writer::new(&mut z, &pb), &|| {})?;
            z.finish().ctx(|| format!("compressing layer {diff_id}"))?;
            r
        }
    };
    hw.flush().ctx(|| format!("writing {}", p.display()))?;
    pb.finish_and_clear();
    if got != diff_id {
        return Err(err!(
            "layer {diff_id} in the store is damaged (its content now hashes to {got}): run `layerctl fsck`"
        ));
    }
    let info = BlobInfo {
        digest: hw.digest(),
        size: hw.count,
    };
    Ok((p, info))
}

fn exists(c: &Client, digest: &str) -> Result<bool> {
    let r = c.send(
        "HEAD",
        &c.repo_path(&format!("blobs/{digest}")),
        &[],
        Body::Empty,
    )?;
    match r.status() {
        200 => Ok(true),
        404 => Ok(false),
        s => Err(status_err(c, s, &format!("HEAD of blob {digest}"), r)),
    }
}

fn status_err(c: &Client, s: u16, what: &str, r: ureq::Response) -> crate::error::Error {
    let rm = &c.remote;
    match s {
        401 => c.unauthorized(),
        403 => err!(
            "registry {} denied pushing to {} ({what}): check that your account may push there (`layerctl login {}`)",
            rm.registry,
            rm.full_name(),
            rm.registry
        ),
        _ => err!(
            "registry {} answered {s} to {what} for {}: {}",
            rm.registry,
            rm.full_name(),
            body_text(r)
        ),
    }
}

/// A monolithic upload: POST for a session, PUT the bytes with their digest.
fn upload(c: &Client, digest: &str, body: Body) -> Result<()> {
    let r = c.send(
        "POST",
        &c.repo_path("blobs/uploads/"),
        &[("Content-Length", "0")],
        Body::Empty,
    )?;
    if r.status() != 202 {
        return Err(status_err(c, r.status(), "starting an upload", r));
    }
    let loc = r.header("Location").map(str::to_string).ok_or_else(|| {
        err!(
            "registry {} started an upload without a Location",
            c.remote.registry
        )
    })?;
    let _ = body_text(r);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let url = c.url(&format!("{loc}{sep}digest={}", digest.replace(':', "%3A")));
    let r = c.send(
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        body,
    )?;
    match r.status() {
        201 | 204 => Ok(()),
        s => Err(status_err(c, s, &format!("uploading blob {digest}"), r)),
    }
}

/// `layerctl push IMAGE [DEST]`: returns the manifest digest.
pub fn push(store: &Store, src: &str, dest: Option<&str>, o: &Opts) -> Result<String> {
    let target = dest.unwrap_or(src);
    let remote = Remote::parse(target)?;
    if remote.digest.is_some() {
        return Err(err!(
            "cannot push to {target}: a digest names content; give DEST as NAME[:TAG]"
        ));
    }
    let tag = remote.tag.clone().unwrap_or_else(|| "latest".to_string());
    let _lock = store.lock()?;
    let id = store.resolve_image(src)?;
    let path = store
        .root
        .join("images")
        .join(format!("{}.json", hex_of(&id)?));
    let config =
        fs::read(&path).ctx(|| format!("image record {id} is unreadable; run `layerctl fsck`"))?;
    if sha256_id(&config) != id {
        return Err(err!(
            "image record {id} does not match its id (damaged): run `layerctl fsck` and re-import it"
        ));
    }
    let cfg = store.read_image(&id)?;
    for d in &cfg.rootfs.diff_ids {
        if !store.has_layer(d) {
            return Err(err!(
                "image {src} needs layer {d}, which is missing from the store: run `layerctl fsck`"
            ));
        }
    }
    let c = Client::connect(&remote, true, &o.reg)?;
    out(format!(
        "The push refers to repository [{}]",
        remote.full_name()
    ));
    let tmp = store.tmp_dir()?;
    let res = (|| -> Result<String> {
        let mut cache: BTreeMap<String, BlobInfo> = store.blob_map("compressed.json");
        let cache0 = cache.clone();
        let mut done: BTreeMap<String, Descriptor> = BTreeMap::new();
        let mut layers = Vec::new();
        for d in &cfg.rootfs.diff_ids {
            if let Some(desc) = done.get(d) {
                layers.push(desc.clone());
                continue;
            }
            let key = format!("{} {d}", o.compression.name());
            let mut file = None;
            let mut info = match cache.get(&key) {
                Some(i) => i.clone(),
                None => {
                    let (p, i) = compress(store, d, o.compression, &tmp)?;
                    file = Some(p);
                    cache.insert(key.clone(), i.clone());
                    i
                }
            };
            if exists(&c, &info.digest)? {
                out(format!("{}: Layer already exists", short(&info.digest)));
            } else {
                let p = match file {
                    Some(p) => p,
                    None => {
                        let (p, again) = compress(store, d, o.compression, &tmp)?;
                        if again != info {
                            cache.insert(key.clone(), again.clone());
                            info = again;
                        }
                        p
                    }
                };
                out(format!("{}: Pushing", short(&info.digest)));
                upload(&c, &info.digest, Body::File(&p, info.size))?;
                let _ = fs::remove_file(&p);
                out(format!("{}: Pushed", short(&info.digest)));
            }
            let desc = Descriptor {
                media_type: o.compression.media_type().to_string(),
                digest: info.digest.clone(),
                size: info.size,
                platform: None,
                annotations: None,
            };
            done.insert(d.clone(), desc.clone());
            layers.push(desc);
        }
        if cache != cache0 {
            store.write_blob_map("compressed.json", &cache)?;
        }
        if !exists(&c, &id)? {
            upload(&c, &id, Body::Bytes(&config))?;
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MT_MANIFEST.to_string()),
            config: Descriptor {
                media_type: oci::MT_CONFIG.to_string(),
                digest: id.clone(),
                size: config.len() as u64,
                platform: None,
                annotations: None,
            },
            layers,
            annotations: None,
        };
        let mbytes = oci::to_json(&manifest, "manifest")?;
        let r = c.send(
            "PUT",
            &c.repo_path(&format!("manifests/{tag}")),
            &[("Content-Type", oci::MT_MANIFEST)],
            Body::Bytes(&mbytes),
        )?;
        match r.status() {
            201 | 200 | 204 => {}
            s => return Err(status_err(&c, s, "putting the manifest", r)),
        }
        let digest = sha256_id(&mbytes);
        out(format!("{tag}: digest: {digest} size: {}", mbytes.len()));
        Ok(digest)
    })();
    let _ = crate::copytree::remove_any(&tmp);
    res
}
