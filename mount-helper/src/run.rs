//! `layerctl run IMAGE [--name] [--commit NEWIMAGE] -- CMD...`: mounts a new container of
//! IMAGE, runs CMD in a rootless container on the mount with the image's Env, WorkingDir
//! and User, unmounts, and optionally commits. The exit status is the command's.
//!
//! Runtimes: crun when it is on PATH, else bubblewrap (`--runtime` picks one).
//!
//! - Ids: an ordinary user has one id to give, so the container's user namespace maps the
//!   caller to the image's User (root by default), as `crun spec --rootless` and
//!   `bwrap --uid` do. Files the caller owns appear owned by that user inside.
//! - crun and cgroups: crun refuses hosts whose cgroups are in hybrid (v1 + v2) mode even
//!   with cgroups disabled. It therefore runs in a private cgroup and mount namespace
//!   (`unshare -C -m`, plus `-U -r` for an ordinary user) where a fresh cgroup2 hierarchy
//!   sits on /sys/fs/cgroup, and the spec asks for no cgroup at all
//!   (`--cgroup-manager=disabled`, no resources).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use serde_json::{json, Value};

use crate::container::{self, CommitOptions};
use crate::err;
use crate::error::{Context, Result};
use crate::image::RuntimeConfig;
use crate::store::Store;

/// What `--help` says about runtimes.
pub const RUNTIME_HELP: &str =
    "Runtime: crun when installed, else bubblewrap (bwrap); --runtime overrides. \
As an ordinary user the caller's id becomes the image's User inside the container.";

/// Used when the image sets no PATH, as docker and podman do.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

pub struct RunOptions<'a> {
    pub name: Option<&'a str>,
    pub commit: Option<&'a str>,
    pub runtime: Option<Runtime>,
    /// Remove the container afterwards (after the commit, if any).
    pub remove: bool,
}

/// Runs `cmd` in a new container of `image`; returns the command's exit code.
pub fn run(store: &Store, image: &str, cmd: &[String], opts: &RunOptions) -> Result<i32> {
    if cmd.is_empty() {
        return Err(err!(
            "no command given: layerctl run IMAGE -- CMD [ARGS...]"
        ));
    }
    // A bad --commit name must fail before the container is created, not after it ran.
    if let Some(r) = opts.commit {
        crate::store::parse_ref(r)?;
    }
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
    let work = store.root.join("run");
    fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
    let scratch = tempdir_in(&work)?;
    let target = scratch.join("rootfs");
    fs::create_dir(&target).ctx(|| format!("creating {}", target.display()))?;
    let name = container::mount(store, image, &target, opts.name, false)?;
    let outcome = (|| -> Result<ExitStatus> {
        let rec = store.read_container(&name)?;
        let spec = ProcessSpec::new(&rec.image_config.config, &target, cmd)?;
        match runtime {
            Runtime::Crun => run_crun(&scratch, &target, &name, &spec),
            Runtime::Bwrap => run_bwrap(&target, &spec),
        }
    })();
    // Always unmount, whatever the command did.
    let unmounted = container::umount(store, &name);
    let _ = fs::remove_dir_all(&scratch);
    let status = outcome?;
    unmounted?;
    if let Some(new_ref) = opts.commit {
        let created_by = shell_words(cmd);
        let copts = CommitOptions {
            message: None,
            created_by: Some(&created_by),
            changes: &[],
        };
        let (r, id, _, _) = container::commit(store, &name, new_ref, &copts)?;
        eprintln!("committed {name} as {r}");
        println!("{id}");
    }
    if opts.remove {
        container::rm(store, &name, true)?;
    } else {
        eprintln!("container {name} kept (`layerctl diff {name}`, `layerctl rm {name}`)");
    }
    Ok(exit_code(status))
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

/// The process to start: argv, environment, working directory and ids from the image.
struct ProcessSpec {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
}

impl ProcessSpec {
    fn new(cfg: &RuntimeConfig, rootfs: &Path, cmd: &[String]) -> Result<ProcessSpec> {
        let mut env = cfg.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        let cwd = cfg
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let (uid, gid) = resolve_user(rootfs, cfg.user.as_deref().unwrap_or(""))?;
        Ok(ProcessSpec {
            args: cmd.to_vec(),
            env,
            cwd,
            uid,
            gid,
        })
    }
}

/// `USER` of an image: `uid`, `uid:gid`, `name`, `name:group` (names looked up in the
/// image's /etc/passwd and /etc/group, read through the mount).
fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // passwd: name:x:uid:gid:...; group: name:x:gid:members. Returns (field 2, field 3).
    let lookup = |file: &str, name: &str| -> Option<(u32, Option<u32>)> {
        let text = fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 3 && f[0] == name {
                Some((f[2].parse().ok()?, f.get(3).and_then(|g| g.parse().ok())))
            } else {
                None
            }
        })
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_by_uid(rootfs, n).unwrap_or(n)),
        Err(_) => match lookup("etc/passwd", u) {
            Some((uid, gid)) => (uid, gid.unwrap_or(uid)),
            None => {
                return Err(err!("the image's User {user:?} is not in its /etc/passwd: fix the image or use a numeric id"))
            }
        },
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g).map(|(gid, _)| gid).ok_or_else(|| {
                err!("the image's User group {g:?} is not in its /etc/group: fix the image or use a numeric id")
            })?,
        },
    };
    Ok((uid, gid))
}

fn lookup_by_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok()? == uid)
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

fn getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Starts `cmd` and waits, letting Ctrl-C reach the container (the terminal's process
/// group) while this process stays alive to unmount afterwards.
fn wait_for(cmd: &mut Command, what: &str) -> Result<ExitStatus> {
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    // After spawn the child has exec'd with default signal dispositions; only this
    // process ignores them from here on.
    // SAFETY: installing SIG_IGN has no handler code to be unsafe about.
    let old = unsafe {
        [
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGTERM, libc::SIG_IGN),
        ]
    };
    let status = child.wait();
    // SAFETY: restores the dispositions read above.
    unsafe {
        libc::signal(libc::SIGINT, old[0]);
        libc::signal(libc::SIGTERM, old[1]);
    }
    status.ctx(|| format!("waiting for {what}"))
}

/// The OCI runtime spec crun runs: the mount as root, the usual pseudo file systems, a
/// user namespace mapping the caller to the image's user, no cgroups.
fn oci_spec(rootfs: &Path, spec: &ProcessSpec, in_userns: bool) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_AUDIT_WRITE"
    ]);
    // Capabilities only for root inside, as docker does for a non-root User.
    let (eff, bound) = if spec.uid == 0 {
        (caps.clone(), caps)
    } else {
        (json!([]), caps)
    };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    let mut linux = json!({
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    if in_userns {
        namespaces.push(json!({"type": "user"}));
        // crun runs as root of the private namespace `unshare -r` made: its id 0 is the
        // caller, and the container's user maps onto it.
        linux["uidMappings"] = json!([{"containerID": spec.uid, "hostID": 0, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": spec.gid, "hostID": 0, "size": 1}]);
    }
    linux["namespaces"] = json!(namespaces);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {"bounding": bound, "effective": eff.clone(), "permitted": eff},
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "layerctl",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "none", "source": "/sys",
             "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": linux
    })
}

fn run_crun(scratch: &Path, rootfs: &Path, name: &str, spec: &ProcessSpec) -> Result<ExitStatus> {
    let rootless = getuid() != 0;
    let bundle = scratch.join("bundle");
    let state = scratch.join("state");
    for d in [&bundle, &state] {
        fs::create_dir(d).ctx(|| format!("creating {}", d.display()))?;
    }
    let config = oci_spec(rootfs, spec, rootless);
    let text = serde_json::to_vec_pretty(&config).map_err(|e| err!("encoding config.json: {e}"))?;
    fs::write(bundle.join("config.json"), text)
        .ctx(|| format!("writing {}", bundle.join("config.json").display()))?;
    // The private cgroup + mount namespace (see the module comment).
    let mut cmd = Command::new("unshare");
    if rootless {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--cgroup", "--propagation", "private", "--"])
        .args([
            "sh",
            "-c",
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"",
            "sh",
            "crun",
        ])
        .arg("--root")
        .arg(&state)
        .args(["--cgroup-manager=disabled", "run", "--bundle"])
        .arg(&bundle)
        .arg(format!("layerctl-{name}-{}", std::process::id()));
    wait_for(&mut cmd, "crun (through unshare)")
}

fn run_bwrap(rootfs: &Path, spec: &ProcessSpec) -> Result<ExitStatus> {
    let mut cmd = Command::new("bwrap");
    cmd.args([
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
    ]);
    // Real root running as root needs no user namespace, and without one every id stays
    // usable (chown inside works). Otherwise a one-id namespace maps the caller to the
    // image's user.
    if getuid() != 0 || spec.uid != 0 || spec.gid != 0 {
        cmd.arg("--unshare-user").args([
            "--uid",
            &spec.uid.to_string(),
            "--gid",
            &spec.gid.to_string(),
        ]);
    }
    cmd.arg("--bind").arg(rootfs).arg("/").args([
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--chdir",
        &spec.cwd,
        "--clearenv",
    ]);
    for e in &spec.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        cmd.args(["--setenv", k, v]);
    }
    if spec.uid == 0 && getuid() != 0 {
        // Root inside an unprivileged namespace: keep the namespace's capabilities so
        // that chown and friends work on files the caller owns.
        cmd.args(["--cap-add", "ALL"]);
    }
    cmd.arg("--").args(&spec.args);
    wait_for(&mut cmd, "bwrap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let v: Vec<String> = ["sh", "-c", "echo hi > /f", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_words(&v), r"sh -c 'echo hi > /f' 'it'\''s'");
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
