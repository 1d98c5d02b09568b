//! Temporary files and directories go away when layerctl is interrupted (SIGINT, SIGTERM,
//! SIGHUP), not only when a command fails: each one is registered while it exists, and a
//! thread woken by the signal handler removes them, then ends the process as the signal
//! would have. Anything a SIGKILL leaves is removed by the next command that meets it (the
//! store's writers clear `tmp/`, `save` clears its own stale siblings, `run` its stale
//! scratch directories), and `fsck` reports it.
//!
//! Before removing a directory, whatever is mounted inside it (a `run` container's
//! rootfs) is unmounted; a directory that still has a mount inside is left alone, never
//! deleted through the mount.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sys;
use layerfs::sys::mountinfo;

enum What {
    /// A file or directory.
    Path(PathBuf),
    /// Every entry of a directory whose name starts with a prefix (this process's
    /// `PID-` entries in the store's tmp/).
    Prefixed(PathBuf, OsString),
}

static REGISTRY: Mutex<Vec<(u64, What)>> = Mutex::new(Vec::new());
/// The running container's runtime process, which SIGTERM and SIGHUP are passed to.
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Passes SIGTERM and SIGHUP to `pid` (the container runtime) instead of ending layerctl,
/// until called with None.
pub fn forward_to(pid: Option<u32>) {
    FORWARD_TO.store(pid.map(|p| p as i32).unwrap_or(0), Ordering::Relaxed);
}
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Installs the handlers and starts the cleaning thread. Without them (an error here) the
/// signals keep their default effect; the next run still cleans up.
pub fn install() {
    let sigs = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    let Ok(mut pipe) = sys::signals_to_pipe(&sigs) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("cleanup".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            loop {
                if !pipe.read(&mut b).map(|n| n == 1).unwrap_or(false) {
                    // EOF cannot happen (the write end stays open); errors are retried.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                let sig = b[0] as libc::c_int;
                // While a container runs, SIGTERM and SIGHUP are its to handle, as
                // `docker run` proxies them; layerctl cleans up once it has ended.
                let child = FORWARD_TO.load(Ordering::Relaxed);
                if child > 0 && sig != libc::SIGINT {
                    let _ = sys::kill(child, sig);
                    continue;
                }
                break;
            }
            clean_all();
            sys::die_by_signal(b[0] as libc::c_int)
        });
}

/// A registration; dropping it ends the registration only (on the normal path the owner
/// removes or renames the thing itself).
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTRY.lock() {
            r.retain(|(id, _)| *id != self.0);
        }
    }
}

fn add(w: What) -> Registered {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut r) = REGISTRY.lock() {
        r.push((id, w));
    }
    Registered(id)
}

/// `path` is removed if the process is interrupted while the returned guard lives.
pub fn register(path: &Path) -> Registered {
    add(What::Path(path.to_path_buf()))
}

/// Entries of `dir` named `prefix...` are removed if the process is interrupted while the
/// guard lives.
pub fn register_prefixed(dir: &Path, prefix: &str) -> Registered {
    add(What::Prefixed(dir.to_path_buf(), prefix.into()))
}

fn clean_all() {
    // Processes a commit paused run again before anything else happens.
    crate::pause::resume_after_interrupt();
    // The main thread may be holding the lock mid-push; the paths matter more than it.
    let list: Vec<PathBuf> = match REGISTRY.lock() {
        Ok(r) => expand(&r),
        Err(p) => expand(&p.into_inner()),
    };
    for p in list.iter().rev() {
        remove_unmounting(p);
    }
}

fn expand(r: &[(u64, What)]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (_, w) in r {
        match w {
            What::Path(p) => out.push(p.clone()),
            What::Prefixed(dir, prefix) => {
                let Ok(rd) = fs::read_dir(dir) else { continue };
                for e in rd.flatten() {
                    if e.file_name()
                        .as_encoded_bytes()
                        .starts_with(prefix.as_encoded_bytes())
                    {
                        out.push(e.path());
                    }
                }
            }
        }
    }
    out
}

/// Mount points at or below `p` (from /proc/self/mountinfo), deepest first.
pub fn mounts_below(p: &Path) -> Vec<PathBuf> {
    let Ok(mounts) = mountinfo::own() else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = mounts
        .into_iter()
        .map(|m| m.point)
        .filter(|m| m.starts_with(p))
        .collect();
    out.sort();
    out.dedup();
    out.reverse();
    out
}

/// Unmounts what is mounted inside `p`, then removes `p` unless a mount is still there.
///
/// `p` is first renamed aside: the main thread may be about to rename the same path into
/// place (a finished layer into layers/, a record over its final name). Whichever rename
/// comes first wins whole, so a half-deleted directory can never be moved into the store.
/// The new name keeps this process's id last, so an unfinished removal is still found as a
/// leftover of a dead process.
pub fn remove_unmounting(p: &Path) {
    for m in mounts_below(p) {
        let _ = crate::mount::umount(&m);
    }
    if !mounts_below(p).is_empty() {
        return;
    }
    let mut aside = p.as_os_str().to_owned();
    aside.push(format!("-removing-{}", std::process::id()));
    let aside = PathBuf::from(aside);
    match fs::rename(p, &aside) {
        Ok(()) => {
            let _ = crate::copytree::remove_any(&aside);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => {
            let _ = crate::copytree::remove_any(p);
        }
    }
}
