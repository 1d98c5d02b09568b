//! The command line and the daemon's life cycle, through real mounts: readiness on return,
//! released stdio, unmount by fusermount3/umount/signals, and one-line errors that leave
//! nothing mounted. Needs root (or fusermount3) and /dev/fuse.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_layerfs");
const TIMEOUT: Duration = Duration::from_secs(20);

/// Fresh layers l1, l2, u, w and mount point m; unmounts m on drop whatever happened.
struct Stack {
    dir: TempDir,
}

impl Stack {
    fn new() -> Stack {
        let dir = TempDir::new().unwrap();
        for d in ["l1", "l2", "u", "w", "m"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("l1/file"), b"lower").unwrap();
        Stack { dir }
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn mnt(&self) -> String {
        self.p("m")
    }

    fn rw_opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.p("l1"),
            self.p("l2"),
            self.p("u"),
            self.p("w")
        )
    }

    fn ro_opts(&self) -> String {
        format!("lowerdir={}:{}", self.p("l1"), self.p("l2"))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let m = self.mnt();
        if mount_entry(&m).is_some() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", &m])
                .stderr(Stdio::null())
                .status();
        }
        if mount_entry(&m).is_some() {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        for pid in daemon_pids(&m) {
            kill("-KILL", pid);
        }
    }
}

/// Kills a foreground daemon on drop so that a failed assertion leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs layerfs to completion with piped stdout/stderr read to end of file. A daemon that
/// kept them open would make this time out, which is exactly what podman would suffer.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    let (stdout, stderr) = rx
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("layerfs {args:?} kept stdout/stderr open"));
    let status = child.wait().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The (fstype, source, mount options) of the mount at `path`, from mountinfo.
fn mount_entry(path: &str) -> Option<(String, String, String)> {
    let canonical = fs::canonicalize(path).ok();
    let mounts = layerfs::sys::mountinfo::own().unwrap();
    let m = mounts
        .into_iter()
        .find(|m| m.point == Path::new(path) || Some(&m.point) == canonical.as_ref())?;
    Some((m.fstype, m.source, m.options))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Live (not zombie) layerfs processes serving `mountpoint`.
fn daemon_pids(mountpoint: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first() != Some(&BIN.as_bytes()) || !args.contains(&mountpoint.as_bytes()) {
            continue;
        }
        if alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

fn mount_background(s: &Stack, opts: &str) -> u32 {
    let out = run(&["-o", opts, &s.mnt()]);
    assert!(out.status.success(), "mount failed: {}", out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "");
    // Ready on return: no polling here.
    assert!(mount_entry(&s.mnt()).is_some(), "not mounted on return");
    let pids = daemon_pids(&s.mnt());
    assert_eq!(pids.len(), 1, "expected one daemon, found {pids:?}");
    pids[0]
}

fn spawn_foreground(s: &Stack, flag: &str) -> ChildGuard {
    let child = Command::new(BIN)
        .args([flag, "-o", &s.ro_opts(), &s.mnt()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    wait_for("the foreground daemon mounts", || {
        mount_entry(&s.mnt()).is_some()
    });
    guard
}

fn wait_exit(child: &mut ChildGuard) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < TIMEOUT, "daemon did not exit");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn help_and_version() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        assert!(out.status.success());
        assert!(out.stdout.contains("lowerdir"), "{}", out.stdout);
    }
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert!(out.status.success());
        assert!(out.stdout.starts_with("layerfs "), "{}", out.stdout);
    }
}

#[test]
fn background_mount_is_ready_on_return_and_fusermount_ends_it() {
    let s = Stack::new();
    // A trailing empty option, as podman passes.
    let opts = format!("{},", s.rw_opts());
    let pid = mount_background(&s, &opts);
    let (fstype, source, options) = mount_entry(&s.mnt()).unwrap();
    assert_eq!(fstype, "fuse.layerfs");
    assert_eq!(source, "layerfs");
    assert!(options.starts_with("rw"), "{options}");

    let status = Command::new("fusermount3")
        .args(["-u", &s.mnt()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("the daemon exits after fusermount3 -u", || !alive(pid));
    assert!(mount_entry(&s.mnt()).is_none());
}

#[test]
fn read_only_without_upperdir_and_umount_ends_it() {
    let s = Stack::new();
    let pid = mount_background(&s, &s.ro_opts());
    let (_, _, options) = mount_entry(&s.mnt()).unwrap();
    assert!(options.starts_with("ro"), "{options}");
    let status = Command::new("umount").arg(s.mnt()).status().unwrap();
    assert!(status.success());
    wait_for("the daemon exits after umount", || !alive(pid));
}

#[test]
fn sigterm_unmounts_a_background_daemon() {
    let s = Stack::new();
    let pid = mount_background(&s, &s.rw_opts());
    kill("-TERM", pid);
    wait_for("SIGTERM unmounts", || mount_entry(&s.mnt()).is_none());
    wait_for("the daemon exits after SIGTERM", || !alive(pid));
}

#[test]
fn sigint_and_sigterm_unmount_a_foreground_daemon() {
    for signal in ["-INT", "-TERM"] {
        let s = Stack::new();
        let mut child = spawn_foreground(&s, "-f");
        kill(signal, child.0.id());
        let status = wait_exit(&mut child);
        assert!(status.success(), "{signal} gave {status}");
        assert!(mount_entry(&s.mnt()).is_none(), "{signal} left the mount");
    }
}

#[test]
fn debug_stays_in_foreground_and_logs() {
    let s = Stack::new();
    let mut child = spawn_foreground(&s, "-d");
    assert!(child.0.try_wait().unwrap().is_none(), "-d must not detach");
    let status = Command::new("fusermount3")
        .args(["-u", &s.mnt()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success());
    let mut log = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("DEBUG"), "no debug log: {log}");
}

/// Runs layerfs expecting failure: exit status 1, one line on stderr naming `expect`,
/// nothing on stdout, and nothing mounted.
fn expect_error(s: &Stack, args: &[&str], expect: &str) {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "not one line: {}",
        out.stderr
    );
    assert!(out.stderr.starts_with("layerfs: "), "{}", out.stderr);
    assert!(
        out.stderr.contains(expect),
        "{args:?}: expected {expect:?} in {}",
        out.stderr
    );
    assert!(mount_entry(&s.mnt()).is_none(), "{args:?} mounted anyway");
}

#[test]
fn bad_options_fail_with_one_line_and_no_mount() {
    let s = Stack::new();
    let m = s.mnt();
    let (l1, u, w) = (s.p("l1"), s.p("u"), s.p("w"));
    let cases: Vec<(String, &str)> = vec![
        (format!("upperdir={u},workdir={w}"), "missing lowerdir"),
        (format!("lowerdir={l1}:{}", s.p("nope")), "does not exist"),
        (format!("lowerdir={}/file", l1), "not a directory"),
        (format!("lowerdir={l1},upperdir={u}"), "without workdir"),
        (format!("lowerdir={l1},workdir={w}"), "without upperdir"),
        (
            format!("lowerdir={l1},upperdir={u},workdir=/dev/shm"),
            "same filesystem",
        ),
        (
            format!("lowerdir={l1}:{u},upperdir={u},workdir={w}"),
            "overlaps lowerdir",
        ),
        (
            format!("lowerdir={l1},frobnicate"),
            "unknown option `frobnicate`",
        ),
        (format!("lowerdir={l1},whiteout=maybe"), "whiteout"),
    ];
    for (opts, expect) in &cases {
        expect_error(&s, &["-o", opts, &m], expect);
        // Foreground reports the same way.
        expect_error(&s, &["-f", "-o", opts, &m], expect);
    }
    expect_error(&s, &["-o", &s.ro_opts(), &s.p("nope")], "does not exist");
    fs::create_dir(s.p("l1/sub")).unwrap();
    expect_error(&s, &["-o", &s.rw_opts(), &s.p("u")], "outside every layer");
    expect_error(
        &s,
        &["-o", &s.ro_opts(), &s.p("l1/sub")],
        "outside every layer",
    );
    expect_error(&s, &["-o", &s.ro_opts()], "missing MOUNTPOINT");
    expect_error(&s, &["-q", &m], "unknown flag");
}

#[test]
fn busy_mount_point_is_refused() {
    let s = Stack::new();
    let pid = mount_background(&s, &s.ro_opts());
    let out = run(&["-o", &s.rw_opts(), &s.mnt()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("already a mount point"),
        "{}",
        out.stderr
    );
    assert_eq!(daemon_pids(&s.mnt()), vec![pid], "a second daemon started");
}

#[test]
fn stale_fuse_mount_names_the_fix() {
    let s = Stack::new();
    let mut child = spawn_foreground(&s, "-f");
    kill("-KILL", child.0.id());
    wait_exit(&mut child);
    let m = s.mnt();
    wait_for("the mount goes stale", || {
        fs::metadata(&m).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    });
    let out = run(&["-o", &s.ro_opts(), &m]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("fusermount3 -u {m}")),
        "{}",
        out.stderr
    );
}

#[test]
fn relative_paths_and_symlinked_layers_work_from_any_directory() {
    let s = Stack::new();
    std::os::unix::fs::symlink(s.p("l2"), s.p("link")).unwrap();
    let out = Command::new(BIN)
        .current_dir(s.dir.path())
        .args(["-o", "lowerdir=l1:link,upperdir=u,workdir=w", "m"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (fstype, _, _) = mount_entry(&s.mnt()).expect("not mounted");
    assert_eq!(fstype, "fuse.layerfs");
}
