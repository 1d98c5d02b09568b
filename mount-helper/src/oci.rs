//! The OCI image-layout and image-manifest shapes `save` writes and `load` reads, the media
//! types involved, and the byte-level helpers both share: hashing readers and writers,
//! deterministic gzip, and a deterministic tar of a staging directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::err;
use crate::error::{Context, Result};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker's registry formats, which `skopeo copy` may keep when it writes a layout.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The tag (or full reference) of a manifest in index.json; skopeo and umoci select by it.
pub const ANNOT_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full `name:tag`, as containerd and podman write it next to the bare tag.
pub const ANNOT_IMAGE_NAME: &str = "io.containerd.image.name";

pub const LAYOUT_FILE: &str = "oci-layout";
pub const LAYOUT_VERSION: &str = "1.0.0";

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Index {
    /// The entry for this host (linux and its architecture), or the only entry when there
    /// is one: the image `load` and `explore` read from a multi-platform layout.
    pub fn for_host(&self) -> Option<&Descriptor> {
        let arch = crate::image::host_arch();
        self.manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .or(if self.manifests.len() == 1 {
                self.manifests.first()
            } else {
                None
            })
    }
}

/// One entry of a `docker save` archive's manifest.json.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DockerEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// A writer that hashes and counts what passes through (blob digest and size in one pass).
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    pub count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through, and fails once more than `limit`
/// bytes have come out: the backstop against decompression bombs whose tar headers alone
/// (millions of empty entries) would never trip a per-entry size check.
pub struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
    pub count: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }
    pub fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!(
                "more than the --max-size limit of {} bytes",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// A gzip stream whose bytes depend only on its input: no file name, mtime 0, OS "unknown"
/// and a fixed level, so saving the same image twice gives the same blob digests.
pub fn gzip_writer<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(w, flate2::Compression::new(6))
}

/// sha256 digest and size of a file.
pub fn hash_file(p: &Path) -> Result<(String, u64)> {
    let f = fs::File::open(p).ctx(|| format!("opening {}", p.display()))?;
    // A big layer blob takes a while to hash: bytes, rate and ETA while it does.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let name: String = p
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(12).collect())
        .unwrap_or_default();
    let pb = crate::progress::bytes(&format!("hashing {name}"), len);
    let mut h = HashingWriter::new(io::sink());
    io::copy(&mut crate::progress::Reader::new(f, &pb), &mut h)
        .ctx(|| format!("reading {}", p.display()))?;
    pb.finish_and_clear();
    Ok((h.digest(), h.count))
}

/// Splits `sha256:HEX` into the blob path below a layout root, refusing any other
/// algorithm or a malformed hex (which could otherwise name a path outside blobs/).
pub fn blob_rel(digest: &str) -> Result<String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| err!("{digest:?} is not a digest (expected sha256:<hex>)"))?;
    if alg != "sha256" {
        return Err(err!(
            "digest {digest} uses {alg}; layerctl verifies sha256 digests only (re-save the image with sha256)"
        ));
    }
    crate::store::hex_of(digest)?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Writes the directory `dir` as a tar to `w` with fixed metadata (mode 0644/0755, owner 0,
/// mtime 0, names sorted), so an archive of the same layout is the same bytes every time.
/// The staging tree holds only directories and regular files.
pub fn tar_dir<W: Write>(dir: &Path, w: W) -> Result<W> {
    let mut b = tar::Builder::new(w);
    fn walk<W: Write>(b: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        for e in fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
            let e = e.ctx(|| format!("reading {}", dir.display()))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let m = fs::symlink_metadata(&p).ctx(|| format!("stat {}", p.display()))?;
            let rel = format!("{prefix}{n}");
            let mut h = tar::Header::new_ustar();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if m.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                let name = format!("{rel}/");
                b.append_data(&mut h, &name, io::empty())
                    .ctx(|| format!("writing {name} into the archive"))?;
                walk(b, &p, &name)?;
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(m.len());
                let f = fs::File::open(&p).ctx(|| format!("opening {}", p.display()))?;
                b.append_data(&mut h, &rel, f)
                    .ctx(|| format!("writing {rel} into the archive"))?;
            }
        }
        Ok(())
    }
    walk(&mut b, dir, "")?;
    b.into_inner().ctx(|| "finishing the archive".to_string())
}

/// JSON bytes of a record in field order (serde structs), so manifests are deterministic.
pub fn to_json<T: Serialize>(v: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| err!("encoding {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_deterministic() {
        let mk = || {
            let mut g = gzip_writer(Vec::new());
            g.write_all(b"hello layer").unwrap();
            g.finish().unwrap()
        };
        let a = mk();
        assert_eq!(a, mk());
        // Header: magic, deflate, no flags, mtime 0, OS unknown.
        assert_eq!(&a[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[9], 255);
    }

    #[test]
    fn blob_paths() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            blob_rel(&d).unwrap(),
            format!("blobs/sha256/{}", "a".repeat(64))
        );
        assert!(blob_rel("sha512:abc").is_err());
        assert!(blob_rel("sha256:../../etc/passwd").is_err());
        assert!(blob_rel("nothing").is_err());
    }

    #[test]
    fn reader_limit() {
        let mut r = HashingReader::new(&b"0123456789"[..], 5);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
    }
}
