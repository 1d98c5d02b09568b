//! Shared helpers for layerctl's integration tests: running the binary against a private
//! store, building small root filesystems and mounting images, snapshotting trees, and
//! finding and killing the mount daemons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub fn layerctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_layerctl"))
}

/// The mount program every mounting test uses. This is the one place to switch: the real
/// `layerfs` daemon, built next to layerctl by `cargo build --workspace`. While developing
/// against another implementation, set LAYERCTL_TEST_MOUNT_PROGRAM (e.g.
/// /usr/bin/fuse-overlayfs, or `kernel` for kernel overlayfs).
pub fn mount_program() -> String {
    if let Ok(p) = std::env::var("LAYERCTL_TEST_MOUNT_PROGRAM") {
        if !p.is_empty() {
            return p;
        }
    }
    let p = layerctl_bin().with_file_name("layerfs");
    assert!(
        p.is_file(),
        "the layerfs daemon is missing at {}: build it with `cargo build --workspace` before running these tests",
        p.display()
    );
    p.display().to_string()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("layerctl-test")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("store");
        Env { dir, root }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(layerctl_bin());
        c.arg("--root").arg(&self.root).args(args);
        c.env("LAYERCTL_MOUNT_PROGRAM", mount_program());
        c
    }

    /// Runs layerctl; returns the output whatever the status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running layerctl")
    }

    /// Runs layerctl, asserting success; returns trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "layerctl {:?} failed: {}{}",
            args,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Runs layerctl, asserting exit 1 with a one-line error containing `want`.
    pub fn fails(&self, args: &[&str], want: &str) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(
            o.status.code(),
            Some(1),
            "layerctl {:?} should fail; stderr: {err}",
            args
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "error must be one line: {err:?}"
        );
        assert!(
            err.contains(want),
            "layerctl {:?}: expected {want:?} in {err:?}",
            args
        );
        err
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON")
    }

    /// Asserts that `fsck` passes and finds the store clean.
    pub fn fsck_clean(&self) {
        let o = self.ok(&["fsck"]);
        assert!(o.contains("store is clean"), "{o}");
    }

    /// Asserts that `fsck` finds no damage; `when` says what happened before. A killed
    /// command's temp files are reported (exit 1) and removed: then only those may be
    /// reported, and a second fsck must pass.
    pub fn fsck_passes(&self, when: &str) {
        let mut o = self.run(&["fsck"]);
        if o.status.code() == Some(1) {
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(
                err.lines()
                    .all(|l| l.contains("leftover of an interrupted command")),
                "{when}: fsck finds damage: {err}"
            );
            o = self.run(&["fsck"]);
        }
        assert!(
            o.status.success(),
            "{when}: fsck fails: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Runs layerctl (output discarded) and kills it after `delay`, wherever it is then.
    pub fn kill_after(&self, args: &[&str], delay: Duration) {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// [`make_rootfs`] in `rootfs` of the test dir, imported as `image`; returns the rootfs.
    pub fn import_rootfs(&self, image: &str) -> PathBuf {
        let rootfs = self.path("rootfs");
        make_rootfs(&rootfs);
        self.ok(&["import", rootfs.to_str().unwrap(), image]);
        rootfs
    }

    /// Mounts `image` as container `name` on a new directory `rel` of the test dir; returns
    /// the mount point and a guard that unmounts it should the test fail half-way.
    pub fn mount_new(&self, image: &str, rel: &str, name: &str) -> (PathBuf, MountGuard) {
        let mnt = self.path(rel);
        fs::create_dir_all(&mnt).unwrap();
        let guard = MountGuard(vec![mnt.clone()]);
        self.ok(&["mount", image, mnt.to_str().unwrap(), "--name", name]);
        (mnt, guard)
    }
}

/// Runs `script` with `sh -e` in `cwd`; it must succeed.
pub fn sh(cwd: &Path, script: &str) {
    let o = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn write(p: &Path, data: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// A small root filesystem with the shapes the tests need.
pub fn make_rootfs(root: &Path) {
    write(&root.join("etc/hostname"), "base\n");
    write(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write(&root.join("bin/sh"), "#!shell\n");
    fs::set_permissions(root.join("bin/sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sh", root.join("bin/ash")).unwrap();
    write(&root.join("usr/share/doc/a.txt"), "doc a\n");
    write(&root.join("usr/share/doc/b.txt"), "doc b\n");
    write(&root.join("var/lib/app/data"), "state\n");
    write(&root.join("var/lib/app/sub/deep"), "deep\n");
    write(&root.join("opt/tool/bin/run"), "run\n");
    fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).unwrap();
    let long = "d".repeat(120);
    write(
        &root.join(format!("long/{long}/{}", "f".repeat(110))),
        "long name\n",
    );
    let _ = Command::new("setfattr")
        .args(["-n", "user.note", "-v", "hi"])
        .arg(root.join("etc/passwd"))
        .status();
    // Fixed times so that the same rootfs always gives the same layer.
    Command::new("find")
        .arg(root)
        .args(["-exec", "touch", "-h", "-d", "@1000000000", "{}", "+"])
        .status()
        .unwrap();
}

/// path -> (kind, mode, uid, gid, content hash or link target, xattrs) for comparing
/// trees; the link sets are compared separately by inode grouping.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let c = p.join(&n);
            let m = fs::symlink_metadata(&c).unwrap();
            let rel = c.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_dir() {
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("link->{}", fs::read_link(&c).unwrap().display())
            } else if m.is_file() {
                format!("file:{:x}", Sha256::digest(fs::read(&c).unwrap()))
            } else {
                format!("special:{:o}:{}", m.mode() & 0o170000, m.rdev())
            };
            let xattr = Command::new("getfattr")
                .args(["-h", "-d", "-m", "^user\\.", "--absolute-names"])
                .arg(&c)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .skip(1)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            out.insert(
                rel,
                format!(
                    "{what} {:o} {}:{} {}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    xattr
                ),
            );
            if m.is_dir() {
                walk(root, &c, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Names sharing an inode, as sorted groups (hard link structure).
pub fn link_groups(root: &Path) -> Vec<Vec<String>> {
    let mut by_ino: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    fn walk(root: &Path, p: &Path, m: &mut BTreeMap<(u64, u64), Vec<String>>) {
        for e in fs::read_dir(p).unwrap() {
            let c = e.unwrap().path();
            let md = fs::symlink_metadata(&c).unwrap();
            if md.is_dir() {
                walk(root, &c, m);
            } else if md.is_file() && md.nlink() > 1 {
                m.entry((md.dev(), md.ino()))
                    .or_default()
                    .push(c.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    walk(root, root, &mut by_ino);
    let mut groups: Vec<Vec<String>> = by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    groups
}

/// A listing of the whole store (names, sizes, and record contents) to prove that a
/// failed command changed nothing.
pub fn store_state(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd {
            let c = e.unwrap().path();
            let m = fs::symlink_metadata(&c).unwrap();
            let rel = c.strip_prefix(root).unwrap().display().to_string();
            if rel == "lock" {
                continue;
            }
            if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &c, out);
            } else if m.is_file() {
                out.insert(rel, format!("{:x}", Sha256::digest(fs::read(&c).unwrap())));
            } else {
                out.insert(rel, "other".into());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

pub fn sha256_file(p: &Path) -> String {
    format!("sha256:{:x}", Sha256::digest(fs::read(p).unwrap()))
}

/// Unmounts whatever is still mounted below `dir` when a test fails half-way.
pub struct MountGuard(pub Vec<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("fusermount3").arg("-u").arg(p).output();
            let _ = Command::new("umount").arg(p).output();
        }
    }
}

/// Process ids whose command line has `target` as an argument (the mount daemon): neither
/// layerctl itself nor this test process.
pub fn daemon_pids(target: &Path) -> Vec<i32> {
    let want = target.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let prog = cmd.split(|b| *b == 0).next().unwrap_or(b"");
        if pid != me && !prog.ends_with(b"layerctl") && cmd.split(|b| *b == 0).any(|a| a == want) {
            out.push(pid);
        }
    }
    out
}

/// Sends SIGKILL to each of `pids` (`kill -9`), without waiting.
pub fn send_sigkill(pids: &[i32]) {
    for p in pids {
        Command::new("kill")
            .args(["-9", &p.to_string()])
            .status()
            .unwrap();
    }
}

/// SIGKILLs `pids` and waits until each is gone or a zombie.
pub fn kill9_all(pids: &[i32]) {
    send_sigkill(pids);
    for _ in 0..500 {
        if pids.iter().all(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("daemon survived SIGKILL");
}

/// The fuzzers' seeded generator (splitmix64): the same seed gives the same script.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// The `user.*` xattrs of `p` (not following a final symlink), sorted.
pub fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        if !name.starts_with(b"user.") {
            continue;
        }
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: valid C strings and buffer.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
    }
    out.sort();
    out
}

/// A tree as the oracle comparisons see it: every entry's description and the hard-link
/// groups.
pub type Tree = (BTreeMap<String, String>, Vec<Vec<String>>);

pub fn tree(dir: &Path) -> Tree {
    (snapshot(dir), link_groups(dir))
}

/// Runs an oracle tool (skopeo, umoci, podman, ...) and fails loudly if it cannot run or
/// fails.
pub fn tool(prog: &str, args: &[&str]) -> Output {
    let o = Command::new(prog).args(args).output().unwrap_or_else(|e| {
        panic!("{prog} cannot run ({e}): install it (scripts/deps.sh lists the package)")
    });
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}
