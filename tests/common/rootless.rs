//! Helpers for tests that run as an unprivileged user: the test user (created on first
//! use, with subordinate id ranges), /dev/fuse opened up as distributions ship it, copies
//! of the binaries the user can execute, temp dirs the user owns, and running shell
//! scripts as that user. Nothing here skips: a missing tool fails the test with the reason.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The unprivileged account the tests act as.
pub const USER: &str = "lfsuser";

#[derive(Debug, Clone)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// First subordinate uid/gid and the range length (from /etc/subuid, /etc/subgid).
    pub subuid: (u32, u32),
    pub subgid: (u32, u32),
}

/// Fails the test with `what` unless `tool` is on PATH.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed (apt-get install {package}); this test is never skipped"
    );
}

fn run_root(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sub_range(file: &str, user: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != user {
            return None;
        }
        let start = f.next()?.parse().ok()?;
        let len = f.next()?.parse().ok()?;
        Some((start, len))
    })
}

fn id_of(flag: &str) -> u32 {
    let out = run_root(Command::new("id").arg(flag).arg(USER));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

/// The test user, created (with 65536 subordinate ids) if it does not exist yet. Test
/// binaries run in parallel, so creation is serialised by a lock file.
pub fn test_user() -> TestUser {
    static USER_INFO: OnceLock<TestUser> = OnceLock::new();
    USER_INFO
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            assert_eq!(
                euid, 0,
                "rootless tests need root to create the test user and switch to it"
            );
            require_tool("setpriv", "util-linux");
            require_tool("newuidmap", "uidmap");
            let lock = fs::File::create("/tmp/.layerfs-test-user.lock").expect("lock file");
            // SAFETY: flock on an fd we own; released when `lock` is dropped.
            assert_eq!(
                unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
                0
            );
            let exists = Command::new("id")
                .arg(USER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !exists {
                let group_left = fs::read_to_string("/etc/group")
                    .map(|g| g.lines().any(|l| l.starts_with(&format!("{USER}:"))))
                    .unwrap_or(false);
                assert!(
                    !group_left,
                    "/etc/group has {USER} but `id {USER}` fails: /etc/passwd has lost the \
                     user (damaged by something else on this machine?); restore it from \
                     /etc/passwd- or remove the group, then rerun"
                );
                run_root(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]));
            }
            if sub_range("/etc/subuid", USER).is_none() || sub_range("/etc/subgid", USER).is_none()
            {
                // useradd adds ranges only when login.defs asks for them; pick a free one.
                run_root(Command::new("usermod").args([
                    "--add-subuids",
                    "300000-365535",
                    "--add-subgids",
                    "300000-365535",
                    USER,
                ]));
            }
            let home = PathBuf::from(format!("/home/{USER}"));
            TestUser {
                uid: id_of("-u"),
                gid: id_of("-g"),
                home,
                subuid: sub_range("/etc/subuid", USER).expect("subuid range"),
                subgid: sub_range("/etc/subgid", USER).expect("subgid range"),
            }
        })
        .clone()
}

/// Makes /dev/fuse usable by every user (mode 0666, as Debian and Fedora ship it; this
/// machine has 0600).
pub fn open_dev_fuse() {
    let meta = fs::metadata("/dev/fuse").expect("/dev/fuse is missing: FUSE is impossible here");
    assert!(
        meta.file_type().is_char_device(),
        "/dev/fuse is not a device"
    );
    if meta.permissions().mode() & 0o666 != 0o666 {
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666))
            .expect("chmod 0666 /dev/fuse");
    }
}

/// The test user, with /dev/fuse opened up for it (what every mounting test needs).
pub fn fuse_user() -> TestUser {
    let user = test_user();
    open_dev_fuse();
    user
}

/// A directory the test user can read and enter, holding copies of the workspace's
/// binaries (the target dir may live where the user cannot reach).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Copies left by earlier test processes (no teardown hook exists) go first.
        if let Ok(entries) = fs::read_dir("/tmp") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("layerfs-rootless-bin-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = PathBuf::from(format!("/tmp/layerfs-rootless-bin-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let layerfs = super::layerfs_bin();
        fs::copy(&layerfs, dir.join("layerfs"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", layerfs.display()));
        // layerctl is built by the other workspace member; it sits next to layerfs.
        let layerctl = layerfs.with_file_name("layerctl");
        if layerctl.exists() {
            fs::copy(&layerctl, dir.join("layerctl")).unwrap();
        }
        dir
    })
    .clone()
}

/// A fresh temp dir owned by the test user (mode 0755, so root can look inside too).
pub struct UserDir {
    pub dir: tempfile::TempDir,
}

impl UserDir {
    pub fn new(user: &TestUser) -> UserDir {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-rootless-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(dir.path(), user.uid, user.gid);
        UserDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for UserDir {
    fn drop(&mut self) {
        // A failed test may leave a FUSE mount of the user's inside; detach it so that the
        // temp dir can go.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]* ' /proc/self/mountinfo | sort -r | while read m; do umount -l \"$m\"; done",
                self.dir.path().display()
            ))
            .status();
    }
}

/// chown -R (no symlink following).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    run_root(
        Command::new("chown")
            .arg("-R")
            .arg("-h")
            .arg(format!("{uid}:{gid}"))
            .arg(path),
    );
}

/// Runs `script` with `sh -eu` as the test user (real and effective ids, no supplementary
/// groups, a clean environment with HOME, PATH with the binaries first, and `extra_env`).
/// Returns the output without judging it.
pub fn run_as_user(user: &TestUser, script: &str, extra_env: &[(&str, &str)]) -> Output {
    let bins = bin_dir();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .arg("--")
        .args(["sh", "-euc", script])
        .current_dir("/tmp")
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", USER)
        .env("LOGNAME", USER)
        .env(
            "PATH",
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                bins.display()
            ),
        );
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd.output().expect("run setpriv")
}

/// Like [`run_as_user`] but the script must succeed; returns its stdout.
pub fn user_ok(user: &TestUser, script: &str, extra_env: &[(&str, &str)]) -> String {
    let out = run_as_user(user, script, extra_env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let mut msg = Vec::new();
        let _ = writeln!(msg, "script as {USER} failed ({}):", out.status);
        let _ = writeln!(
            msg,
            "--- script\n{script}\n--- stdout\n{stdout}--- stderr\n{stderr}"
        );
        panic!("{}", String::from_utf8_lossy(&msg));
    }
    stdout
}

/// The shell prelude shared by the scripts: `fails ERRTEXT CMD...` runs CMD, which must
/// fail with a message containing ERRTEXT (the strerror text of the expected errno).
pub const SH_PRELUDE: &str = r#"
fails() {
    want=$1; shift
    if out=$("$@" 2>&1); then echo "expected '$want' from: $*, but it succeeded" >&2; exit 1; fi
    case $out in *"$want"*) ;; *) echo "expected '$want' from: $*, got: $out" >&2; exit 1;; esac
}
"#;

/// `script` wrapped to run under `unshare {unshare_args}` (a fresh user namespace, and the
/// other namespaces the arguments ask for) with `sh -euc`.
pub fn in_userns(unshare_args: &str, script: &str) -> String {
    format!(
        "unshare {unshare_args} sh -euc '{}'",
        script.replace('\'', r"'\''")
    )
}

/// `unshare` arguments for a podman-like user namespace with a mount namespace: root is the
/// user, ids 1..65536 are the user's subordinate ids (through newuidmap/newgidmap).
pub fn subid_userns_args(user: &TestUser) -> String {
    format!(
        "--map-root-user --map-users={},1,65536 --map-groups={},1,65536 -m",
        user.subuid.0, user.subgid.0
    )
}

/// A busybox root file system at `root` (created, mode 0755): /bin with every applet, /etc
/// (passwd, group, motd), /home/app with a .profile, /opt/lowerdir with a file, a 1777
/// /tmp, and the mount points runtimes need.
pub fn busybox_rootfs(root: &Path) {
    require_tool("busybox", "busybox-static");
    let busybox = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .unwrap();
    let busybox = String::from_utf8_lossy(&busybox.stdout).trim().to_string();
    let kind = Command::new("file").arg("-L").arg(&busybox).output();
    if let Ok(k) = kind {
        let text = String::from_utf8_lossy(&k.stdout);
        assert!(
            !text.contains("dynamically linked"),
            "{busybox} is dynamically linked; the container needs busybox-static"
        );
    }
    for d in [
        "bin",
        "etc",
        "home/app",
        "opt/lowerdir",
        "proc",
        "dev",
        "sys",
        "tmp",
        "root",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    fs::write(root.join("etc/motd"), "base\n").unwrap();
    fs::write(root.join("home/app/.profile"), "# app\n").unwrap();
    fs::write(root.join("opt/lowerdir/old"), "old\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
}
