//! `layerctl save`: images out of the store as a `docker save` archive (the default, as
//! in docker and podman), an OCI image layout (a directory, or a tar: oci-archive), or a
//! `dir:`-transport directory (docker-dir, what `podman save --format docker-dir` writes).
//! Without `-o` (or with `-o -`) the archive goes to stdout.
//!
//! Everything is built in a staging directory next to the output (in the store's tmp/
//! for stdout) and renamed into place at the end, so a failed or interrupted save never
//! leaves a half-written layout under the name; the staging paths are removed on
//! SIGINT/SIGTERM, and those of a killed save by the next save to the same name.
//! The bytes are deterministic: layer blobs are the canonical changeset tars (gzip with a
//! fixed header), the config blob is the stored config file itself (so its digest is the
//! image id), manifests are serde structs in field order, archives have fixed metadata.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::err;
use crate::error::{Context, Result};
use crate::oci::{self, Descriptor, DockerEntry, Index, Manifest};
use crate::progress;
use crate::store::{hex_of, parse_ref, sha256_id, Store};
use crate::tarfile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// OCI image layout directory
    #[value(name = "oci-dir", alias = "oci")]
    OciDir,
    /// OCI image layout as a tar file
    OciArchive,
    /// `docker save` archive (manifest.json, repositories, layer tars) [default]
    DockerArchive,
    /// `dir:` transport directory (manifest.json, version, blobs by digest), one image
    DockerDir,
}

impl Format {
    fn is_dir(self) -> bool {
        matches!(self, Format::OciDir | Format::DockerDir)
    }
}

/// Where `save` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    Stdout,
}

/// The target and format `save` uses, as docker and podman read `-o`: a path or `-`; no
/// `-o` means stdout, unless stdout is a terminal. Without `--format`, a docker archive.
pub fn target(
    output: Option<&Path>,
    format: Option<Format>,
    stdout_is_terminal: bool,
) -> Result<(Target, Format)> {
    let t = match output {
        Some(p) if p != Path::new("-") => Target::Path(p.to_path_buf()),
        Some(_) => Target::Stdout,
        None if stdout_is_terminal => {
            return Err(err!(
                "refusing to write an image archive to a terminal: give -o FILE, or redirect stdout (`layerctl save IMAGE > img.tar`)"
            ))
        }
        None => Target::Stdout,
    };
    let f = format.unwrap_or(Format::DockerArchive);
    if t == Target::Stdout && f.is_dir() {
        return Err(err!(
            "--format {} writes a directory, which cannot go to stdout: give -o DIR, or use docker-archive or oci-archive",
            f.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
        ));
    }
    Ok((t, f))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    Gzip,
    None,
}

/// One image to save: the names it goes out under, its id and config bytes.
struct Item {
    names: Vec<(String, String)>,
    id: String,
    config: Vec<u8>,
    diff_ids: Vec<String>,
}

/// Removes the staging path unless the save finished (then it has been renamed away); on
/// SIGINT/SIGTERM the interrupt thread removes it.
struct Staging(PathBuf, #[allow(dead_code)] crate::interrupt::Registered);

impl Staging {
    fn new(p: PathBuf) -> Staging {
        let r = crate::interrupt::register(&p);
        Staging(p, r)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = crate::copytree::remove_any(&self.0);
    }
}

fn short(d: &str) -> &str {
    let hex = d.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// A path in the output's directory (same filesystem, so the final rename is atomic).
fn sibling(out: &Path, tag: &str) -> Result<PathBuf> {
    let name = out.file_name().ok_or_else(|| {
        err!(
            "output {} has no file name (give -o DIR/NAME)",
            out.display()
        )
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(
        ".{}.{tag}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Removes staging siblings of `out` left by saves that were killed (their process is gone).
fn clear_stale_siblings(out: &Path) {
    let (Some(name), parent) = (out.file_name(), out.parent()) else {
        return;
    };
    let parent = match parent {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(".{}.layerctl-save-", name.to_string_lossy());
    let Ok(rd) = fs::read_dir(&parent) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| !crate::sys::pid_alive(p)) {
            let _ = crate::copytree::remove_any(&e.path());
        }
    }
}

fn resolve_items(store: &Store, images: &[String]) -> Result<Vec<Item>> {
    let refs = store.refs()?;
    let mut items: Vec<Item> = Vec::new();
    for arg in images {
        let id = store.resolve_image(arg)?;
        // By name: that name only. By id: every name it has (possibly none).
        let names: Vec<(String, String)> = match parse_ref(arg) {
            Ok((n, t)) if refs.get(&format!("{n}:{t}")) == Some(&id) => vec![(n, t)],
            _ => refs
                .iter()
                .filter(|(_, v)| **v == id)
                .filter_map(|(k, _)| parse_ref(k).ok())
                .collect(),
        };
        let path = store
            .root
            .join("images")
            .join(format!("{}.json", hex_of(&id)?));
        let config = fs::read(&path).ctx(|| {
            format!("image record {id} is unreadable; run `layerctl fsck` and re-import it")
        })?;
        if sha256_id(&config) != id {
            return Err(err!(
                "image record {id} does not match its id (damaged): run `layerctl fsck` and re-import it"
            ));
        }
        let diff_ids = store.read_image(&id)?.rootfs.diff_ids;
        for d in &diff_ids {
            if !store.has_layer(d) {
                return Err(err!(
                    "image {arg} needs layer {d}, which is missing from the store: run `layerctl fsck` and re-import the image"
                ));
            }
        }
        match items.iter_mut().find(|i| i.id == id) {
            Some(i) => {
                for n in names {
                    if !i.names.contains(&n) {
                        i.names.push(n);
                    }
                }
            }
            None => items.push(Item {
                names,
                id,
                config,
                diff_ids,
            }),
        }
    }
    Ok(items)
}

/// Writes a blob with bytes from `fill` into `dir` under its digest; returns (digest, size).
fn write_blob(
    dir: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    name_by: impl Fn(&str) -> String,
) -> Result<(String, u64, String)> {
    let partial = dir.join(".partial");
    let f = fs::File::create(&partial).ctx(|| format!("creating {}", partial.display()))?;
    let mut hw = oci::HashingWriter::new(BufWriter::new(f));
    fill(&mut hw)?;
    hw.flush()
        .ctx(|| format!("writing {}", partial.display()))?;
    let (digest, size) = (hw.digest(), hw.count);
    drop(hw);
    let name = name_by(&digest);
    let dst = dir.join(&name);
    fs::rename(&partial, &dst).ctx(|| format!("writing {}", dst.display()))?;
    Ok((digest, size, name))
}

/// The layer `diff_id` as a blob in `dir`, compressed or not. Returns (digest, size, file name).
fn write_layer(
    store: &Store,
    diff_id: &str,
    dir: &Path,
    compress: Compress,
    name_by: impl Fn(&str) -> String,
    msg: &str,
) -> Result<(String, u64, String)> {
    let layer = store.layer_dir(diff_id)?;
    let mut got = String::new();
    // Bytes of the layer's tar (its recorded size), before compression.
    let len = store.layer_record(diff_id).map(|r| r.size).unwrap_or(0);
    let pb = progress::bytes(&format!("{msg} {}", short(diff_id)), len);
    let res = write_blob(
        dir,
        |w| {
            let (d, _) = match compress {
                Compress::None => {
                    tarfile::write_tar(&layer, progress::Writer::new(&mut *w, &pb), &|| {})?
                }
                Compress::Gzip => {
                    let mut gz = oci::gzip_writer(&mut *w);
                    let r =
                        tarfile::write_tar(&layer, progress::Writer::new(&mut gz, &pb), &|| {})?;
                    gz.finish().ctx(|| format!("compressing layer {diff_id}"))?;
                    r
                }
            };
            got = d;
            Ok(())
        },
        name_by,
    )?;
    pb.finish_and_clear();
    // The store hashes layers on the way in; a different hash now means damage on disk.
    if got != diff_id {
        return Err(err!(
            "layer {diff_id} in the store is damaged (its content now hashes to {got}): run `layerctl fsck`"
        ));
    }
    Ok(res)
}

fn check_output(out: &Path, format: Format) -> Result<()> {
    match fs::symlink_metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if format.is_dir() => {
            let empty = m.is_dir()
                && fs::read_dir(out)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
            if empty {
                Ok(())
            } else {
                Err(err!(
                    "output {} already exists: remove it or pick another -o (a layout directory is written into a new or empty directory)",
                    out.display()
                ))
            }
        }
        Ok(m) if m.is_dir() => Err(err!(
            "output {} is a directory: give a file name for an archive, or use --format oci-dir",
            out.display()
        )),
        Ok(_) => Ok(()),
    }
}

/// `layerctl save IMAGE... [-o OUT|-]`. Returns one line per name saved: `name:tag
/// image-id` (the same shape `load` prints).
pub fn save(
    store: &Store,
    images: &[String],
    target: &Target,
    format: Format,
    compress: Option<Compress>,
) -> Result<Vec<String>> {
    if images.is_empty() {
        return Err(err!(
            "give at least one image to save (see `layerctl images`)"
        ));
    }
    if let Target::Path(out) = target {
        check_output(out, format)?;
        clear_stale_siblings(out);
    }
    // docker save writes plain layer tars; OCI layouts (and the dir transport, as skopeo
    // writes it) are gzip by convention.
    let compress = compress.unwrap_or(match format {
        Format::DockerArchive => Compress::None,
        _ => Compress::Gzip,
    });
    // Held so that gc cannot remove a layer while it is being written out.
    let _lock = store.lock()?;
    let items = resolve_items(store, images)?;
    if format == Format::DockerDir && items.len() > 1 {
        return Err(err!(
            "--format docker-dir holds one image; save {} images as docker-archive or oci-dir",
            items.len()
        ));
    }
    let staging = match target {
        Target::Path(out) => {
            let p = sibling(out, "layerctl-save")?;
            let _ = crate::copytree::remove_any(&p);
            fs::create_dir(&p).ctx(|| {
                format!(
                    "creating {} (is the output's directory writable?)",
                    p.display()
                )
            })?;
            Staging::new(p)
        }
        Target::Stdout => Staging::new(store.tmp_dir()?),
    };
    let total: usize = items.iter().map(|i| i.diff_ids.len()).sum();
    // A counter only: each layer shows its own byte bar.
    let pb = indicatif::ProgressBar::hidden();
    pb.set_length(total as u64);
    let lines = match format {
        Format::OciDir | Format::OciArchive => write_oci(store, &items, &staging.0, compress, &pb)?,
        Format::DockerArchive => write_docker(store, &items, &staging.0, compress, &pb)?,
        Format::DockerDir => write_dir_transport(store, &items[0], &staging.0, compress, &pb)?,
    };
    let out = match target {
        Target::Path(out) if format.is_dir() => {
            fs::rename(&staging.0, out)
                .ctx(|| format!("moving the layout to {}", out.display()))?;
            return Ok(lines);
        }
        Target::Path(out) => out,
        Target::Stdout => {
            let pb = progress::bytes("writing archive", crate::container::tree_size(&staging.0));
            let w = progress::Writer::new(std::io::stdout().lock(), &pb);
            let mut w = oci::tar_dir(&staging.0, w)?;
            w.flush()
                .ctx(|| "writing the archive to stdout".to_string())?;
            pb.finish_and_clear();
            return Ok(lines);
        }
    };
    let tmp = Staging::new(sibling(out, "layerctl-save-tar")?);
    let f = fs::File::create(&tmp.0).ctx(|| format!("creating {}", tmp.0.display()))?;
    let pb = progress::bytes("writing archive", crate::container::tree_size(&staging.0));
    let w = oci::tar_dir(&staging.0, progress::Writer::new(BufWriter::new(f), &pb))?;
    pb.finish_and_clear();
    let f = w
        .into_inner()
        .into_inner()
        .map_err(|e| err!("writing {}: {}", tmp.0.display(), e.error()))?;
    f.sync_all()
        .ctx(|| format!("writing {}", tmp.0.display()))?;
    fs::rename(&tmp.0, out).ctx(|| format!("writing {}", out.display()))?;
    Ok(lines)
}

/// The `dir:` transport layout (containers/image, `podman save --format docker-dir`,
/// `skopeo copy ... dir:PATH`): `version`, `manifest.json` (a docker schema 2 manifest)
/// and every blob as a file named by its hex digest.
fn write_dir_transport(
    store: &Store,
    item: &Item,
    dir: &Path,
    compress: Compress,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<String>> {
    let hex_name = |d: &str| d.trim_start_matches("sha256:").to_string();
    let media = match compress {
        Compress::Gzip => MT_DOCKER_LAYER_GZIP,
        Compress::None => MT_DOCKER_LAYER_TAR,
    };
    let mut layers = Vec::new();
    for d in &item.diff_ids {
        pb.inc(1);
        let msg = format!(
            "saving layer {}/{}",
            pb.position(),
            pb.length().unwrap_or(0)
        );
        let (digest, size, _) = write_layer(store, d, dir, compress, hex_name, &msg)?;
        // A layer the image holds twice is one blob named twice.
        layers.push(Descriptor {
            media_type: media.to_string(),
            digest,
            size,
            platform: None,
            annotations: None,
        });
    }
    let (cdigest, csize, _) = write_blob(
        dir,
        |w| w.write_all(&item.config).ctx(|| "writing config".into()),
        hex_name,
    )?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MT_DOCKER_MANIFEST.to_string()),
        config: Descriptor {
            media_type: MT_DOCKER_CONFIG.to_string(),
            digest: cdigest,
            size: csize,
            platform: None,
            annotations: None,
        },
        layers,
        annotations: None,
    };
    fs::write(
        dir.join("manifest.json"),
        oci::to_json(&manifest, "manifest")?,
    )
    .ctx(|| format!("writing {}", dir.join("manifest.json").display()))?;
    fs::write(dir.join("version"), "Directory Transport Version: 1.1\n")
        .ctx(|| format!("writing {}", dir.join("version").display()))?;
    let mut lines: Vec<String> = item
        .names
        .iter()
        .map(|(n, t)| format!("{n}:{t} {}", item.id))
        .collect();
    if lines.is_empty() {
        lines.push(item.id.clone());
    }
    Ok(lines)
}

const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MT_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

fn write_oci(
    store: &Store,
    items: &[Item],
    dir: &Path,
    compress: Compress,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<String>> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).ctx(|| format!("creating {}", blobs.display()))?;
    let hex_name = |d: &str| d.trim_start_matches("sha256:").to_string();
    let media = match compress {
        Compress::Gzip => oci::MT_LAYER_GZIP,
        Compress::None => oci::MT_LAYER_TAR,
    };
    let mut done: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut index = Vec::new();
    let mut lines = Vec::new();
    for item in items {
        let mut layers = Vec::new();
        for d in &item.diff_ids {
            pb.inc(1);
            if let Some(desc) = done.get(d) {
                layers.push(desc.clone());
                continue;
            }
            let msg = format!(
                "saving layer {}/{}",
                pb.position(),
                pb.length().unwrap_or(0)
            );
            let (digest, size, _) = write_layer(store, d, &blobs, compress, hex_name, &msg)?;
            let desc = Descriptor {
                media_type: media.to_string(),
                digest,
                size,
                platform: None,
                annotations: None,
            };
            done.insert(d.clone(), desc.clone());
            layers.push(desc);
        }
        let (cdigest, csize, _) = write_blob(
            &blobs,
            |w| w.write_all(&item.config).ctx(|| "writing config".into()),
            hex_name,
        )?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MT_MANIFEST.to_string()),
            config: Descriptor {
                media_type: oci::MT_CONFIG.to_string(),
                digest: cdigest,
                size: csize,
                platform: None,
                annotations: None,
            },
            layers,
            annotations: None,
        };
        let mbytes = oci::to_json(&manifest, "manifest")?;
        let (mdigest, msize, _) = write_blob(
            &blobs,
            |w| w.write_all(&mbytes).ctx(|| "writing manifest".into()),
            hex_name,
        )?;
        let cfg = store.read_image(&item.id)?;
        let platform = oci::Platform {
            architecture: cfg.architecture.clone(),
            os: cfg.os.clone(),
            variant: None,
        };
        let mut push = |annotations: Option<BTreeMap<String, String>>| {
            index.push(Descriptor {
                media_type: oci::MT_MANIFEST.to_string(),
                digest: mdigest.clone(),
                size: msize,
                platform: Some(platform.clone()),
                annotations,
            })
        };
        if item.names.is_empty() {
            push(None);
        }
        for (n, t) in &item.names {
            // ref.name is the bare tag: that is what `skopeo ... oci:DIR:TAG` and
            // `umoci --image DIR:TAG` select by; the full name travels next to it.
            let mut a = BTreeMap::new();
            a.insert(oci::ANNOT_REF_NAME.to_string(), t.clone());
            a.insert(oci::ANNOT_IMAGE_NAME.to_string(), format!("{n}:{t}"));
            push(Some(a));
            lines.push(format!("{n}:{t} {}", item.id));
        }
        if item.names.is_empty() {
            lines.push(item.id.clone());
        }
    }
    let idx = Index {
        schema_version: 2,
        media_type: Some(oci::MT_INDEX.to_string()),
        manifests: index,
        annotations: None,
    };
    fs::write(dir.join("index.json"), oci::to_json(&idx, "index")?)
        .ctx(|| format!("writing {}", dir.join("index.json").display()))?;
    fs::write(
        dir.join(oci::LAYOUT_FILE),
        format!("{{\"imageLayoutVersion\":\"{}\"}}", oci::LAYOUT_VERSION),
    )
    .ctx(|| format!("writing {}", dir.join(oci::LAYOUT_FILE).display()))?;
    Ok(lines)
}

fn write_docker(
    store: &Store,
    items: &[Item],
    dir: &Path,
    compress: Compress,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<String>> {
    // Layer files are named by their blob digest (as podman does); the names are only
    // ever looked up through manifest.json.
    let ext = match compress {
        Compress::Gzip => ".tar.gz",
        Compress::None => ".tar",
    };
    let name_by = |d: &str| format!("{}{ext}", d.trim_start_matches("sha256:"));
    let mut done: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest = Vec::new();
    let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut lines = Vec::new();
    for item in items {
        let mut layers = Vec::new();
        for d in &item.diff_ids {
            pb.inc(1);
            if let Some(f) = done.get(d) {
                layers.push(f.clone());
                continue;
            }
            let msg = format!(
                "saving layer {}/{}",
                pb.position(),
                pb.length().unwrap_or(0)
            );
            let (_, _, file) = write_layer(store, d, dir, compress, name_by, &msg)?;
            done.insert(d.clone(), file.clone());
            layers.push(file);
        }
        let config = format!("{}.json", hex_of(&item.id)?);
        fs::write(dir.join(&config), &item.config)
            .ctx(|| format!("writing {}", dir.join(&config).display()))?;
        let tags: Vec<String> = item.names.iter().map(|(n, t)| format!("{n}:{t}")).collect();
        if let Some(top) = layers.last() {
            let top = top.split('.').next().unwrap_or_default().to_string();
            for (n, t) in &item.names {
                repos
                    .entry(n.clone())
                    .or_default()
                    .insert(t.clone(), top.clone());
            }
        }
        lines.extend(tags.iter().map(|t| format!("{t} {}", item.id)));
        if tags.is_empty() {
            lines.push(item.id.clone());
        }
        manifest.push(DockerEntry {
            config,
            repo_tags: Some(tags),
            layers,
        });
    }
    fs::write(
        dir.join("manifest.json"),
        oci::to_json(&manifest, "manifest.json")?,
    )
    .ctx(|| format!("writing {}", dir.join("manifest.json").display()))?;
    fs::write(
        dir.join("repositories"),
        oci::to_json(&repos, "repositories")?,
    )
    .ctx(|| format!("writing {}", dir.join("repositories").display()))?;
    Ok(lines)
}
