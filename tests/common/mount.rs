//! The layer directories of one test (a fresh temp dir holding the lowers, upper, work
//! and the mount point) and the guard that always unmounts what was mounted on them,
//! whichever backend mounted it (`daemon.rs` starts layerfs, `kernel.rs` the reference).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use layerfs::sys;

use super::daemon::wait_daemon_gone;
use super::{backend, chmod, require_mount_privileges, tmp_base, Backend};

/// A fresh directory holding `l0..lN` (l0 is the top-most lower), `upper`, `work`, `mnt`.
pub struct Stack {
    pub root: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    pub fn new(nlowers: usize) -> Stack {
        require_mount_privileges();
        let root = tempfile::Builder::new()
            .prefix("layerfs-test-")
            .tempdir_in(tmp_base())
            .expect("create temp dir");
        let lowers: Vec<PathBuf> = (0..nlowers)
            .map(|i| root.path().join(format!("l{i}")))
            .collect();
        for l in &lowers {
            fs::create_dir(l).unwrap();
        }
        let upper = root.path().join("upper");
        let work = root.path().join("work");
        let mnt = root.path().join("mnt");
        for d in [&upper, &work, &mnt] {
            fs::create_dir(d).unwrap();
        }
        // Layer roots are 0755 root:root regardless of the umask.
        for d in lowers.iter().chain([&upper]) {
            chmod(d, 0o755).unwrap();
        }
        Stack {
            root,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    /// Path inside lower layer `i` (0 = top-most lower).
    pub fn l(&self, i: usize, rel: &str) -> PathBuf {
        join(&self.lowers[i], rel)
    }

    /// Path inside the upper layer.
    pub fn u(&self, rel: &str) -> PathBuf {
        join(&self.upper, rel)
    }

    /// Mount with the selected backend (layerfs by default).
    pub fn mount(&self) -> Mount {
        self.mount_opts(&[])
    }

    /// Mount with extra options (`redirect_dir=off`, ...).
    pub fn mount_opts(&self, opts: &[&str]) -> Mount {
        match backend() {
            Backend::Layerfs => self.mount_layerfs(opts, true),
            Backend::Kernel => self.mount_kernel(opts, true),
        }
    }

    /// Read-only mount: lowers only, no upperdir.
    pub fn mount_ro(&self) -> Mount {
        match backend() {
            Backend::Layerfs => self.mount_layerfs(&[], false),
            Backend::Kernel => self.mount_kernel(&[], false),
        }
    }

    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A mount already made by the caller (a foreground daemon, say), unmounted like
    /// the others.
    pub fn adopt_mount(&self, backend: Backend) -> Mount {
        Mount::mounted(self.mnt.clone(), backend)
    }

    /// Empties workdir of whatever the previous mount left that is not ours to check
    /// (kernel overlayfs keeps `work/work` and `work/index`).
    pub fn work_entries(&self) -> Vec<String> {
        let mut names = Vec::new();
        walk_names(&self.work, "", &mut names);
        names
    }
}

fn walk_names(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(name.clone());
        if is_dir {
            walk_names(&e.path(), &format!("{name}/"), out);
        }
    }
}

pub fn join(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() || rel == "." {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Whether something is mounted at `path` in this process's mount namespace (the
/// daemon's own mountinfo reader, octal escapes and all).
pub fn is_mounted(path: &Path) -> bool {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    sys::mountinfo::own()
        .unwrap()
        .iter()
        .any(|m| m.point == canon)
}

/// A mounted union. Dropping it always unmounts (lazily if something is still busy).
pub struct Mount {
    pub path: PathBuf,
    pub backend: Backend,
    mounted: bool,
}

impl Mount {
    /// The guard of a mount at `path` made by `backend`.
    pub fn mounted(path: PathBuf, backend: Backend) -> Mount {
        Mount {
            path,
            backend,
            mounted: true,
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        join(&self.path, rel)
    }

    /// Unmount and check it worked; waits for a FUSE daemon serving it to exit.
    pub fn unmount(mut self) {
        self.mounted = false;
        // The kernel lets go of a just-closed file a moment after close() returns, and
        // until then the mount is busy: retry for a bounded time, then fail loudly.
        let mut ok = false;
        for _ in 0..50 {
            ok = match self.backend {
                Backend::Layerfs => run_quiet("fusermount3", &["-u"], &self.path),
                Backend::Kernel => run_quiet("umount", &[], &self.path),
            };
            if ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            ok,
            "unmount of {} failed (still busy after 5 s)",
            self.path.display()
        );
        assert!(
            !is_mounted(&self.path),
            "{} still mounted",
            self.path.display()
        );
        if self.backend == Backend::Layerfs {
            wait_daemon_gone(&self.path);
        }
    }

    /// For a mount whose daemon is dead: detach the stale mount point (fusermount3 -u
    /// works on a dead FUSE connection).
    pub fn clear_stale(mut self) {
        self.mounted = false;
        if !run_quiet("fusermount3", &["-u"], &self.path) {
            assert!(
                run_quiet("fusermount3", &["-uz"], &self.path),
                "cannot detach stale mount {}",
                self.path.display()
            );
        }
        assert!(
            !is_mounted(&self.path),
            "{} still mounted",
            self.path.display()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        match self.backend {
            Backend::Layerfs => {
                if !run_quiet("fusermount3", &["-u"], &self.path) {
                    run_quiet("fusermount3", &["-uz"], &self.path);
                }
                wait_daemon_gone(&self.path);
            }
            Backend::Kernel => {
                if !run_quiet("umount", &[], &self.path) {
                    run_quiet("umount", &["-l"], &self.path);
                }
            }
        }
    }
}

pub(super) fn run_quiet(cmd: &str, args: &[&str], path: &Path) -> bool {
    Command::new(cmd)
        .args(args)
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
