//! The daemon's life cycle: mount, tell the caller the mount is ready, serve until the
//! file system is unmounted (`fusermount3 -u`, `umount`) or a SIGTERM/SIGINT/SIGHUP asks
//! for an unmount.
//!
//! Without `-f` the command must return only once the mount is usable and must not keep
//! the caller's stdout/stderr open (podman reads them to EOF). Forking a Rust process is
//! unsound once threads may exist, so the command re-executes itself in the foreground with
//! its standard streams on /dev/null and a pipe named by [`READY_FD_ENV`]; the daemon writes
//! `ready` or `error MESSAGE` on it, and the caller exits 0 or prints the message and fails.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use fuser::{MountOption, SessionACL, SessionUnmounter};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fuse::dispatch::Access;
use crate::fuse::fs::LayerFs;
use crate::sys::mountinfo;
use crate::sys::process::{self, SignalSet};

/// Environment variable naming the readiness pipe of a re-executed background daemon.
pub const READY_FD_ENV: &str = "LAYERFS_READY_FD";

/// Why the mount did not come up; its Display is the one line shown to the user.
#[derive(Debug)]
pub enum StartError {
    /// Failed in this process.
    Local(Error),
    /// The background daemon failed and sent this explanation.
    Daemon(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Local(e) => write!(f, "{e}"),
            StartError::Daemon(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StartError {}

impl From<Error> for StartError {
    fn from(e: Error) -> StartError {
        StartError::Local(e)
    }
}

/// The write end of the readiness pipe, held by a background daemon until the mount is
/// ready or has failed.
#[derive(Debug)]
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// In a re-executed background daemon, takes the pipe named in the environment and
    /// removes the variable so that nothing the daemon starts inherits it.
    pub fn from_env() -> Option<ReadyPipe> {
        let value = std::env::var_os(READY_FD_ENV)?;
        std::env::remove_var(READY_FD_ENV);
        let fd = value.to_str()?.parse().ok()?;
        match process::adopt_inherited_fd(fd) {
            Ok(file) => Some(ReadyPipe(file)),
            Err(e) => {
                log::warn!("{READY_FD_ENV}={fd} is not an open descriptor ({e}); ignoring it");
                None
            }
        }
    }

    /// Tells the caller that the mount is ready; closing the pipe lets it exit.
    pub fn ready(mut self) {
        // The caller may have been killed meanwhile; the mount stays useful regardless.
        let _ = self.0.write_all(b"ready\n");
    }

    /// Sends the caller the one-line reason the mount failed.
    pub fn fail(mut self, error: &dyn fmt::Display) {
        let line = one_line(&error.to_string());
        let _ = writeln!(self.0, "error {line}");
    }
}

/// Mounts `config` and serves it: in the foreground with `config.foreground`, otherwise
/// in a background daemon, returning once the mount is ready.
pub fn run(config: Config) -> std::result::Result<(), StartError> {
    if config.foreground {
        serve(config, None).map_err(StartError::Local)
    } else {
        start_background()
    }
}

/// Re-executes this program in the foreground as a detached daemon and waits until it
/// reports the mount ready or failed.
fn start_background() -> std::result::Result<(), StartError> {
    let exe = std::env::current_exe().map_err(|e| {
        Error::from(e).context("cannot find the layerfs executable to start the daemon")
    })?;
    let (read, write) = process::inheritable_pipe()
        .map_err(|e| Error::from(e).context("cannot create the readiness pipe"))?;
    // -f goes first so that a `--` among the original arguments cannot turn it into a
    // mount point.
    let mut child = Command::new(&exe)
        .arg("-f")
        .args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, write.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::from(e).context(format!("cannot start {}", exe.display())))?;
    // Only the daemon may hold the write end, so that its death reads as end of file.
    drop(write);
    let mut line = String::new();
    let read_result = BufReader::new(read).read_line(&mut line);
    let line = line.trim_end();
    if line == "ready" {
        return Ok(());
    }
    if let Some(message) = line.strip_prefix("error ") {
        // The daemon exits right after reporting; reap it so it does not linger.
        let _ = child.wait();
        return Err(StartError::Daemon(message.to_string()));
    }
    let status = match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown status ({e})"),
    };
    let detail = match read_result {
        Err(e) => format!("; reading its readiness pipe failed ({e})"),
        Ok(_) => String::new(),
    };
    Err(StartError::Daemon(format!(
        "the layerfs daemon stopped before the mount was ready ({status}){detail}; run with -f to see why"
    )))
}

/// Mounts and serves in this process until the file system is unmounted. `ready` is the
/// pipe of a background daemon; it learns the outcome of the mount either way.
pub fn serve(config: Config, ready: Option<ReadyPipe>) -> Result<()> {
    let mounted = mount(&config, ready.is_some());
    let (session, rings) = match mounted {
        Ok(mounted) => mounted,
        Err(e) => {
            if let Some(ready) = ready {
                ready.fail(&e);
            }
            return Err(e);
        }
    };
    if let Some(ready) = ready {
        ready.ready();
    }
    log::info!("serving {}", config.mountpoint.display());
    let served = session
        .run()
        .map_err(|e| io_error(e, format!("serving {} failed", config.mountpoint.display())));
    if let Some(rings) = rings {
        rings.finish(std::time::Duration::from_secs(5));
    }
    served?;
    log::info!("{} unmounted", config.mountpoint.display());
    Ok(())
}

/// Prepares the process and mounts; on success the kernel has completed the FUSE
/// handshake, so the mount answers requests as soon as the session runs.
/// The mounted session, and the io_uring queues when INIT agreed to them.
fn mount(
    config: &Config,
    background: bool,
) -> Result<(fuser::Session<LayerFs>, Option<crate::fuse::ring::Rings>)> {
    // Before any thread exists, so that every thread inherits the mask and the signals
    // reach only the waiting thread below.
    let signals = SignalSet::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .map_err(|e| Error::from(e).context("cannot block termination signals"))?;
    if background {
        // Leave the caller's session and do not keep its working directory busy.
        if let Err(e) = process::setsid() {
            log::warn!("setsid failed ({e}); the daemon stays in the caller's session");
        }
        if let Err(e) = std::env::set_current_dir("/") {
            log::warn!("cannot change directory to / ({e})");
        }
    }
    crate::fuse::ops::install_panic_hook();
    // The layers' directory-handle caches take their share of whatever limit is left:
    // under a low hard limit (LimitNOFILE=1024 services, containers) a walk must not fill
    // the fd table and leave every later open with EMFILE.
    let layers = config.lowers.len() + 2 * usize::from(config.upper.is_some());
    match process::raise_nofile_limit() {
        Ok(limit) => {
            // Each io_uring queue (one per possible CPU) holds its ring and an eventfd.
            let rings = 4 * crate::fuse::ring::queue_count() as u64;
            let per_layer = crate::layers::layer::size_dir_caches(limit, layers, rings);
            log::debug!("open file limit {limit}; {per_layer} directory handles per layer");
        }
        Err(e) => log::warn!("cannot raise the open file limit ({e})"),
    }
    // The overlay applies each caller's umask itself; a second one here would mask modes
    // such as 1777 or 0666 that callers explicitly ask for.
    process::set_umask(0);

    let fs = LayerFs::new(config)?;
    let ops = fs.ops().clone();
    // Canonical as mountinfo shows it; resolved before the mount, as nothing answers
    // requests on it until the session runs.
    let mountpoint =
        std::fs::canonicalize(&config.mountpoint).unwrap_or_else(|_| config.mountpoint.clone());
    let mut session =
        fuser::Session::new(fs, &config.mountpoint, &fuse_config(config)).map_err(|e| {
            io_error(
                e,
                format!("cannot mount on {}", config.mountpoint.display()),
            )
        })?;
    // Backing files for passthrough are registered on the session's device, and the
    // io_uring queues send their commands to it.
    let device = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::from(e).context("cannot duplicate the FUSE device descriptor"))?;
    let device = Arc::new(device);
    ops.set_device(device.clone());
    let rings = ops.ring_agreed().then(|| {
        crate::fuse::ring::start(
            ops.clone(),
            device.as_fd(),
            Access::of(config),
            config.io_uring_poll,
        )
    });
    let unmounter = session.unmount_callable();
    let device = match mountinfo::mount_device(&mountpoint) {
        Ok(device) => device,
        Err(e) => {
            log::warn!("cannot read the mount table ({e})");
            None
        }
    };
    std::thread::Builder::new()
        .name("layerfs-signals".to_string())
        .spawn(move || unmount_on_signal(signals, unmounter, &mountpoint, device))
        .map_err(|e| Error::from(e).context("cannot start the signal thread"))?;
    Ok((session, rings))
}

/// Waits for a termination signal and unmounts, which ends the session loop. `device` is
/// the mount's `MAJOR:MINOR`.
fn unmount_on_signal(
    signals: SignalSet,
    mut unmounter: SessionUnmounter,
    mountpoint: &Path,
    device: Option<String>,
) {
    let sig = match signals.wait() {
        Ok(sig) => sig,
        Err(e) => {
            log::error!("waiting for signals failed ({e}); SIGTERM will not unmount");
            return;
        }
    };
    if let Some(device) = device {
        if let Ok(false) = mountinfo::is_mounted_at(mountpoint, &device) {
            // Already unmounted here, yet the kernel keeps the connection up: a mount
            // namespace created meanwhile (`unshare -m`, a container) holds a copy of the
            // mount. There is nothing to unmount (and whatever is mounted at the mount
            // point now is not ours), so stop serving; those copies then fail ENOTCONN.
            log::info!(
                "signal {sig}: {} is no longer mounted here; exiting",
                mountpoint.display()
            );
            std::process::exit(0);
        }
    }
    log::info!("signal {sig}: unmounting {}", mountpoint.display());
    if let Err(e) = unmounter.unmount() {
        // Busy: open files or a process inside. Detach it from the tree so that the
        // daemon can finish once the last user lets go, as fuse-overlayfs does.
        log::warn!(
            "unmounting {} failed ({e}); detaching it",
            mountpoint.display()
        );
        if let Err(e) = detach(mountpoint) {
            log::error!("cannot detach {} ({e})", mountpoint.display());
        }
    }
}

fn detach(mountpoint: &Path) -> std::io::Result<()> {
    match process::lazy_unmount(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            // Unprivileged: only the setuid helper may unmount.
            let status = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(mountpoint)
                .stdin(Stdio::null())
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("fusermount3 {status}")))
            }
        }
        other => other,
    }
}

/// The FUSE session settings for `config`.
pub fn fuse_config(config: &Config) -> fuser::Config {
    let mut options = vec![
        MountOption::FSName(config.fsname.clone()),
        // As a kernel option rather than MountOption::Subtype: fuser's direct mount(2) path
        // drops Subtype, and the type must read fuse.layerfs in /proc/self/mountinfo for
        // tools that look for it. fusermount3 understands the same option.
        MountOption::CUSTOM("subtype=layerfs".to_string()),
    ];
    if config.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    options.push(if config.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    for flag in &config.kernel_flags {
        options.push(match flag.as_str() {
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    let mut cfg = fuser::Config::default();
    cfg.mount_options = options;
    cfg.acl = match Access::of(config) {
        Access::All => SessionACL::All,
        Access::RootAndOwner => SessionACL::RootAndOwner,
        Access::Owner => SessionACL::Owner,
    };
    cfg.n_threads = Some(config.threads.max(1));
    cfg.clone_fd = true;
    cfg
}

/// fuser reports many failures as io errors without an errno (fusermount3's message, for
/// instance); keep their text rather than a bare EIO.
fn io_error(e: std::io::Error, what: String) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::new(errno, what),
        None => Error::new(libc::EIO, format!("{what} ({})", one_line(&e.to_string()))),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn fuse_config_maps_options() {
        let mut config = Config::new(vec![PathBuf::from("/l")], PathBuf::from("/m"));
        config.kernel_flags = vec!["nodev".into(), "noatime".into()];
        config.allow_root = true;
        config.threads = 4;
        let cfg = fuse_config(&config);
        assert!(cfg.mount_options.contains(&MountOption::RO));
        assert!(cfg.mount_options.contains(&MountOption::NoDev));
        assert!(cfg.mount_options.contains(&MountOption::NoAtime));
        assert!(cfg.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(cfg
            .mount_options
            .contains(&MountOption::FSName("layerfs".into())));
        assert_eq!(cfg.acl, SessionACL::RootAndOwner);
        assert_eq!(cfg.n_threads, Some(4));
        assert!(cfg.clone_fd);

        config.read_only = false;
        config.allow_other = true;
        let cfg = fuse_config(&config);
        assert!(cfg.mount_options.contains(&MountOption::RW));
        assert_eq!(cfg.acl, SessionACL::All);
    }

    #[test]
    fn one_line_collapses_whitespace() {
        assert_eq!(one_line("a\nb  c\n"), "a b c");
    }
}
