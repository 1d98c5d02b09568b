//! `layerctl run [OPTIONS] IMAGE [COMMAND [ARG...]]`, read as `docker run` reads it: mounts
//! a new container of IMAGE, runs the image's Entrypoint + Cmd (or COMMAND) in a
//! container on the mount with the image's Env, WorkingDir and User (each overridable),
//! unmounts, and optionally commits. The exit status is the command's.
//!
//! Runtimes: crun when it is on PATH, else bubblewrap (`--runtime` picks one).
//!
//! - The init layer: the runtime needs mount points (/proc, /dev, /sys, the bind-mounted
//!   /etc/hosts, /etc/hostname, /etc/resolv.conf, /run/.containerenv, volume targets). If
//!   the image lacks one, the runtime would create it in the container's upper and it
//!   would show up in `diff` and in the committed layer. As docker does, a per-run layer
//!   between the image's layers and the upper already holds exactly the missing ones
//!   (parent directories that the image has are copied with the image's owner, mode and
//!   times, so the merged view of them does not change). It is not part of the container:
//!   diff and commit compare the upper with the image's layers only, so what the command
//!   itself writes there (content in /etc/hosts' place, files in a new /run) is still
//!   seen. It lives in the run's scratch directory and goes away with it.
//! - Ids: an ordinary user has one id to give, so the container's user namespace maps the
//!   caller to the image's User (root by default), as `crun spec --rootless` and
//!   `bwrap --uid` do. As root, the container runs as real root (no user namespace, as
//!   `docker run` does without userns-remap) unless `--userns=auto`: then crun maps
//!   container ids 0-65535 onto a subordinate range (/etc/subuid of `containers`, else
//!   of `root`) and the mount shows the layers' ids shifted onto that range
//!   (`uidmapping=`), so the image's files are owned by the container's users inside.
//! - Network: `none` (default) is a private network namespace with only loopback, `host`
//!   shares the host's.
//! - crun and cgroups: crun refuses hosts whose cgroups are in hybrid (v1 + v2) mode even
//!   with cgroups disabled. It therefore runs in a private cgroup and mount namespace
//!   (`unshare -C -m`, plus `-U -r` for an ordinary user) where a fresh cgroup2 hierarchy
//!   sits on /sys/fs/cgroup, and the spec asks for no cgroup at all
//!   (`--cgroup-manager=disabled`, no resources).

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;

use crate::container::{self, CommitOptions, NewMount};
use crate::copytree::Copier;
use crate::err;
use crate::error::{Context, Result};
use crate::image::RuntimeConfig;
use crate::images::lower_view;
use crate::lowerview::LowerView;
use crate::runtime::{run_bwrap, run_crun, ProcessSpec, RunContext};
use crate::store::Store;
use crate::sys;
use layerfs::layers::writer::{LayerPath, LayerWriter, Meta};
use std::os::fd::AsFd;

/// What `--help` says about runtimes and ids.
pub const RUNTIME_HELP: &str = "\
Runtime: crun when installed, else bubblewrap (bwrap); --runtime overrides.
Ids: as an ordinary user the caller's id becomes the image's User inside a user namespace.
As root the container runs as REAL root on the host (no user namespace), as docker does;
--userns=auto runs it in a user namespace on a subordinate id range (/etc/subuid).
Network: --network none (default: a private namespace with loopback only) or host.
A command that exits non-zero is not committed unless --commit-on-failure.";

/// Used when the image sets no PATH, as docker and podman do.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Crun,
    Bwrap,
}

impl Runtime {
    pub fn parse(s: &str) -> Result<Runtime> {
        match s {
            "crun" => Ok(Runtime::Crun),
            "bwrap" | "bubblewrap" => Ok(Runtime::Bwrap),
            other => Err(err!("unknown runtime {other:?}: use `crun` or `bwrap`")),
        }
    }

    /// crun if installed, else bubblewrap; an error naming both packages if neither is.
    pub fn detect() -> Result<Runtime> {
        if on_path("crun") {
            Ok(Runtime::Crun)
        } else if on_path("bwrap") {
            Ok(Runtime::Bwrap)
        } else {
            Err(err!(
                "no container runtime found: install crun or bubblewrap (apt-get install crun bubblewrap)"
            ))
        }
    }

    fn program(self) -> &'static str {
        match self {
            Runtime::Crun => "crun",
            Runtime::Bwrap => "bwrap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A private network namespace with loopback only.
    None,
    /// The host's network namespace.
    Host,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            "slirp4netns" | "pasta" | "bridge" => Err(err!(
                "--network {s} is not supported yet: use none (private, loopback only) or host (the host's network)"
            )),
            other => Err(err!(
                "unknown network {other:?}: use none (private, loopback only) or host"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNs {
    /// No user namespace of our own (real root as root; the caller mapped as a user).
    Host,
    /// As root: container ids 0-65535 on a subordinate range.
    Auto,
}

impl UserNs {
    pub fn parse(s: &str) -> Result<UserNs> {
        match s {
            "" | "host" => Ok(UserNs::Host),
            "auto" => Ok(UserNs::Auto),
            other => Err(err!("unknown --userns {other:?}: use auto or host")),
        }
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

pub struct RunOptions<'a> {
    pub name: Option<&'a str>,
    pub commit: Option<&'a str>,
    /// Commit even when the command exits non-zero.
    pub commit_on_failure: bool,
    pub runtime: Option<Runtime>,
    /// Remove the container afterwards (after the commit, if any).
    pub remove: bool,
    /// `-e K=V` / `-e K` (the caller's value), in order.
    pub env: &'a [String],
    pub env_files: &'a [PathBuf],
    /// `-v SRC:DST[:ro|rw]`.
    pub volumes: &'a [String],
    pub workdir: Option<&'a str>,
    pub user: Option<&'a str>,
    /// `--entrypoint`: replaces the image's (and drops its Cmd); empty clears it.
    pub entrypoint: Option<&'a str>,
    pub tty: bool,
    pub interactive: bool,
    pub network: Network,
    pub read_only: bool,
    pub userns: UserNs,
    /// No notes of layerctl's own on stderr (`build` prints its own step lines).
    pub quiet: bool,
    /// The command's stdout and stderr go through this (build keeps the last lines for
    /// a failure's report) instead of straight to the terminal.
    pub output: Option<&'a OutputTail>,
    /// Create the WorkingDir in the container (through the confined writer) when the
    /// image lacks it, as a build's RUN does.
    pub make_workdir: bool,
}

/// The tail of a command's output, forwarded as it comes (unless `echo` is off).
pub struct OutputTail {
    pub echo: bool,
    pub keep: usize,
    pub lines: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl OutputTail {
    pub fn new(echo: bool, keep: usize) -> OutputTail {
        OutputTail {
            echo,
            keep,
            lines: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Forwards `r` line by line to stdout, keeping the last `keep` lines.
    pub fn pump(&self, r: impl std::io::Read) {
        use std::io::{BufRead, Write};
        let mut br = std::io::BufReader::new(r);
        let mut line = Vec::new();
        while matches!(br.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            if self.echo {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&line);
                let _ = o.flush();
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Ok(mut l) = self.lines.lock() {
                l.push_back(text);
                while l.len() > self.keep {
                    l.pop_front();
                }
            }
            line.clear();
        }
    }

    pub fn last(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            name: None,
            commit: None,
            commit_on_failure: false,
            runtime: None,
            remove: false,
            env: &[],
            env_files: &[],
            volumes: &[],
            workdir: None,
            user: None,
            entrypoint: None,
            tty: false,
            interactive: false,
            network: Network::None,
            read_only: false,
            userns: UserNs::Host,
            quiet: false,
            output: None,
            make_workdir: false,
        }
    }
}

/// A `-v` bind mount, checked.
struct Volume {
    src: PathBuf,
    dst: String,
    read_only: bool,
}

fn parse_volume(v: &str) -> Result<Volume> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => {
            return Err(err!(
                "bad --volume {v:?}: use SRC:DST or SRC:DST:ro (absolute paths)"
            ))
        }
    };
    if !src.starts_with('/') {
        return Err(err!(
            "bad --volume {v:?}: {src:?} is not an absolute host path (named volumes are not supported; give /path/on/host)"
        ));
    }
    let src = fs::canonicalize(src).map_err(|e| {
        err!("bad --volume {v:?}: host path {src} cannot be used ({e}); create it first")
    })?;
    let dst = clean_abs(dst).ok_or_else(|| {
        err!("bad --volume {v:?}: the container path must be absolute and without '..'")
    })?;
    if dst == "/" {
        return Err(err!(
            "bad --volume {v:?}: cannot mount over the container's /"
        ));
    }
    let mut read_only = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(err!(
                    "bad --volume {v:?}: unknown option {other:?} (use ro or rw)"
                ))
            }
        }
    }
    Ok(Volume {
        src,
        dst,
        read_only,
    })
}

/// `p` as a normalised absolute container path, or None if it is relative or has `..`.
pub(crate) fn clean_abs(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut out = String::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(n.to_str()?);
            }
            _ => return None,
        }
    }
    Some(if out.is_empty() { "/".into() } else { out })
}

/// Sets `K=V` in `env`, replacing an earlier `K=`.
fn set_env(env: &mut Vec<String>, kv: String) {
    let key = kv.split('=').next().unwrap_or("").to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(kv);
}

/// One `-e`/`--env-file` item: `K=V`, or `K` for the caller's value (dropped when the
/// caller has none, as docker does).
fn env_item(item: &str, what: &str) -> Result<Option<String>> {
    let key = item.split('=').next().unwrap_or("");
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(err!(
            "bad environment variable {item:?} in {what}: use NAME=VALUE or NAME"
        ));
    }
    if item.contains('=') {
        return Ok(Some(item.to_string()));
    }
    Ok(std::env::var(key).ok().map(|v| format!("{key}={v}")))
}

fn read_env_file(p: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(p).ctx(|| {
        format!(
            "reading --env-file {} (give a file of NAME=VALUE lines)",
            p.display()
        )
    })?;
    let what = format!("--env-file {}", p.display());
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        out.extend(env_item(l, &what)?);
    }
    Ok(out)
}

/// Entrypoint + Cmd as docker combines them: COMMAND replaces Cmd; `--entrypoint`
/// replaces Entrypoint and drops the image's Cmd.
fn argv(cfg: &RuntimeConfig, command: &[String], entrypoint: Option<&str>) -> Result<Vec<String>> {
    let ep: Vec<String> = match entrypoint {
        Some("") => Vec::new(),
        Some(e) => vec![e.to_string()],
        None => cfg.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !command.is_empty() {
        command.to_vec()
    } else if entrypoint.is_some() {
        Vec::new()
    } else {
        cfg.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = ep.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(err!(
            "no command: the image has no Entrypoint or Cmd; give one: layerctl run IMAGE COMMAND [ARG...]"
        ));
    }
    Ok(args)
}

/// A hostname from the container name (letters, digits and '-', at most 63).
fn hostname_of(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let h = h.trim_matches('-').to_string();
    if h.is_empty() {
        "layerctl".into()
    } else {
        h
    }
}

/// The subordinate id range root's containers get under `--userns=auto`: the
/// `containers` entry of /etc/subuid (podman's convention), else `root`'s.
fn subordinate_range(file: &str) -> Result<(u32, u32)> {
    let text = fs::read_to_string(file).unwrap_or_default();
    for user in ["containers", "root"] {
        for l in text.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() == 3 && f[0] == user {
                if let (Ok(start), Ok(len)) = (f[1].parse::<u32>(), f[2].parse::<u32>()) {
                    if len >= 65536 {
                        return Ok((start, 65536));
                    }
                }
            }
        }
    }
    Err(err!(
        "--userns=auto needs a subordinate id range of at least 65536 for `containers` or `root` in {file}: add one with `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 root`"
    ))
}

/// Removes scratch directories of earlier runs whose process is gone (killed with
/// SIGKILL). A directory with something still mounted inside is left alone.
fn clear_stale_scratch(work: &Path) {
    let Ok(rd) = fs::read_dir(work) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| p != std::process::id() as i32 && !sys::pid_alive(p)) {
            crate::interrupt::remove_unmounting(&e.path());
        }
    }
}

/// Runs `command` (or the image's Entrypoint + Cmd) in a new container of `image`;
/// returns the command's exit code.
pub fn run(store: &Store, image: &str, command: &[String], opts: &RunOptions) -> Result<i32> {
    let runtime = match opts.runtime {
        Some(r) => r,
        None => Runtime::detect()?,
    };
    if !on_path(runtime.program()) {
        return Err(err!(
            "runtime {} is not installed (apt-get install {})",
            runtime.program(),
            if runtime == Runtime::Crun {
                "crun"
            } else {
                "bubblewrap"
            }
        ));
    }
    let root = sys::getuid() == 0;
    let idmap = match opts.userns {
        UserNs::Host => None,
        UserNs::Auto if !root => {
            return Err(err!(
                "--userns=auto is for root: as an ordinary user the container always runs in a user namespace that maps your id"
            ))
        }
        UserNs::Auto if runtime == Runtime::Bwrap => {
            return Err(err!(
                "--userns=auto needs crun (bubblewrap maps a single id): use --runtime crun"
            ))
        }
        UserNs::Auto => Some((
            subordinate_range("/etc/subuid")?,
            subordinate_range("/etc/subgid")?,
        )),
    };
    if let Some(n) = opts.name {
        crate::store::valid_container_name(n)?;
    }
    // A bad --commit name must fail before the command runs, not after.
    if let Some(r) = opts.commit {
        crate::store::parse_ref(r)?;
    }
    // Everything about the command line is checked before anything is mounted.
    let volumes: Vec<Volume> = opts
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<_>>()?;
    let mut extra_env = Vec::new();
    for f in opts.env_files {
        extra_env.extend(read_env_file(f)?);
    }
    for e in opts.env {
        extra_env.extend(env_item(e, "-e")?);
    }
    if let Some(w) = opts.workdir {
        if clean_abs(w).is_none() {
            return Err(err!(
                "bad --workdir {w:?}: give an absolute path inside the container"
            ));
        }
    }
    let image_id = store.resolve_image(image)?;
    let cfg = store.read_image(&image_id)?;
    let args = argv(&cfg.config, command, opts.entrypoint)?;

    let work = store.root.join("run");
    fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
    clear_stale_scratch(&work);
    let _cleanup = crate::interrupt::register_prefixed(&work, &format!("{}-", std::process::id()));
    let scratch = tempdir_in(&work)?;
    let res = run_in(
        store, image, &cfg, &scratch, runtime, idmap, &volumes, extra_env, &args, opts,
    );
    crate::interrupt::remove_unmounting(&scratch);
    res
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    store: &Store,
    image: &str,
    cfg: &crate::image::ImageConfig,
    scratch: &Path,
    runtime: Runtime,
    idmap: Option<((u32, u32), (u32, u32))>,
    volumes: &[Volume],
    extra_env: Vec<String>,
    args: &[String],
    opts: &RunOptions,
) -> Result<i32> {
    let target = scratch.join("rootfs");
    fs::create_dir(&target).ctx(|| format!("creating {}", target.display()))?;
    // The files the runtime bind-mounts, and the init layer holding their mount points.
    let files = scratch.join("files");
    fs::create_dir(&files).ctx(|| format!("creating {}", files.display()))?;
    let init = scratch.join("init");
    fs::create_dir(&init).ctx(|| format!("creating {}", init.display()))?;
    let mut points: Vec<(String, bool)> = ["/proc", "/dev", "/sys"]
        .iter()
        .map(|p| (p.to_string(), true))
        .collect();
    for f in [
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/run/.containerenv",
    ] {
        points.push((f.to_string(), false));
    }
    for v in volumes {
        points.push((v.dst.clone(), v.src.is_dir()));
    }
    let view = lower_view(store, cfg)?;
    let usable = build_init_layer(&view, &init, &points)?;

    let extra_opts: Vec<String> = match idmap {
        Some(((u, n), (g, m))) => vec![
            // fuse-overlayfs's meaning: on-disk id 0 (the image's) is shown as host id
            // `u` (the container's root), and back for what the container writes.
            format!("uidmapping=0:{u}:{n}"),
            format!("gidmapping=0:{g}:{m}"),
        ],
        None => Vec::new(),
    };
    let how = NewMount {
        name: opts.name,
        read_only: opts.read_only,
        init_layer: Some(&init),
        extra_opts: &extra_opts,
    };
    let name = container::mount_new(store, image, &target, &how)?;
    let hostname = hostname_of(&name);
    let outcome = (|| -> Result<ExitStatus> {
        let rec = store.read_container(&name)?;
        let mut spec = ProcessSpec::new(&rec.image_config.config, &target, args, opts)?;
        for e in extra_env {
            set_env(&mut spec.env, e);
        }
        if !spec.env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            spec.env.push(format!("HOSTNAME={hostname}"));
        }
        let mut binds = runtime_files(&files, &hostname, &name, opts.network)?;
        binds.retain(|(_, dst, _)| usable.iter().any(|u| u == dst));
        for v in volumes {
            binds.push((v.src.clone(), v.dst.clone(), v.read_only));
        }
        let ctx = RunContext {
            rootfs: &target,
            hostname: &hostname,
            binds: &binds,
            network: opts.network,
            read_only: opts.read_only,
            idmap,
            interactive: opts.interactive,
            output: opts.output,
        };
        if opts.make_workdir {
            make_dir_in(&target, &spec.cwd)?;
        }
        if sys::getuid() == 0 && !opts.quiet {
            match idmap {
                None => eprintln!(
                    "layerctl: the container runs as real root on this host (no user namespace); --userns=auto maps it to subordinate ids"
                ),
                Some(((u, n), _)) => eprintln!(
                    "layerctl: the container runs in a user namespace: its ids 0-{} are host ids {u}-{}",
                    n - 1,
                    u + n - 1
                ),
            }
        }
        match runtime {
            Runtime::Crun => run_crun(scratch, &name, &spec, &ctx),
            Runtime::Bwrap => run_bwrap(&spec, &ctx),
        }
    })();
    // Always unmount, whatever the command did.
    let unmounted = container::umount(store, &name);
    let status = match outcome {
        Ok(s) => s,
        Err(e) => {
            // The container never ran: it holds nothing worth keeping.
            let _ = container::rm(store, &name, true);
            return Err(e);
        }
    };
    unmounted?;
    let code = exit_code(status);
    if let Some(new_ref) = opts.commit {
        if code == 0 || opts.commit_on_failure {
            let created_by = shell_words(args);
            let copts = CommitOptions {
                message: None,
                created_by: Some(&created_by),
                changes: &[],
            };
            let (r, id, _, _) = container::commit(store, &name, new_ref, &copts)?;
            eprintln!("committed {name} as {r}");
            println!("{id}");
        } else {
            eprintln!(
                "layerctl: not committed: the command exited with status {code}, so {new_ref} is unchanged (--commit-on-failure commits anyway)"
            );
        }
    }
    if opts.remove {
        container::rm(store, &name, true)?;
    } else if !opts.quiet {
        eprintln!("container {name} kept (`layerctl diff {name}`, `layerctl rm {name}`)");
    }
    Ok(code)
}

/// Creates directory `dir` (absolute) in the mounted container `rootfs` where it is
/// missing, through the confined writer: a symlink the image has on the way is refused,
/// never followed out of the container.
fn make_dir_in(rootfs: &Path, dir: &str) -> Result<()> {
    let path = LayerPath::parse(dir.trim_start_matches('/').as_bytes())
        .map_err(|why| err!("working directory {dir}: {why}"))?;
    if path.is_root() {
        return Ok(());
    }
    let mut w = LayerWriter::open(rootfs).ctx(|| format!("opening {}", rootfs.display()))?;
    if w.open_dir(&path).is_ok() {
        return Ok(());
    }
    let meta = Meta {
        mode: 0o755,
        ..Meta::default()
    };
    w.mkdir(&path, meta)
        .map_err(|e| err!("creating the working directory {dir}: {e}"))?;
    w.finish()
        .map_err(|e| err!("creating the working directory {dir}: {e}"))
}

/// Creates in `init` each of `points` (path, is a directory) that the image lacks, with
/// the parents it lacks; parents the image has are created with the image's owner, mode
/// and times, so the merged view of them is unchanged. Returns the points that are now
/// usable as mount points (present in the image with the right type, or created here);
/// a point behind a non-directory, or of the wrong type in the image, is left out.
fn build_init_layer(
    view: &LowerView,
    init: &Path,
    points: &[(String, bool)],
) -> Result<Vec<String>> {
    let mut usable = Vec::new();
    let w = LayerWriter::open(init).ctx(|| format!("opening {}", init.display()))?;
    let mut c = Copier::new(w);
    let made = |mode| Meta {
        mode,
        uid: layerfs::sys::process::geteuid(),
        gid: layerfs::sys::process::getegid(),
        ..Meta::default()
    };
    'points: for (p, is_dir) in points {
        let path = LayerPath::parse(p.trim_start_matches('/').as_bytes())
            .map_err(|why| err!("runtime mount point {p}: {why}"))?;
        let n = path.depth();
        for depth in 1..=n {
            let cur = LayerPath::from_components(&path.components()[..depth]);
            let last = depth == n;
            let found = view
                .lookup(&cur)
                .ctx(|| format!("looking up {} in the image", cur.display()))?;
            match found {
                Some(f) if last => {
                    let is_link = f.stat.st_mode & libc::S_IFMT == libc::S_IFLNK;
                    if f.is_dir() == *is_dir && !is_link {
                        usable.push(p.clone());
                    }
                    continue 'points;
                }
                Some(f) if f.is_dir() => {
                    if c.w.open_dir(&cur).is_err() {
                        let pd = view
                            .open_dir(f.layer, &cur.parent())
                            .ctx(|| format!("opening {} in the image", cur.parent().display()))?;
                        c.copy_entry(pd.as_fd(), cur.name(), &f.stat, &cur)?;
                    }
                }
                Some(_) => continue 'points,
                None if last && !*is_dir => {
                    if c.w.ino_of(&cur).is_none() {
                        c.w.file(&cur, &made(0o644), &mut std::io::empty())
                            .map_err(|e| err!("init layer: {e}"))?;
                    }
                    usable.push(p.clone());
                }
                None => {
                    if c.w.open_dir(&cur).is_err() {
                        c.w.mkdir(&cur, made(0o755))
                            .map_err(|e| err!("init layer: {e}"))?;
                    }
                    if last {
                        usable.push(p.clone());
                    }
                }
            }
        }
    }
    c.finish()?;
    Ok(usable)
}

/// Writes /etc/hosts, /etc/hostname, /etc/resolv.conf and /run/.containerenv for the
/// container; returns (source, container path, read-only) binds.
fn runtime_files(
    dir: &Path,
    hostname: &str,
    name: &str,
    network: Network,
) -> Result<Vec<(PathBuf, String, bool)>> {
    let hosts = match network {
        Network::Host => fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None => format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
    };
    let resolv = match network {
        Network::Host => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        Network::None => String::new(),
    };
    let files = [
        ("hosts", "/etc/hosts", hosts),
        ("hostname", "/etc/hostname", format!("{hostname}\n")),
        ("resolv.conf", "/etc/resolv.conf", resolv),
        (
            "containerenv",
            "/run/.containerenv",
            format!("engine=\"layerctl\"\nname=\"{name}\"\n"),
        ),
    ];
    let mut out = Vec::new();
    for (f, dst, text) in files {
        let p = dir.join(f);
        fs::write(&p, text).ctx(|| format!("writing {}", p.display()))?;
        out.push((p, dst.to_string(), dst == "/run/.containerenv"));
    }
    Ok(out)
}

/// The shell's convention: the code, or 128 + the signal that ended the command.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    for i in 0..1000u32 {
        let p = dir.join(format!("{}-{i}", std::process::id()));
        match fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err!("creating {}: {e}", p.display())),
        }
    }
    Err(err!("no free directory name under {}", dir.display()))
}

/// The command line as one string a shell would split back the same way.
pub fn shell_words(cmd: &[String]) -> String {
    cmd.iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::resolve_user;

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let v: Vec<String> = ["sh", "-c", "echo hi > /f", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_words(&v), r"sh -c 'echo hi > /f' 'it'\''s'");
    }

    #[test]
    fn entrypoint_and_cmd_combine_as_in_docker() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cfg = RuntimeConfig {
            entrypoint: Some(v(&["/ep", "-x"])),
            cmd: Some(v(&["c1"])),
            ..RuntimeConfig::default()
        };
        assert_eq!(argv(&cfg, &[], None).unwrap(), v(&["/ep", "-x", "c1"]));
        assert_eq!(
            argv(&cfg, &v(&["a"]), None).unwrap(),
            v(&["/ep", "-x", "a"])
        );
        assert_eq!(argv(&cfg, &[], Some("/o")).unwrap(), v(&["/o"]));
        assert_eq!(argv(&cfg, &v(&["a"]), Some("")).unwrap(), v(&["a"]));
        assert!(argv(&RuntimeConfig::default(), &[], None).is_err());
    }

    #[test]
    fn volumes_and_env() {
        let v = parse_volume("/tmp:/data/./x:ro").unwrap();
        assert_eq!((v.dst.as_str(), v.read_only), ("/data/x", true));
        assert!(parse_volume("name:/data").is_err());
        assert!(parse_volume("/tmp:rel").is_err());
        assert!(parse_volume("/tmp:/a/../b").is_err());
        assert!(parse_volume("/tmp:/").is_err());
        assert!(parse_volume("/tmp:/d:rx").is_err());
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        set_env(&mut env, "A=3".into());
        assert_eq!(env, ["B=2", "A=3"]);
        assert!(env_item("=x", "-e").is_err());
        assert_eq!(env_item("K=v=w", "-e").unwrap().as_deref(), Some("K=v=w"));
        assert_eq!(hostname_of("web_1.x"), "web-1-x");
    }

    #[test]
    fn users_resolve_from_the_image() {
        let d = std::env::temp_dir().join(format!("layerctl-run-test-{}", std::process::id()));
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(
            d.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(d.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(&d, "").unwrap(), (0, 0));
        assert_eq!(resolve_user(&d, "app").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(&d, "app:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_user(&d, "1000").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(&d, "7:8").unwrap(), (7, 8));
        assert!(resolve_user(&d, "nobody").is_err());
        assert!(resolve_user(&d, "app:nogroup").is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
