//! Containers: an image's layer chain plus a private upper (and work) directory, mounted
//! by the mount program; diff and commit of that upper directory.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::changeset::{self, Change};
use crate::err;
use crate::error::{Context, Result};
use crate::image::{apply_change, now_rfc3339, History};
use crate::images::{self, lower_dirs, lower_view};
use crate::mount;
use crate::progress;
use crate::store::{parse_ref, valid_container_name, ContainerRecord, Store};

pub fn upper_dir(store: &Store, name: &str) -> PathBuf {
    store.container_dir(name).join("upper")
}

fn default_name(store: &Store, image_ref: &str) -> Result<String> {
    let base = crate::store::parse_reference(image_ref)
        .map(|r| r.name.rsplit('/').next().unwrap_or("c").to_string())
        .unwrap_or_else(|_| "c".to_string());
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
        .collect();
    let base = if base.is_empty() {
        "c".to_string()
    } else {
        base
    };
    let taken = store.container_names()?;
    (1..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken.contains(n))
        .ok_or_else(|| err!("no free container name"))
}

/// Mounts an existing (unmounted) container again, with its changes.
fn remount(store: &Store, mut rec: ContainerRecord, target: &Path) -> Result<String> {
    if let Some(mp) = &rec.mountpoint {
        if mount::mount_fstype(mp)?.is_some() {
            return Err(err!(
                "container {} is already mounted at {}: use that mount or run `layerctl umount {}` first",
                rec.name,
                mp.display(),
                rec.name
            ));
        }
    }
    let prog = mount::program()?;
    let target = mount::check_target(target)?;
    let lowers = lower_dirs(store, &rec.image_config)?;
    let dir = store.container_dir(&rec.name);
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    let rw = if rec.read_only {
        None
    } else {
        Some((upper.as_path(), work.as_path()))
    };
    mount::mount(&prog, &lowers, rw, &target)?;
    rec.mountpoint = Some(target.clone());
    if let Err(e) = store.write_container(&rec) {
        let _ = mount::umount(&target);
        return Err(e);
    }
    Ok(rec.name)
}

/// `layerctl mount IMAGE|CONTAINER TARGET [--name] [--read-only]`: a new container from
/// an image, or an existing container mounted again. Returns the container name.
pub fn mount(
    store: &Store,
    image_ref: &str,
    target: &Path,
    name: Option<&str>,
    read_only: bool,
) -> Result<String> {
    if valid_container_name(image_ref).is_ok() && store.container_dir(image_ref).exists() {
        let _lock = store.lock()?;
        let rec = store.read_container(image_ref)?;
        return remount(store, rec, target);
    }
    let how = NewMount {
        name,
        read_only,
        ..NewMount::default()
    };
    mount_new(store, image_ref, target, &how)
}

/// How [`mount_new`] mounts a new container.
#[derive(Default)]
pub struct NewMount<'a> {
    pub name: Option<&'a str>,
    pub read_only: bool,
    /// A directory mounted above the image's layers and below the container's upper
    /// (`run`'s init layer: the mount points a runtime needs, so that it never creates
    /// them in the upper). Not part of the container's image: diff and commit never see it.
    pub init_layer: Option<&'a Path>,
    /// Extra mount program options (`uidmapping=...` for `run --userns=auto`).
    pub extra_opts: &'a [String],
}

/// A new container of `image_ref` mounted on `target`. Returns the container name.
pub fn mount_new(store: &Store, image_ref: &str, target: &Path, how: &NewMount) -> Result<String> {
    let (name, read_only) = (how.name, how.read_only);
    let prog = mount::program()?;
    let target = mount::check_target(target)?;
    let _lock = store.lock()?;
    let image_id = store.resolve_image(image_ref)?;
    let cfg = store.read_image(&image_id)?;
    let mut lowers = lower_dirs(store, &cfg)?;
    if let Some(init) = how.init_layer {
        lowers.insert(0, init.to_path_buf());
    }
    let name = match name {
        Some(n) => {
            valid_container_name(n)?;
            n.to_string()
        }
        None => default_name(store, image_ref)?,
    };
    let mut rec = ContainerRecord {
        name: name.clone(),
        image_id,
        image_ref: image_ref.to_string(),
        image_config: cfg,
        created: now_rfc3339(),
        read_only,
        mountpoint: None,
    };
    store.create_container(&rec)?;
    let dir = store.container_dir(&name);
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    let rw = if read_only {
        None
    } else {
        Some((upper.as_path(), work.as_path()))
    };
    if let Err(e) = mount::mount_with(&prog, &lowers, rw, &target, how.extra_opts) {
        // Nothing changed: the container we just made goes away again.
        let _ = store.remove_container(&name);
        return Err(e);
    }
    rec.mountpoint = Some(target.clone());
    if let Err(e) = store.write_container(&rec) {
        let _ = mount::umount(&target);
        let _ = store.remove_container(&name);
        return Err(e);
    }
    Ok(name)
}

/// Finds a container by name or by its mount point.
pub fn find(store: &Store, what: &str) -> Result<ContainerRecord> {
    if valid_container_name(what).is_ok() && store.container_dir(what).exists() {
        return store.read_container(what);
    }
    let p = fs::canonicalize(what).unwrap_or_else(|_| PathBuf::from(what));
    for n in store.container_names()? {
        if let Ok(c) = store.read_container(&n) {
            if c.mountpoint.as_deref() == Some(p.as_path())
                || c.mountpoint.as_deref() == Some(Path::new(what))
            {
                return Ok(c);
            }
        }
    }
    Err(err!(
        "no such container or mount point: {what} (see `layerctl ps`)"
    ))
}

/// `layerctl umount NAME|TARGET`.
pub fn umount(store: &Store, what: &str) -> Result<String> {
    let _lock = store.lock()?;
    let mut c = find(store, what)?;
    let Some(mp) = c.mountpoint.clone() else {
        return Err(err!("container {} is not mounted", c.name));
    };
    mount::umount(&mp)?;
    c.mountpoint = None;
    store.write_container(&c)?;
    Ok(c.name)
}

/// `layerctl rm NAME [--force]`.
pub fn rm(store: &Store, name: &str, force: bool) -> Result<()> {
    let _lock = store.lock()?;
    let dir = store.container_dir(name);
    if valid_container_name(name).is_err() || !dir.exists() {
        return Err(err!("no such container: {name} (see `layerctl ps`)"));
    }
    match store.read_container(name) {
        Ok(c) => {
            if let Some(mp) = &c.mountpoint {
                if mount::mount_fstype(mp)?.is_some() {
                    if !force {
                        return Err(err!(
                            "container {name} is mounted at {}: run `layerctl umount {name}` first or use --force",
                            mp.display()
                        ));
                    }
                    mount::umount(mp)?;
                }
            }
        }
        Err(e) if !force => return Err(err!("{e}")),
        Err(_) => {}
    }
    store.remove_container(name)
}

/// Apparent size of everything below `p` (regular files and symlinks, hard links once).
/// Walked with an explicit stack: a layer's depth is the input's to decide.
pub fn tree_size(p: &Path) -> u64 {
    let mut seen = std::collections::HashSet::<(u64, u64)>::new();
    let mut todo = vec![p.to_path_buf()];
    let mut total = 0;
    while let Some(p) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
            continue;
        }
        if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.len();
    }
    total
}

/// State of a container's mount for `ps`.
pub fn state(c: &ContainerRecord) -> String {
    match &c.mountpoint {
        None => "unmounted".to_string(),
        // The kernel may answer a stat of a dead daemon's mount from its cache, so ask
        // the mount something it must forward (`is_stale` reads the directory).
        Some(mp) if mount::is_stale(mp) => "stale (run `layerctl umount`)".to_string(),
        Some(mp) => match mount::mount_fstype(mp) {
            Ok(Some(_)) => "mounted".to_string(),
            _ => "not mounted (record stale)".to_string(),
        },
    }
}

/// `layerctl diff NAME`.
pub fn diff(store: &Store, name: &str) -> Result<Vec<Change>> {
    let c = store.read_container(name)?;
    let lowers = lower_view(store, &c.image_config)?;
    changeset::diff(
        &upper_dir(store, name),
        Some(&store.container_dir(name).join("work/index")),
        &lowers,
    )
}

pub struct CommitOptions<'a> {
    pub message: Option<&'a str>,
    pub created_by: Option<&'a str>,
    pub changes: &'a [String],
}

/// `layerctl commit NAME NEWIMAGE[:TAG]`, pausing the container's processes while its
/// upper directory is read. Returns (ref, image id, diff_id, new layer?).
pub fn commit(
    store: &Store,
    name: &str,
    new_ref: &str,
    opts: &CommitOptions,
) -> Result<(String, String, String, bool)> {
    commit_paused(store, name, new_ref, opts, true)
}

/// [`commit`]; with `pause` false (`--no-pause`) the container's processes keep running
/// while the upper is read, so the image may mix moments of the container.
pub fn commit_paused(
    store: &Store,
    name: &str,
    new_ref: &str,
    opts: &CommitOptions,
    pause: bool,
) -> Result<(String, String, String, bool)> {
    parse_ref(new_ref)?;
    let c = store.read_container(name)?;
    let mut cfg = c.image_config.clone();
    // Apply --change first: a bad instruction must fail before any work.
    for ch in opts.changes {
        apply_change(&mut cfg.config, ch)?;
    }
    let lowers = lower_view(store, &c.image_config)?;
    let _lock = store.lock()?;
    let mut paused = None;
    if let Some(mp) = &c.mountpoint {
        if mount::is_stale(mp) {
            return Err(err!(
                "container {name} has a stale mount at {} (daemon gone): run `layerctl umount {name}`, then commit again",
                mp.display()
            ));
        }
        if mount::mount_fstype(mp)?.is_some() {
            // Stopped before the flush, so that what they wrote last is flushed too.
            if pause && !c.read_only {
                paused = Some(crate::pause::pause_mount(mp, name)?);
            }
            mount::flush(mp)?;
        }
    }
    let tmp = store.tmp_dir()?;
    let out = tmp.join("diff");
    fs::create_dir(&out).ctx(|| format!("creating {}", out.display()))?;
    let pb = progress::spinner("collecting changes");
    let tick = || pb.inc(1);
    let res = changeset::Builder::new(&lowers, &tick).build(
        &upper_dir(store, name),
        Some(&store.container_dir(name).join("work/index")),
        &out,
    );
    pb.finish_and_clear();
    // The layer is in `out` now: the container runs on while it is hashed and stored.
    drop(paused);
    if let Err(e) = res {
        let _ = crate::copytree::remove_any(&tmp);
        return Err(e);
    }
    let (diff_id, _, fresh) = images::store_layer(store, &tmp, "hashing")?;
    let now = now_rfc3339();
    cfg.created = Some(now.clone());
    cfg.rootfs.diff_ids.push(diff_id.clone());
    cfg.history.push(History {
        created: Some(now),
        created_by: Some(
            opts.created_by
                .map(str::to_string)
                .unwrap_or_else(|| format!("layerctl commit {name}")),
        ),
        comment: opts.message.map(str::to_string),
        ..History::default()
    });
    let id = store.write_image(&cfg)?;
    if id != c.image_id {
        store.set_parent(&id, &c.image_id)?;
    }
    let full = images::tag(store, new_ref, &id)?;
    Ok((full, id, diff_id, fresh))
}
