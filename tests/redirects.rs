//! Redirects in lower layers: directories renamed in a container (by kernel overlayfs with
//! `redirect_dir=on`, or by layerfs) and the container's upper directory then stacked as a
//! lower layer of a fresh mount, as containers-storage and docker's overlay2 build images.
//! The stacked view, mounted read-only by layerfs and by kernel overlayfs
//! (`redirect_dir=follow`), must be the tree the writer showed (names, types, modes,
//! owners, sizes, content hashes, symlink targets, xattrs), stage after stage.
//!
//! Hostile layers: invalid redirect values (`..`, `.`, empty components, a `/` in a
//! relative one, paths leaving the layer) fail the lookup of that one directory with EIO,
//! are logged once, and the mount keeps serving; redirects in circles are followed as the
//! kernel follows them (each layer once per lookup), finitely.
//!
//! `LAYERFS_REDIRECT_SEEDS` (default 6), `LAYERFS_REDIRECT_SEED_START` (default 0) and
//! `LAYERFS_REDIRECT_OPS` (default 12) size the seeded random chains; a failing one is
//! shrunk to a minimal list of stages, printed with its seed.
mod common;
use common::*;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    Kernel,
    Layerfs,
}

const WRITERS: [Writer; 2] = [Writer::Kernel, Writer::Layerfs];

/// The image every chain starts from.
fn build_base(dir: &Path) {
    put(dir.join("a/f1"), b"one\n");
    put(dir.join("a/sub/f2"), b"two\n");
    put(dir.join("a/sub/deep/f3"), b"three\n");
    put(dir.join("a/sub/deep/more/f4"), b"four\n");
    put(dir.join("b/g"), b"gee\n");
    put(dir.join("b/inner/h"), b"aitch\n");
    mkdirs(dir.join("c"));
    put(dir.join("top"), b"top\n");
    symlink("sub/f2", dir.join("a/link")).unwrap();
    chmod(dir.join("a/sub"), 0o750).unwrap();
    chmod(dir.join("a/sub/deep/f3"), 0o600).unwrap();
    lchown(dir.join("b/inner"), 1000, 1000).unwrap();
    lsetxattr(dir.join("a/sub/deep"), "user.tag", b"deep").unwrap();
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stack of the given lowers (top-most first) with its own upper, work and mount point.
fn stack_of(lowers: &[PathBuf]) -> Stack {
    let mut s = Stack::new(0);
    s.lowers = lowers.to_vec();
    s
}

/// Runs `script` on a container of `lowers` written by `writer`; returns the container
/// (its upper is the new layer) and the tree it showed.
fn stage(writer: Writer, lowers: &[PathBuf], script: &str) -> (Stack, Snapshot) {
    let s = stack_of(lowers);
    let m = match writer {
        Writer::Kernel => s.mount_kernel(&[], true),
        Writer::Layerfs => s.mount_layerfs(&[], true),
    };
    sh(&m.path, script);
    let live = view(&m.path);
    m.unmount();
    (s, live)
}

/// A tree as compared here: `comparable`, and without layerfs's own bookkeeping xattrs
/// (`trusted.layerfs.*`, kept on upper entries it wrote), which layerfs hides and kernel
/// overlayfs shows like any other.
fn view(root: &Path) -> Snapshot {
    let mut s = comparable(&snapshot(root));
    for e in s.values_mut() {
        e.xattrs.retain(|k, _| !k.contains(".layerfs."));
    }
    s
}

/// The trees read-only mounts of `lowers` show: layerfs's, kernel overlayfs's.
fn stacked_views(lowers: &[PathBuf]) -> [(&'static str, Snapshot); 2] {
    let s = stack_of(lowers);
    let m = s.mount_layerfs(&[], false);
    let ours = view(&m.path);
    m.unmount();
    let m = s.mount_kernel_lowers(&["redirect_dir=follow"]);
    let kernel = view(&m.path);
    m.unmount();
    [("layerfs", ours), ("kernel overlayfs", kernel)]
}

/// Writes the stages one container after another, each over the uppers before it, and
/// checks after each that the stack of uppers reads as the container showed. `Err` names
/// the first difference.
fn try_chain(writer: Writer, stages: &[String]) -> Result<(), String> {
    try_chain_counting(writer, stages).map(|_| ())
}

/// Directories below `root` carrying a redirect.
fn redirects_in(root: &Path) -> usize {
    let mut n = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                n += usize::from(lgetxattr(e.path(), REDIRECT).is_ok());
                todo.push(e.path());
            }
        }
    }
    n
}

/// `try_chain`, also counting the redirects the containers wrote.
fn try_chain_counting(writer: Writer, stages: &[String]) -> Result<usize, String> {
    let mut written = 0;
    let base = Stack::new(1);
    build_base(&base.lowers[0]);
    let mut lowers = vec![base.lowers[0].clone()];
    let mut containers = Vec::new();
    for (i, script) in stages.iter().enumerate() {
        let (s, live) = stage(writer, &lowers, script);
        lowers.insert(0, s.upper.clone());
        written += redirects_in(&s.upper);
        containers.push(s);
        for (reader, got) in stacked_views(&lowers) {
            let d = diff(&live, &got, "container", reader);
            if !d.is_empty() {
                return Err(format!(
                    "{writer:?} writer, stage {i} `{script}`: {reader} over the stacked \
                     uppers differs from the container's view:\n{d}"
                ));
            }
        }
    }
    Ok(written)
}

fn check_chain(stages: &[&str]) {
    let stages: Vec<String> = stages.iter().map(|s| s.to_string()).collect();
    for writer in WRITERS {
        if let Err(e) = try_chain(writer, &stages) {
            panic!("{e}");
        }
    }
}

#[test]
fn renamed_within_the_parent_relative_redirects() {
    check_chain(&["mv a a2", "mv a2/sub a2/sub2", "mv a2 a"]);
}

#[test]
fn renamed_across_directories_absolute_redirects() {
    check_chain(&["mv a/sub b/sub", "mv b/sub c/sub", "mv c/sub/deep deep"]);
}

#[test]
fn renamed_twice_across_several_layers() {
    check_chain(&[
        "mv a x",
        "mv x y",
        "mv y b/z",
        "mv b/z/sub c/s",
        "mv c/s/deep b/z/d",
    ]);
}

#[test]
fn rename_then_rename_of_the_child() {
    // In one container and over two.
    check_chain(&["mv a a2; mv a2/sub a2/sub2; mv a2/sub2/deep c/deep; mv b c/b"]);
    check_chain(&[
        "mv a a2",
        "mv a2/sub a2/sub2; mv a2/sub2/deep c/deep",
        "mv c c2",
    ]);
    check_chain(&[
        "mv a/sub b/s; mv b b2; mv b2/s/deep b2/s/d2",
        "mv b2/s b2/s3",
    ]);
}

#[test]
fn changes_inside_renamed_directories() {
    check_chain(&[
        "mv a a2; echo new > a2/new; rm a2/f1; rm -rf a2/sub/deep; mkdir a2/sub/deep; \
         echo again > a2/sub/deep/f3",
        "mv a2 b/a3; chmod 700 b/a3/sub; mkdir -p a/sub; echo fresh > a/sub/f2",
        "mv b/a3/sub/deep c/deep2; rm -rf b/a3; mv a a3",
    ]);
}

#[test]
fn renamed_onto_an_empty_lower_directory() {
    check_chain(&[
        "mv -T a c",
        "mv -T c/sub a",
        "mv b c/b; rm c/b/inner/h; mv -T a c/b/inner",
    ]);
}

// ---------------------------------------------------------------------------
// Seeded random chains
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[(self.next() % of.len() as u64) as usize]
    }
}

/// Names random operations reach: the base's directories at several depths and names
/// they may move to. Operations that fail (a missing source, a move below itself) are
/// skipped by the script (`|| true`), the same on every writer.
const DIRS: [&str; 12] = [
    "a",
    "a/sub",
    "a/sub/deep",
    "b",
    "b/inner",
    "c",
    "x",
    "x/sub",
    "c/x",
    "b/x",
    "y",
    "c/y/z",
];
const NAMES: [&str; 5] = ["a", "x", "y", "sub", "n"];

fn random_op(r: &mut Rng) -> String {
    let d = r.pick(&DIRS);
    match r.next() % 8 {
        0..=3 => {
            let to = format!("{}/{}", r.pick(&DIRS), r.pick(&NAMES));
            let to = to.trim_start_matches('/').to_string();
            match r.next() % 4 {
                0 => format!("mv {d} {} 2>/dev/null || true", r.pick(&NAMES)),
                // Onto an existing (empty) directory, replacing it.
                1 => format!("mv -T {d} {to} 2>/dev/null || true"),
                _ => format!("mv {d} {to} 2>/dev/null || true"),
            }
        }
        4 => format!("rm -rf {d}/{} 2>/dev/null || true", r.pick(&NAMES)),
        5 => format!("mkdir -p {d}/{} 2>/dev/null || true", r.pick(&NAMES)),
        6 => format!("echo {} > {d}/f 2>/dev/null || true", r.next() % 1000),
        _ => format!("chmod 7{}0 {d} 2>/dev/null || true", r.next() % 8),
    }
}

/// A chain of 1-3 containers with `ops` operations in all.
fn random_chain(seed: u64, ops: usize) -> Vec<String> {
    let mut r = Rng(seed);
    let nstages = 1 + (r.next() % 3) as usize;
    let mut stages = vec![Vec::new(); nstages];
    for i in 0..ops {
        stages[i * nstages / ops.max(1)].push(random_op(&mut r));
    }
    stages.into_iter().map(|s| s.join("; ")).collect()
}

/// Drops operations (then whole stages) while the chain still fails.
fn shrink(writer: Writer, stages: &[String]) -> (Vec<String>, String) {
    let mut cur: Vec<Vec<String>> = stages
        .iter()
        .map(|s| s.split("; ").map(str::to_string).collect())
        .collect();
    let join = |c: &Vec<Vec<String>>| -> Vec<String> {
        c.iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.join("; "))
            .collect()
    };
    let mut last = try_chain(writer, &join(&cur)).err().unwrap_or_default();
    let start = Instant::now();
    let mut progress = true;
    while progress && start.elapsed() < Duration::from_secs(300) {
        progress = false;
        for si in 0..cur.len() {
            let mut oi = 0;
            while oi < cur[si].len() {
                let mut cand = cur.clone();
                cand[si].remove(oi);
                match try_chain(writer, &join(&cand)) {
                    Err(e) => {
                        cur = cand;
                        last = e;
                        progress = true;
                    }
                    Ok(()) => oi += 1,
                }
            }
        }
    }
    (join(&cur), last)
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: expected a number")),
        Err(_) => default,
    }
}

#[test]
fn random_rename_chains() {
    let seeds = env_num("LAYERFS_REDIRECT_SEEDS", 6);
    let first = env_num("LAYERFS_REDIRECT_SEED_START", 0);
    let ops = env_num("LAYERFS_REDIRECT_OPS", 12) as usize;
    let mut written = 0;
    // A hung FUSE request cannot be cancelled: fail loudly instead of waiting forever.
    let wd = Watchdog::new("random_rename_chains", Duration::from_secs(300));
    for seed in first..first + seeds {
        wd.beat(&format!("seed {seed}"));
        let stages = random_chain(seed, ops);
        for writer in WRITERS {
            let failed = catch_unwind(AssertUnwindSafe(|| try_chain_counting(writer, &stages)));
            let failed = match failed {
                Ok(Ok(n)) => {
                    written += n;
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => "panicked".to_string(),
            };
            let (min, why) = shrink(writer, &stages);
            panic!(
                "seed {seed} ({writer:?} writer) failed: {failed}\n\nminimal chain \
                 (LAYERFS_REDIRECT_SEED_START={seed} LAYERFS_REDIRECT_SEEDS=1):\n  \
                 check_chain(&{min:?});\n{why}"
            );
        }
    }
    // The scripts are meant to rename lower directories, not only to fail trying.
    assert!(
        written >= seeds as usize,
        "only {written} redirects written in {seeds} seeds: the random scripts do not \
         exercise redirects"
    );
    eprintln!("{seeds} seeds, {written} redirects written");
}

// ---------------------------------------------------------------------------
// Hostile layers
// ---------------------------------------------------------------------------

const REDIRECT: &str = "trusted.overlay.redirect";

fn redirected_dir(path: PathBuf, value: &[u8]) {
    mkdirs(&path);
    lsetxattr(&path, REDIRECT, value).unwrap();
}

/// layerfs in the foreground with its log going to `log`; the returned mount and child
/// are unmounted and reaped by the caller.
fn mount_logging(s: &Stack, opts: &str, log: &Path) -> (Mount, std::process::Child) {
    let child = Command::new(layerfs_bin())
        .args(["-f", "-o", opts])
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !is_mounted(&s.mnt) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the foreground daemon did not mount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (s.adopt_mount(Backend::Layerfs), child)
}

#[test]
fn invalid_redirects_fail_their_lookup_with_eio_once_logged() {
    let s = Stack::new(2);
    put(s.l(1, "a/f"), b"A");
    put(s.l(1, "etc/secret"), b"S");
    let bad: [(&str, &[u8]); 10] = [
        ("rel_slash", b"../etc"),
        ("dotdot", b".."),
        ("dot", b"."),
        ("abs_dotdot", b"/a/../etc"),
        ("abs_up", b"/../etc"),
        ("empty", b""),
        ("nul", b"\0"),
        ("trailing_slash", b"/a/"),
        ("double_slash", b"//a"),
        ("root", b"/"),
    ];
    for (name, value) in bad {
        redirected_dir(s.l(0, name), value);
    }
    // Valid ones, one with the trailing NUL some writers store.
    redirected_dir(s.l(0, "good_nul"), b"a\0");
    redirected_dir(s.l(0, "good_abs"), b"/etc");
    // The upper layer's redirects go through the same resolver.
    redirected_dir(s.u("upper_bad"), b"x/../../a");
    let log = s.root.path().join("daemon.log");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.lowerdir(),
        s.upper.display(),
        s.work.display()
    );
    let (m, mut child) = mount_logging(&s, &opts, &log);
    for _ in 0..3 {
        for name in bad.iter().map(|b| b.0).chain(["upper_bad"]) {
            assert_errno(fs::symlink_metadata(m.p(name)), libc::EIO);
            assert_errno(fs::read_dir(m.p(name)), libc::EIO);
        }
    }
    // The mount keeps serving: the rest of the tree, and the valid redirects.
    assert_eq!(read_str(m.p("good_nul/f")), "A");
    assert_eq!(read_str(m.p("good_abs/secret")), "S");
    assert_eq!(read_str(m.p("a/f")), "A");
    let names = ls(m.p(""));
    assert_eq!(names.len(), bad.len() + 5, "root listing: {names:?}");
    put(m.p("new"), b"N");
    assert_eq!(read_str(m.p("new")), "N");
    m.unmount();
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exited with {status}");
    let mut text = String::new();
    fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    for name in bad.iter().map(|b| b.0).chain(["upper_bad"]) {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("invalid redirect") && l.contains(&format!("/{name}:")))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "log lines for {name}: {lines:?}\nlog:\n{text}"
        );
    }
    assert!(!text.contains("good_"), "valid redirects logged:\n{text}");
}

#[test]
fn redirects_in_circles_read_as_the_kernel_reads_them() {
    let s = Stack::new(4);
    // a and b redirect to each other in every layer above the bottom, absolute and
    // relative by turns; a directory redirected to its own parent; one to itself.
    for (l, (to_b, to_a)) in [(&b"/b"[..], &b"a"[..]), (b"b", b"/a"), (b"/b", b"/a")]
        .into_iter()
        .enumerate()
    {
        redirected_dir(s.l(l, "a"), to_b);
        redirected_dir(s.l(l, "b"), to_a);
        put(s.l(l, &format!("a/in{l}")), format!("a{l}").as_bytes());
        put(s.l(l, &format!("b/in{l}")), format!("b{l}").as_bytes());
    }
    put(s.l(3, "a/bottom_a"), b"A");
    put(s.l(3, "b/bottom_b"), b"B");
    redirected_dir(s.l(0, "p/c"), b"/p");
    put(s.l(1, "p/c/f"), b"F");
    put(s.l(1, "p/g"), b"G");
    redirected_dir(s.l(0, "self"), b"self");
    redirected_dir(s.l(1, "self"), b"/self");
    put(s.l(2, "self/s"), b"S");
    let m = s.mount_layerfs(&[], false);
    let ours = view(&m.path);
    m.unmount();
    let m = s.mount_kernel_lowers(&["redirect_dir=follow"]);
    let kernel = view(&m.path);
    m.unmount();
    let d = diff(&kernel, &ours, "kernel overlayfs", "layerfs");
    assert!(d.is_empty(), "{d}");
    // What the kernel shows, spelled out: a is a(0), b(1), a(2), b(3).
    let names: Vec<&str> = ours.keys().map(String::as_str).collect();
    for want in [
        "a/in0",
        "a/bottom_b",
        "b/in0",
        "b/bottom_a",
        "p/c/g",
        "self/s",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

#[test]
fn follow_mode_follows_lower_redirects_and_refuses_to_write_them() {
    let base = Stack::new(1);
    build_base(&base.lowers[0]);
    let (c1, live) = stage(Writer::Kernel, &base.lowers, "mv a a2; mv b/inner c/inner");
    let lowers = vec![c1.upper.clone(), base.lowers[0].clone()];
    for backend in [Backend::Kernel, Backend::Layerfs] {
        let s = stack_of(&lowers);
        let m = match backend {
            Backend::Kernel => s.mount_kernel(&["redirect_dir=follow"], true),
            Backend::Layerfs => s.mount_layerfs(&["redirect_dir=follow"], true),
        };
        let d = diff(&live, &view(&m.path), "container", &format!("{backend:?}"));
        assert!(d.is_empty(), "{backend:?} redirect_dir=follow:\n{d}");
        // Directories with lower content cannot move (mv copies instead); others can.
        for (from, to) in [("a2", "a3"), ("a2/sub", "c/sub"), ("c/inner", "inner")] {
            assert_errno(fs::rename(m.p(from), m.p(to)), libc::EXDEV);
        }
        mkdirs(m.p("fresh"));
        fs::rename(m.p("fresh"), m.p("c/fresh")).unwrap();
        assert_eq!(read_str(m.p("a2/sub/f2")), "two\n", "{backend:?}");
        m.unmount();
        assert_eq!(redirects_in(&s.upper), 0, "{backend:?} wrote a redirect");
    }
}

#[test]
fn moves_whose_redirect_would_be_too_long_are_exdev() {
    // 21 levels of 200-character names: the old path is longer than PATH_MAX, more than
    // a redirect is followed for, so the move is refused and `mv` copies instead; the
    // kernel refuses it too (beyond its redirect_max). Within the directory, the
    // redirect is the short old name and the rename works.
    let s = Stack::new(1);
    let py = |dir: &Path, code: &str| {
        let deep = "import os, sys\nfor i in range(21):\n    os.makedirs('0' * 200, \
                    exist_ok=True)\n    os.chdir('0' * 200)\n";
        let out = Command::new("python3")
            .args(["-c", &format!("{deep}{code}")])
            .current_dir(dir)
            .output()
            .expect("run python3");
        assert_success(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    py(
        &s.lowers[0],
        "os.mkdir('leaf')\nopen('leaf/f', 'w').write('x')\n",
    );
    for backend in [Backend::Kernel, Backend::Layerfs] {
        let m = match backend {
            Backend::Kernel => s.mount_kernel(&[], true),
            Backend::Layerfs => s.mount_layerfs(&[], true),
        };
        let code = format!(
            "def mv(a, b):\n    try:\n        os.rename(a, b)\n        return 0\n    \
             except OSError as e:\n        return e.errno\nprint(mv('leaf', '{}/moved'), \
             mv('leaf', 'leaf2'))\n",
            m.path.display()
        );
        let got = py(&m.path, &code);
        assert_eq!(got.trim(), format!("{} 0", libc::EXDEV), "{backend:?}");
        m.unmount();
        for d in [&s.upper, &s.work] {
            fs::remove_dir_all(d).unwrap();
            fs::create_dir(d).unwrap();
        }
    }
}
