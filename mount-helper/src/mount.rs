//! Starting and stopping the mount program, and asking the kernel what is mounted where.
//!
//! The mount program speaks the fuse-overlayfs command line
//! (`PROG -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] TARGET`, returning once the
//! mount is ready). It is `$LAYERCTL_MOUNT_PROGRAM` if set, else `layerfs` next to this
//! executable, else `layerfs` on PATH. The special value `kernel` uses kernel overlayfs
//! (root only), handy to compare behaviours.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::err;
use crate::error::{Context, Result};
use crate::sys;
use layerfs::sys::mountinfo;

pub enum Program {
    Fuse(PathBuf),
    Kernel,
}

pub fn program() -> Result<Program> {
    if let Some(p) = std::env::var_os("LAYERCTL_MOUNT_PROGRAM").filter(|p| !p.is_empty()) {
        if p == "kernel" {
            return Ok(Program::Kernel);
        }
        let p = PathBuf::from(p);
        if p.components().count() > 1 {
            return if p.is_file() {
                Ok(Program::Fuse(p))
            } else {
                Err(err!(
                    "mount program {} (LAYERCTL_MOUNT_PROGRAM) does not exist: fix the variable or unset it",
                    p.display()
                ))
            };
        }
        return which(&p).map(Program::Fuse).ok_or_else(|| {
            err!("mount program {} (LAYERCTL_MOUNT_PROGRAM) is not on PATH: fix the variable or unset it", p.display())
        });
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let cand = dir.join("layerfs");
            if cand.is_file() {
                return Ok(Program::Fuse(cand));
            }
        }
    }
    which(Path::new("layerfs")).map(Program::Fuse).ok_or_else(|| {
        err!("the layerfs daemon was not found next to layerctl or on PATH: build it (`cargo build --workspace`) or set LAYERCTL_MOUNT_PROGRAM")
    })
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Builds the option string; store paths must not contain the separators.
fn options(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<OsString> {
    let check = |p: &Path| -> Result<()> {
        if p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| *b == b':' || *b == b',')
        {
            Err(err!("store path {} contains ':' or ',', which mount options cannot carry: use another --root", p.display()))
        } else {
            Ok(())
        }
    };
    let mut o = OsString::from("lowerdir=");
    for (i, l) in lowers.iter().enumerate() {
        check(l)?;
        if i > 0 {
            o.push(":");
        }
        o.push(l);
    }
    if let Some((u, w)) = upper {
        check(u)?;
        check(w)?;
        o.push(",upperdir=");
        o.push(u);
        o.push(",workdir=");
        o.push(w);
    }
    Ok(o)
}

/// Mounts the stack on `target` and returns once it is ready.
pub fn mount(
    prog: &Program,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<()> {
    mount_with(prog, lowers, upper, target, &[])
}

/// [`mount`] with extra options for the mount program (`uidmapping=...`); those are FUSE
/// daemon options, so kernel overlayfs refuses them by name.
pub fn mount_with(
    prog: &Program,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
    extra: &[String],
) -> Result<()> {
    let mut opts = options(lowers, upper)?;
    for o in extra {
        opts.push(",");
        opts.push(o);
    }
    let (mut cmd, shown) = match prog {
        Program::Fuse(p) => (Command::new(p), p.display().to_string()),
        Program::Kernel if !extra.is_empty() => {
            return Err(err!(
                "mount option {} needs a FUSE mount program (layerfs or fuse-overlayfs), not kernel overlayfs: unset LAYERCTL_MOUNT_PROGRAM",
                extra.join(",")
            ))
        }
        Program::Kernel => {
            // Kernel overlayfs needs two lowers for a read-only mount and redirect_dir to
            // rename lower directories the way layerfs does.
            if upper.is_some() {
                opts.push(",redirect_dir=on");
            }
            let mut c = Command::new("mount");
            c.args(["-t", "overlay", "overlay"]);
            (c, "mount -t overlay".to_string())
        }
    };
    cmd.arg("-o").arg(&opts).arg(target);
    let out = cmd
        .output()
        .ctx(|| format!("starting mount program {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err!(
            "mount program {shown} failed ({}) mounting {}: {}",
            out.status,
            target.display(),
            stderr.trim()
        ));
    }
    if mount_fstype(target)?.is_none() {
        return Err(err!(
            "mount program {shown} exited without mounting {} (check that it returns only once the mount is ready)",
            target.display()
        ));
    }
    Ok(())
}

/// The filesystem type mounted exactly at `target` (the top-most mount), if any.
pub fn mount_fstype(target: &Path) -> Result<Option<String>> {
    let mounts = mountinfo::own().ctx(|| "reading /proc/self/mountinfo".to_string())?;
    Ok(mountinfo::top_at(&mounts, target).map(|m| m.fstype.clone()))
}

/// The errors of a FUSE mount whose daemon is gone: ENOTCONN, or while the kernel tears
/// down a connection that was served over io_uring, ECONNABORTED or ECANCELED.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) | Some(libc::ECANCELED)
    )
}

/// True when `p` is a FUSE mount whose daemon is gone (see `gone`). stat may still
/// answer from the kernel's cache, so opening is tried too.
pub fn is_stale(p: &Path) -> bool {
    let enotconn = gone;
    match fs::metadata(p) {
        Err(e) => enotconn(&e),
        Ok(m) if m.is_dir() => fs::read_dir(p).err().is_some_and(|e| enotconn(&e)),
        Ok(_) => fs::File::open(p).err().is_some_and(|e| enotconn(&e)),
    }
}

/// Checks that `target` is an empty directory we can mount on; names the fix otherwise.
pub fn check_target(target: &Path) -> Result<PathBuf> {
    if is_stale(target) {
        return Err(err!(
            "{} is a stale mount left by a killed daemon (transport endpoint is not connected): run `fusermount3 -u {}` or `layerctl umount` on its container",
            target.display(),
            target.display()
        ));
    }
    match fs::metadata(target) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(err!(
                "{} is a stale mount left by a killed daemon (transport endpoint is not connected): run `fusermount3 -u {}` or `layerctl umount` on its container",
                target.display(),
                target.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(err!("mount target {} does not exist: create it with `mkdir -p {}`", target.display(), target.display()))
        }
        Err(e) => return Err(err!("mount target {}: {e}", target.display())),
        Ok(m) if !m.is_dir() => return Err(err!("mount target {} is not a directory", target.display())),
        Ok(_) => {}
    }
    let abs = fs::canonicalize(target).ctx(|| format!("resolving {}", target.display()))?;
    if mount_fstype(&abs)?.is_some() {
        return Err(err!(
            "{} is already a mount point: unmount it first or pick another directory",
            abs.display()
        ));
    }
    let mut rd = fs::read_dir(&abs).ctx(|| format!("reading {}", abs.display()))?;
    if rd.next().is_some() {
        return Err(err!(
            "mount target {} is not empty: use an empty directory",
            abs.display()
        ));
    }
    Ok(abs)
}

/// Unmounts `target`: fusermount3 for FUSE mounts (works for stale ones too), umount(2)
/// for kernel mounts.
pub fn umount(target: &Path) -> Result<()> {
    match mount_fstype(target)? {
        None => Ok(()),
        Some(t) if t.starts_with("fuse") => {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(target)
                .output()
                .or_else(|_| Command::new("fusermount").arg("-u").arg(target).output())
                .ctx(|| "running fusermount3 (install fuse3)".to_string())?;
            if out.status.success() {
                return Ok(());
            }
            if sys::is_root() && sys::umount(target).is_ok() {
                return Ok(());
            }
            Err(err!(
                "unmounting {} failed: {} (is something still using it? see `fuser -m {}`)",
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                target.display()
            ))
        }
        Some(_) => sys::umount(target).ctx(|| {
            format!(
                "unmounting {} (is something still using it? see `fuser -m {}`)",
                target.display(),
                target.display()
            )
        }),
    }
}

/// Pushes data still cached by the kernel for the mount down to the upper directory.
pub fn flush(target: &Path) -> Result<()> {
    // The probes of `is_stale` can be answered from the kernel's caches; this open is
    // the first request the daemon must answer.
    let f = match fs::File::open(target) {
        Err(e) if gone(&e) => {
            return Err(err!(
                "{} is a stale mount left by a killed daemon ({e}): run `layerctl umount` on its container",
                target.display()
            ))
        }
        r => r.ctx(|| format!("opening mount {}", target.display()))?,
    };
    sys::syncfs(&f).ctx(|| format!("flushing mount {}", target.display()))
}
