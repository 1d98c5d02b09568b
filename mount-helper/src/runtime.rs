//! The container runtimes behind `layerctl run`: the process as the image describes it
//! (argv, environment, working directory, ids resolved in the image's passwd/group), the
//! OCI runtime spec for crun, and bubblewrap's command line. `run.rs` decides what to run
//! and where (mount, init layer, binds); this module only starts it and waits.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde_json::{json, Value};

use crate::err;
use crate::error::{Context, Result};
use crate::image::RuntimeConfig;
use crate::run::*;
use crate::sys;

/// How the container is set up around the process.
pub(crate) struct RunContext<'a> {
    pub(crate) rootfs: &'a Path,
    pub(crate) hostname: &'a str,
    pub(crate) binds: &'a [(PathBuf, String, bool)],
    pub(crate) network: Network,
    pub(crate) read_only: bool,
    pub(crate) idmap: Option<((u32, u32), (u32, u32))>,
    pub(crate) interactive: bool,
    pub(crate) output: Option<&'a OutputTail>,
}

/// The process to start: argv, environment, working directory and ids from the image.
pub(crate) struct ProcessSpec {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// A pty for the process (`-t` with stdin a terminal).
    pub(crate) terminal: bool,
}

impl ProcessSpec {
    pub(crate) fn new(
        cfg: &RuntimeConfig,
        rootfs: &Path,
        args: &[String],
        opts: &RunOptions,
    ) -> Result<ProcessSpec> {
        let mut env = cfg.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        let cwd = opts
            .workdir
            .and_then(clean_abs)
            .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".to_string());
        let user = opts.user.or(cfg.user.as_deref()).unwrap_or("");
        let (uid, gid) = resolve_user(rootfs, user)?;
        let terminal = opts.tty && std::io::stdin().is_terminal();
        if opts.tty && !terminal {
            eprintln!("layerctl: -t ignored: stdin is not a terminal");
        }
        Ok(ProcessSpec {
            args: args.to_vec(),
            env,
            cwd,
            uid,
            gid,
            terminal,
        })
    }
}

/// `USER` of an image: `uid`, `uid:gid`, `name`, `name:group` (names looked up in the
/// image's /etc/passwd and /etc/group, read through the mount).
pub(crate) fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32)> {
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

pub(crate) fn lookup_by_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok()? == uid)
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

/// Starts `cmd` and waits, letting Ctrl-C reach the container (the terminal's process
/// group) while this process stays alive to unmount afterwards.
pub(crate) fn wait_for(
    cmd: &mut Command,
    what: &str,
    interactive: bool,
    output: Option<&OutputTail>,
) -> Result<ExitStatus> {
    // docker run without -i gives the container no stdin.
    if !interactive {
        cmd.stdin(Stdio::null());
    }
    if output.is_some() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    // Ctrl-C reaches the container from the terminal (same process group): this process
    // ignores it and lives on to unmount. SIGTERM and SIGHUP sent to layerctl are passed
    // to the runtime, which passes them to the container (docker run's --sig-proxy).
    let old = sys::set_signal(libc::SIGINT, libc::SIG_IGN);
    crate::interrupt::forward_to(Some(child.id()));
    let status = match output {
        Some(tail) => {
            let (o, e) = (child.stdout.take(), child.stderr.take());
            std::thread::scope(|s| {
                if let Some(o) = o {
                    s.spawn(move || tail.pump(o));
                }
                if let Some(e) = e {
                    s.spawn(move || tail.pump(e));
                }
                child.wait()
            })
        }
        None => child.wait(),
    };
    crate::interrupt::forward_to(None);
    sys::set_signal(libc::SIGINT, old);
    status.ctx(|| format!("waiting for {what}"))
}

/// The OCI runtime spec crun runs: the mount as root, the usual pseudo file systems, the
/// runtime's files and the volumes bound in, a user namespace when one is needed, a
/// private network namespace unless --network host, no cgroups.
pub(crate) fn oci_spec(spec: &ProcessSpec, ctx: &RunContext, caller_userns: bool) -> Value {
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
    if ctx.network == Network::None {
        // crun brings up loopback in a new network namespace.
        namespaces.push(json!({"type": "network"}));
    }
    let mut linux = json!({
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    if caller_userns {
        namespaces.push(json!({"type": "user"}));
        // crun runs as root of the private namespace `unshare -r` made: its id 0 is the
        // caller, and the container's user maps onto it.
        linux["uidMappings"] = json!([{"containerID": spec.uid, "hostID": 0, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": spec.gid, "hostID": 0, "size": 1}]);
    } else if let Some(((u, n), (g, m))) = ctx.idmap {
        namespaces.push(json!({"type": "user"}));
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": u, "size": n}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": g, "size": m}]);
    }
    linux["namespaces"] = json!(namespaces);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    // A bind of the host's /sys would show the host's network devices; a fresh sysfs
    // belongs to the container's network namespace.
    mounts.push(if ctx.network == Network::None {
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]})
    } else {
        json!({"destination": "/sys", "type": "none", "source": "/sys",
         "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    });
    for (src, dst, ro) in ctx.binds {
        let mut o = vec!["rbind", "rprivate"];
        if *ro {
            o.push("ro");
        }
        mounts.push(json!({"destination": dst, "type": "none", "source": src, "options": o}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.terminal,
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {"bounding": bound, "effective": eff.clone(), "permitted": eff},
            "noNewPrivileges": true
        },
        "root": {"path": ctx.rootfs, "readonly": ctx.read_only},
        "hostname": ctx.hostname,
        "mounts": mounts,
        "linux": linux
    })
}

pub(crate) fn run_crun(
    scratch: &Path,
    name: &str,
    spec: &ProcessSpec,
    ctx: &RunContext,
) -> Result<ExitStatus> {
    let rootless = sys::getuid() != 0;
    let bundle = scratch.join("bundle");
    let state = scratch.join("state");
    for d in [&bundle, &state] {
        fs::create_dir(d).ctx(|| format!("creating {}", d.display()))?;
    }
    let config = oci_spec(spec, ctx, rootless);
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
    wait_for(
        &mut cmd,
        "crun (through unshare)",
        ctx.interactive || spec.terminal,
        ctx.output,
    )
}

pub(crate) fn run_bwrap(spec: &ProcessSpec, ctx: &RunContext) -> Result<ExitStatus> {
    let root = sys::getuid() == 0;
    let mut cmd = Command::new("bwrap");
    cmd.args([
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
    ]);
    if ctx.network == Network::None {
        // bwrap brings up loopback in the new network namespace.
        cmd.arg("--unshare-net");
    }
    // Real root running as root needs no user namespace, and without one every id stays
    // usable (chown inside works). Otherwise a one-id namespace maps the caller to the
    // image's user.
    if !root || spec.uid != 0 || spec.gid != 0 {
        cmd.arg("--unshare-user").args([
            "--uid",
            &spec.uid.to_string(),
            "--gid",
            &spec.gid.to_string(),
        ]);
    }
    cmd.arg(if ctx.read_only { "--ro-bind" } else { "--bind" })
        .arg(ctx.rootfs)
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--hostname", ctx.hostname]);
    // bwrap cannot mount a fresh sysfs, and the host's would show the host's network
    // devices: /sys only with the host's network.
    if ctx.network == Network::Host {
        cmd.args(["--ro-bind", "/sys", "/sys"]);
    }
    for (src, dst, ro) in ctx.binds {
        cmd.arg(if *ro { "--ro-bind" } else { "--bind" })
            .arg(src)
            .arg(dst);
    }
    cmd.args(["--chdir", &spec.cwd, "--clearenv"]);
    for e in &spec.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        cmd.args(["--setenv", k, v]);
    }
    if spec.uid == 0 && !root {
        // Root inside an unprivileged namespace: keep the namespace's capabilities so
        // that chown and friends work on files the caller owns.
        cmd.args(["--cap-add", "ALL"]);
    }
    cmd.arg("--").args(&spec.args);
    // bwrap gives the process the caller's terminal itself (no new session).
    wait_for(
        &mut cmd,
        "bwrap",
        ctx.interactive || spec.terminal,
        ctx.output,
    )
}
