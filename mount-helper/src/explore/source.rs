//! Where an explored image comes from: the store (an image name or id), an OCI image
//! layout (a directory or an oci-archive tar), or a docker save archive (a tar or its
//! unpacked directory). Archives are never unpacked: a plain tar is indexed once and its
//! members read in place; the members of a compressed one are found by reading it again.
//! Directories are read through a handle on their root, never following a symlink.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use layerfs::sys;

use super::model::{Image, LayerBuilder, LayerMeta, Tree};
use super::read;
use crate::err;
use crate::error::{Context, Result};
use crate::image::ImageConfig;
use crate::oci::{self, Descriptor, DockerEntry, Index, Manifest};
use crate::store::Store;

/// JSON records (manifests, configs, indexes) bigger than this are refused.
const MAX_RECORD: u64 = 64 << 20;

/// The image `arg` names: a store image if it resolves there, else a path.
pub fn open(store: &Store, arg: &str) -> Result<Image> {
    match store.resolve_image(arg) {
        Ok(id) => from_store(store, arg, &id),
        Err(e) => {
            if Path::new(arg).symlink_metadata().is_ok() {
                from_path(Path::new(arg))
            } else {
                Err(err!(
                    "{e}; nor is {arg:?} a path (give an image in the store, an OCI layout directory or archive, or a docker save archive)"
                ))
            }
        }
    }
}

fn metas(cfg: &ImageConfig) -> Vec<LayerMeta> {
    cfg.layered_history()
        .into_iter()
        .filter_map(|(h, d)| {
            d.map(|diff_id| LayerMeta {
                diff_id,
                created_by: h.created_by.unwrap_or_default(),
                created: h.created.unwrap_or_default(),
                comment: h.comment.unwrap_or_default(),
            })
        })
        .collect()
}

fn from_store(store: &Store, name: &str, id: &str) -> Result<Image> {
    let cfg = store.read_image(id)?;
    // The directory walk holds one handle per level of depth.
    let _ = layerfs::sys::process::raise_nofile_limit();
    let mut tree = Tree::new();
    let mut layers = Vec::new();
    for m in metas(&cfg) {
        if !store.has_layer(&m.diff_id) {
            return Err(err!(
                "layer {} of {name} is missing from the store: run `layerctl fsck`",
                m.diff_id
            ));
        }
        let dir = store.layer_dir(&m.diff_id)?;
        let mut b = LayerBuilder::new(&mut tree);
        read::store_layer(&dir, &mut b)?;
        layers.push(b.finish(m));
    }
    tree.finish();
    Ok(Image {
        name: name.to_string(),
        id: id.to_string(),
        tree,
        layers,
    })
}

/// Named files of an image directory or archive.
trait Members {
    fn shown(&self) -> &str;
    fn exists(&self, name: &str) -> bool;
    /// Runs `f` on the member's content.
    fn with(&self, name: &str, f: &mut dyn FnMut(&mut dyn Read) -> Result<()>) -> Result<()>;

    fn read(&self, name: &str, what: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.with(name, &mut |r| {
            r.take(MAX_RECORD + 1)
                .read_to_end(&mut out)
                .ctx(|| format!("reading {what} ({name}) in {}", self.shown()))?;
            Ok(())
        })?;
        if out.len() as u64 > MAX_RECORD {
            return Err(err!(
                "{what} ({name}) in {} is over {MAX_RECORD} bytes: not an image record",
                self.shown()
            ));
        }
        Ok(out)
    }
}

struct DirMembers {
    root: OwnedFd,
    shown: String,
}

impl DirMembers {
    fn open(&self, name: &str) -> io::Result<File> {
        // Non-blocking: a FIFO under a blob's name must not hang the open.
        let fd = sys::openat_beneath(
            self.root.as_fd(),
            Path::new(name),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?;
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(File::from(fd))
    }
}

impl Members for DirMembers {
    fn shown(&self) -> &str {
        &self.shown
    }
    fn exists(&self, name: &str) -> bool {
        self.open(name).is_ok()
    }
    fn with(&self, name: &str, f: &mut dyn FnMut(&mut dyn Read) -> Result<()>) -> Result<()> {
        let mut file = self
            .open(name)
            .ctx(|| format!("opening {name} in {}", self.shown))?;
        f(&mut file)
    }
}

/// Where a member of a tar archive is.
enum Member {
    /// Offset of its data and its size.
    Data(u64, u64),
    /// A symlink's target, resolved against the member's directory.
    Link(String),
}

/// What `TarMembers::scan` hands each member to; true stops the scan.
type MemberFn<'a> = dyn FnMut(&str, &mut tar::Entry<'_, Box<dyn Read + '_>>) -> Result<bool> + 'a;

struct TarMembers {
    file: File,
    shown: String,
    /// The whole archive is gzip- or zstd-compressed: members are found by reading again.
    compressed: bool,
    members: HashMap<String, Member>,
}

fn link_of<R: Read>(e: &tar::Entry<'_, R>) -> Option<String> {
    e.link_name_bytes()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
}

fn normal(name: &[u8]) -> Option<String> {
    let comps = super::model::clean_components(name).ok()?;
    let parts: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl TarMembers {
    fn index(file: File, shown: String) -> Result<TarMembers> {
        let mut head = [0u8; 4];
        let n = (&file).read(&mut head).ctx(|| format!("reading {shown}"))?;
        let compressed = head[..n].starts_with(&[0x1f, 0x8b])
            || head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        let mut t = TarMembers {
            file,
            shown,
            compressed,
            members: HashMap::new(),
        };
        let mut members = HashMap::new();
        let mut note =
            |name: &str, ty: tar::EntryType, link: Option<String>, off: u64, size: u64| {
                let m = match ty {
                    tar::EntryType::Symlink => Member::Link(link.unwrap_or_default()),
                    tar::EntryType::Regular | tar::EntryType::Continuous => Member::Data(off, size),
                    _ => return,
                };
                members.insert(name.to_string(), m);
            };
        if compressed {
            t.scan(&mut |name, e| {
                note(name, e.header().entry_type(), link_of(e), 0, e.size());
                Ok(false)
            })?;
        } else {
            // Plain: the index seeks over member data instead of reading it.
            let mut file = &t.file;
            file.seek(SeekFrom::Start(0))
                .ctx(|| format!("reading {}", t.shown))?;
            let mut ar = tar::Archive::new(file);
            let entries = ar
                .entries_with_seek()
                .ctx(|| format!("{} is not a tar archive", t.shown))?;
            for e in entries {
                let e = e.ctx(|| {
                    format!(
                        "{} is not a readable tar archive (or is truncated)",
                        t.shown
                    )
                })?;
                let Some(name) = normal(&e.path_bytes()) else {
                    continue;
                };
                note(
                    &name,
                    e.header().entry_type(),
                    link_of(&e),
                    e.raw_file_position(),
                    e.size(),
                );
            }
        }
        t.members = members;
        Ok(t)
    }

    /// Reads the archive from the start, handing each member to `f` until it returns true.
    fn scan(&self, f: &mut MemberFn<'_>) -> Result<()> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))
            .ctx(|| format!("reading {}", self.shown))?;
        let inner = read::decompress(file, &self.shown)?;
        let mut ar = tar::Archive::new(inner);
        let entries = ar
            .entries()
            .ctx(|| format!("{} is not a tar archive", self.shown))?;
        for e in entries {
            let mut e = e.ctx(|| {
                format!(
                    "{} is not a readable tar archive (or is truncated)",
                    self.shown
                )
            })?;
            let Some(name) = normal(&e.path_bytes()) else {
                continue;
            };
            if f(&name, &mut e)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The member `name` after following symlinks (a bounded number of them).
    fn resolve(&self, name: &str) -> Option<(String, u64, u64)> {
        let mut cur = normal(name.as_bytes())?;
        for _ in 0..16 {
            match self.members.get(&cur)? {
                Member::Data(off, size) => return Some((cur, *off, *size)),
                Member::Link(target) => {
                    if target.starts_with('/') {
                        return None;
                    }
                    let dir = cur.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                    for p in target.split('/') {
                        match p {
                            "" | "." => {}
                            ".." => {
                                parts.pop()?;
                            }
                            _ => parts.push(p),
                        }
                    }
                    cur = parts.join("/");
                }
            }
        }
        None
    }
}

impl Members for TarMembers {
    fn shown(&self) -> &str {
        &self.shown
    }
    fn exists(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }
    fn with(&self, name: &str, f: &mut dyn FnMut(&mut dyn Read) -> Result<()>) -> Result<()> {
        let Some((real, off, size)) = self.resolve(name) else {
            return Err(err!(
                "{name} is missing from {}: the archive is incomplete",
                self.shown
            ));
        };
        if !self.compressed {
            let mut file = &self.file;
            file.seek(SeekFrom::Start(off))
                .ctx(|| format!("reading {name} in {}", self.shown))?;
            let mut r = BufReader::with_capacity(256 * 1024, file.take(size));
            return f(&mut r);
        }
        let mut done = false;
        let mut res = Ok(());
        self.scan(&mut |n, e| {
            if n != real {
                return Ok(false);
            }
            done = true;
            res = f(e);
            Ok(true)
        })?;
        if !done {
            return Err(err!(
                "{name} is missing from {}: the archive is incomplete",
                self.shown
            ));
        }
        res
    }
}

fn from_path(path: &Path) -> Result<Image> {
    let shown = path.display().to_string();
    let cannot = |e: io::Error| {
        err!("{shown} cannot be read ({e}): give an OCI layout directory or archive, or a docker save archive")
    };
    // Non-blocking, so that a FIFO or a device given as PATH is refused below, not waited on.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    let meta = f.metadata().map_err(cannot)?;
    let members: Box<dyn Members> = if meta.is_dir() {
        Box::new(DirMembers {
            root: OwnedFd::from(f),
            shown: shown.clone(),
        })
    } else if meta.is_file() {
        Box::new(TarMembers::index(f, shown.clone())?)
    } else {
        return Err(err!(
            "{shown} is neither a directory nor a regular file: give an OCI layout or a docker save archive"
        ));
    };
    let m = members.as_ref();
    let (cfg, blobs, id) = if m.exists("index.json") {
        read_oci(m)?
    } else if m.exists("manifest.json") {
        read_docker(m)?
    } else {
        return Err(err!(
            "{shown} is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)"
        ));
    };
    let metas = metas(&cfg);
    if metas.len() != blobs.len() {
        return Err(err!(
            "{shown}: the config lists {} layers but the manifest {}",
            metas.len(),
            blobs.len()
        ));
    }
    let mut tree = Tree::new();
    let mut layers = Vec::new();
    for (i, (meta, blob)) in metas.into_iter().zip(blobs).enumerate() {
        let what = format!("layer {} ({blob}) of {shown}", i + 1);
        let mut b = LayerBuilder::new(&mut tree);
        m.with(&blob, &mut |r| {
            let inner = read::decompress(r, &what)?;
            read::tar_layer(inner, &meta.diff_id, &what, &mut b)
        })?;
        layers.push(b.finish(meta));
    }
    tree.finish();
    Ok(Image {
        name: shown,
        id,
        tree,
        layers,
    })
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str, shown: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| err!("{what} in {shown} is not valid: {e}"))
}

fn blob_name(d: &Descriptor) -> Result<String> {
    oci::blob_rel(&d.digest)
}

/// (config, layer member names, image id) of the one image an OCI layout holds.
fn read_oci(m: &dyn Members) -> Result<(ImageConfig, Vec<String>, String)> {
    let shown = m.shown();
    let idx: Index = json(&m.read("index.json", "the index")?, "index.json", shown)?;
    let mut desc = match idx.manifests.as_slice() {
        [one] => one.clone(),
        [] => return Err(err!("{shown} holds no images")),
        many => {
            return Err(err!(
                "{shown} holds {} images; explore reads one: `layerctl load` it and explore the image by name",
                many.len()
            ))
        }
    };
    // Nested indexes (multi-platform images), a bounded number of levels.
    for _ in 0..4 {
        if desc.media_type != oci::MT_INDEX && desc.media_type != oci::MT_DOCKER_LIST {
            break;
        }
        let sub: Index = json(&m.read(&blob_name(&desc)?, "an index")?, "an index", shown)?;
        let arch = crate::image::host_arch();
        desc = sub
            .for_host()
            .cloned()
            .ok_or_else(|| err!("{shown} has no image for linux/{arch}"))?;
    }
    let man: Manifest = json(
        &m.read(&blob_name(&desc)?, "the manifest")?,
        "the manifest",
        shown,
    )?;
    let cfg: ImageConfig = json(
        &m.read(&blob_name(&man.config)?, "the config")?,
        "the config",
        shown,
    )?;
    let blobs = man
        .layers
        .iter()
        .map(blob_name)
        .collect::<Result<Vec<_>>>()?;
    Ok((cfg, blobs, man.config.digest.clone()))
}

/// (config, layer member names, image id) of the one image a docker save archive holds.
fn read_docker(m: &dyn Members) -> Result<(ImageConfig, Vec<String>, String)> {
    let shown = m.shown();
    let bytes = m.read("manifest.json", "manifest.json")?;
    let entries: Vec<DockerEntry> = json(&bytes, "manifest.json", shown)?;
    let e = match entries.as_slice() {
        [one] => one,
        [] => return Err(err!("{shown} holds no images")),
        many => {
            return Err(err!(
                "{shown} holds {} images; explore reads one: `layerctl load` it and explore the image by name",
                many.len()
            ))
        }
    };
    let cbytes = m.read(&e.config, "the config")?;
    let cfg: ImageConfig = json(&cbytes, "the config", shown)?;
    Ok((cfg, e.layers.clone(), crate::store::sha256_id(&cbytes)))
}
