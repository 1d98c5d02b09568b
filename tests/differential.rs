//! Differential test: the same operation scripts run on a kernel overlayfs mount and on a
//! layerfs mount of identical freshly built layers. Every call's errno and the merged
//! trees (names, types, modes, owners, sizes, content hashes, symlink targets, nlink,
//! xattrs; not st_ino or times) must match, also after unmounting and mounting again.
//!
//! `LAYERFS_DIFF_SEEDS` (default 32) sets how many random scripts run; `LAYERFS_DIFF_OPS`
//! (default 300) their length.
mod common;
use common::*;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Clone, Debug)]
enum Op {
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Unlink(String),
    Mkdir(String, u32),
    Rmdir(String),
    Rename(String, String, u32),
    Link(String, String),
    Symlink(String, String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    SetXattr(String, String, Vec<u8>),
    RemoveXattr(String, String),
    Mkfifo(String, u32),
    Read(String),
    ListDir(String),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write(p, d) => write!(f, "write {p} ({} bytes)", d.len()),
            Op::Append(p, d) => write!(f, "append {p} ({} bytes)", d.len()),
            Op::Truncate(p, n) => write!(f, "truncate {p} {n}"),
            Op::Unlink(p) => write!(f, "unlink {p}"),
            Op::Mkdir(p, m) => write!(f, "mkdir {p} {m:o}"),
            Op::Rmdir(p) => write!(f, "rmdir {p}"),
            Op::Rename(a, b, fl) => write!(f, "rename {a} {b} flags={fl}"),
            Op::Link(a, b) => write!(f, "link {a} {b}"),
            Op::Symlink(t, p) => write!(f, "symlink {t} {p}"),
            Op::Chmod(p, m) => write!(f, "chmod {p} {m:o}"),
            Op::Chown(p, u, g) => write!(f, "lchown {p} {u}:{g}"),
            Op::SetXattr(p, n, v) => write!(f, "lsetxattr {p} {n}={}", String::from_utf8_lossy(v)),
            Op::RemoveXattr(p, n) => write!(f, "lremovexattr {p} {n}"),
            Op::Mkfifo(p, m) => write!(f, "mkfifo {p} {m:o}"),
            Op::Read(p) => write!(f, "read {p}"),
            Op::ListDir(p) => write!(f, "readdir {p}"),
        }
    }
}

fn open_flags() -> OpenOptions {
    let mut o = OpenOptions::new();
    // Never block on a FIFO: opening one for writing without a reader is ENXIO.
    o.custom_flags(libc::O_NONBLOCK);
    o
}

/// Apply one op under `root`; returns (errno, observed output for reads).
fn apply(root: &Path, op: &Op) -> (i32, String) {
    let p = |s: &str| root.join(s);
    let e = |r: std::io::Result<()>| (errno_of(&r), String::new());
    match op {
        Op::Write(f, d) => e((|| {
            let mut h = open_flags()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(p(f))?;
            h.write_all(d)
        })()),
        Op::Append(f, d) => e((|| {
            let mut h = open_flags().append(true).open(p(f))?;
            h.write_all(d)
        })()),
        Op::Truncate(f, n) => e((|| open_flags().write(true).open(p(f))?.set_len(*n))()),
        Op::Unlink(f) => e(fs::remove_file(p(f))),
        Op::Mkdir(f, m) => e(mkdir(p(f), *m)),
        Op::Rmdir(f) => e(fs::remove_dir(p(f))),
        Op::Rename(a, b, fl) => e(renameat2(p(a), p(b), *fl)),
        Op::Link(a, b) => e(fs::hard_link(p(a), p(b))),
        Op::Symlink(t, f) => e(std::os::unix::fs::symlink(t, p(f))),
        Op::Chmod(f, m) => e(chmod(p(f), *m)),
        Op::Chown(f, u, g) => e(lchown(p(f), *u, *g)),
        Op::SetXattr(f, n, v) => e(lsetxattr(p(f), n, v)),
        Op::RemoveXattr(f, n) => e(lremovexattr(p(f), n)),
        Op::Mkfifo(f, m) => e(mknod(p(f), libc::S_IFIFO, *m, 0)),
        Op::Read(f) => match open_flags().read(true).open(p(f)).and_then(|mut h| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut h, &mut v)?;
            Ok(v)
        }) {
            Ok(v) => (0, sha256_hex(&v)),
            Err(err) => (err.raw_os_error().unwrap_or(-1), String::new()),
        },
        Op::ListDir(d) => match fs::read_dir(p(d)) {
            Ok(rd) => {
                let mut names: Vec<String> = rd
                    .map(|x| x.map(|x| x.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<_, _>>()
                    .unwrap_or_default();
                names.sort();
                (0, names.join(","))
            }
            Err(err) => (err.raw_os_error().unwrap_or(-1), String::new()),
        },
    }
}

/// Identical base layers: two lowers with files, dirs, hard links, symlinks, xattrs, a
/// whiteout and an opaque dir (kernel encodings, which both sides read), and an upper
/// with some content of its own.
fn build_base(s: &Stack) {
    put(s.l(1, "a"), b"bottom a");
    put(s.l(1, "b"), b"bottom b");
    put(s.l(1, "d1/a"), b"d1 a");
    put(s.l(1, "d1/s/b"), b"d1 s b");
    put(s.l(1, "d1/s/c"), &vec![7u8; 70_000]);
    put(s.l(1, "d2/c"), b"d2 c");
    put(s.l(1, "d2/s/a"), b"d2 s a");
    put(s.l(1, "x/a"), b"hidden by opaque");
    fs::hard_link(s.l(1, "d1/a"), s.l(1, "d2/e")).unwrap();
    std::os::unix::fs::symlink("a", s.l(1, "d1/e")).unwrap();
    lsetxattr(s.l(1, "b"), "user.a", b"low").unwrap();
    lsetxattr(s.l(1, "d2"), "user.b", b"dir").unwrap();
    chmod(s.l(1, "d2/c"), 0o600).unwrap();
    lchown(s.l(1, "d2/c"), 1000, 1000).unwrap();
    put(s.l(0, "c"), b"top c");
    put(s.l(0, "d1/b"), b"top d1 b");
    put(s.l(0, "x/b"), b"opaque x b");
    opaque_trusted(s.l(0, "x"));
    whiteout_chardev(s.l(0, "d2"), "s");
    put(s.l(0, "d1/s/a"), b"top s a");
    put(s.u("d1/c"), b"upper d1 c");
    put(s.u("e"), b"upper e");
}

const DIRS: [&str; 6] = ["", "d1", "d1/s", "d2", "d2/s", "x"];
const NAMES: [&str; 6] = ["a", "b", "c", "d1", "e", "s"];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn path(r: &mut Rng) -> String {
    let d = *r.pick(&DIRS);
    let n = *r.pick(&NAMES);
    if d.is_empty() {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

fn random_script(seed: u64, n: usize) -> Vec<Op> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let modes = [0o644, 0o600, 0o755, 0o4755, 0o1777, 0o2755, 0o000, 0o700];
    (0..n)
        .map(|i| match r.below(20) {
            0 | 1 => Op::Write(
                path(&mut r),
                format!("w{seed}-{i}").repeat(r.below(50)).into_bytes(),
            ),
            2 => Op::Append(path(&mut r), format!("+{i}").into_bytes()),
            3 => Op::Truncate(path(&mut r), *r.pick(&[0, 1, 5, 100_000])),
            4 | 5 => Op::Unlink(path(&mut r)),
            6 => Op::Mkdir(path(&mut r), *r.pick(&[0o755, 0o1777, 0o700])),
            7 => Op::Rmdir(path(&mut r)),
            8..=10 => Op::Rename(
                path(&mut r),
                path(&mut r),
                *r.pick(&[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]),
            ),
            11 => Op::Link(path(&mut r), path(&mut r)),
            12 => Op::Symlink(r.pick(&NAMES).to_string(), path(&mut r)),
            13 => Op::Chmod(path(&mut r), *r.pick(&modes)),
            14 => {
                let (u, g) = *r.pick(&[(0, 0), (1000, 1000), (1, 2)]);
                Op::Chown(path(&mut r), u, g)
            }
            15 => Op::SetXattr(
                path(&mut r),
                r.pick(&["user.a", "user.b", "trusted.t"]).to_string(),
                format!("v{i}").into_bytes(),
            ),
            16 => Op::RemoveXattr(
                path(&mut r),
                r.pick(&["user.a", "user.b", "trusted.t"]).to_string(),
            ),
            17 => Op::Mkfifo(path(&mut r), 0o640),
            18 => Op::Read(path(&mut r)),
            _ => Op::ListDir(r.pick(&DIRS).to_string()),
        })
        .collect()
}

/// The reference: kernel overlayfs, always.
fn reference(s: &Stack) -> Mount {
    s.mount_kernel(&[], true)
}

fn report(ops: &[Op], a: &[(i32, String)], b: &[(i32, String)], upto: usize) -> String {
    let mut out = String::from("op sequence (kernel result | layerfs result):\n");
    for (i, op) in ops.iter().enumerate().take(upto + 1) {
        let mark = if a[i] != b[i] { ">>" } else { "  " };
        out += &format!("{mark}{i:4}: {op}  => {:?} | {:?}\n", a[i], b[i]);
    }
    out
}

fn run_script(name: &str, ops: &[Op]) {
    let k = Stack::new(2);
    let l = Stack::new(2);
    build_base(&k);
    build_base(&l);
    let km = reference(&k);
    let lm = l.mount();
    let mut kr = Vec::new();
    let mut lr = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        kr.push(apply(&km.path, op));
        lr.push(apply(&lm.path, op));
        if kr[i] != lr[i] {
            panic!(
                "{name}: op {i} ({op}) diverged: kernel {:?}, layerfs {:?}\n{}",
                kr[i],
                lr[i],
                report(ops, &kr, &lr, i)
            );
        }
    }
    let compare = |when: &str, km: &Mount, lm: &Mount| {
        let a = comparable(&snapshot(&km.path));
        let b = comparable(&snapshot(&lm.path));
        assert!(
            a == b,
            "{name}: merged trees differ {when}:\n{}\n{}",
            diff(&a, &b, "kernel", "layerfs"),
            report(ops, &kr, &lr, ops.len().saturating_sub(1))
        );
    };
    compare("after the script", &km, &lm);
    km.unmount();
    lm.unmount();
    let km = reference(&k);
    let lm = l.mount();
    compare("after unmount and remount", &km, &lm);
}

fn script(ops: &[(&str, &[&str])]) -> Vec<Op> {
    ops.iter()
        .map(|(op, a)| {
            let s = |i: usize| a[i].to_string();
            match *op {
                "write" => Op::Write(s(0), a[1].as_bytes().to_vec()),
                "append" => Op::Append(s(0), a[1].as_bytes().to_vec()),
                "truncate" => Op::Truncate(s(0), a[1].parse().unwrap()),
                "unlink" => Op::Unlink(s(0)),
                "mkdir" => Op::Mkdir(s(0), u32::from_str_radix(a[1], 8).unwrap()),
                "rmdir" => Op::Rmdir(s(0)),
                "rename" => Op::Rename(s(0), s(1), 0),
                "noreplace" => Op::Rename(s(0), s(1), libc::RENAME_NOREPLACE),
                "exchange" => Op::Rename(s(0), s(1), libc::RENAME_EXCHANGE),
                "link" => Op::Link(s(0), s(1)),
                "symlink" => Op::Symlink(s(0), s(1)),
                "chmod" => Op::Chmod(s(0), u32::from_str_radix(a[1], 8).unwrap()),
                "chown" => Op::Chown(s(0), a[1].parse().unwrap(), a[2].parse().unwrap()),
                "setxattr" => Op::SetXattr(s(0), s(1), a[2].as_bytes().to_vec()),
                "rmxattr" => Op::RemoveXattr(s(0), s(1)),
                "mkfifo" => Op::Mkfifo(s(0), u32::from_str_radix(a[1], 8).unwrap()),
                "read" => Op::Read(s(0)),
                "ls" => Op::ListDir(s(0)),
                other => panic!("unknown op {other}"),
            }
        })
        .collect()
}

#[test]
fn script_deletes_and_recreates() {
    run_script(
        "deletes",
        &script(&[
            ("unlink", &["a"]),
            ("read", &["a"]),
            ("write", &["a", "new a"]),
            ("rmdir", &["d1/s"]),
            ("unlink", &["d1/s/a"]),
            ("unlink", &["d1/s/b"]),
            ("unlink", &["d1/s/c"]),
            ("rmdir", &["d1/s"]),
            ("mkdir", &["d1/s", "755"]),
            ("ls", &["d1/s"]),
            ("rmdir", &["d2/s"]),
            ("mkdir", &["d2/s", "700"]),
            ("ls", &["d2"]),
            ("unlink", &["d1"]),
            ("rmdir", &["c"]),
            ("rmdir", &["x"]),
            ("unlink", &["x/b"]),
            ("rmdir", &["x"]),
            ("ls", &[""]),
        ]),
    );
}

#[test]
fn script_renames() {
    run_script(
        "renames",
        &script(&[
            ("rename", &["a", "b"]),
            ("unlink", &["b"]),
            ("noreplace", &["c", "e"]),
            ("noreplace", &["c", "f"]),
            ("exchange", &["f", "e"]),
            ("exchange", &["d1", "d2"]),
            ("ls", &["d1"]),
            ("ls", &["d2"]),
            ("rename", &["d1/s", "x/moved"]),
            ("ls", &["x/moved"]),
            ("mkdir", &["d2/s", "755"]),
            ("ls", &["d2/s"]),
            ("rename", &["x/moved", "d1"]),
            ("rename", &["d2", "x"]),
            ("rename", &["e", "d1/s/nested"]),
            ("rename", &["f", "f"]),
            ("rename", &["nothing", "g"]),
        ]),
    );
}

#[test]
fn script_metadata_and_links() {
    run_script(
        "metadata",
        &script(&[
            ("chmod", &["b", "4750"]),
            ("chown", &["b", "12", "34"]),
            ("setxattr", &["b", "user.z", "zz"]),
            ("rmxattr", &["b", "user.a"]),
            ("rmxattr", &["b", "user.a"]),
            ("chmod", &["d2", "1777"]),
            ("append", &["d2/e", "!"]),
            ("read", &["d1/a"]),
            ("chmod", &["d1/a", "600"]),
            ("link", &["d2/c", "d2/c2"]),
            ("truncate", &["d2/c2", "2"]),
            ("link", &["d1", "dl"]),
            ("symlink", &["d1/b", "sl"]),
            ("read", &["sl"]),
            ("append", &["d1/e", "via symlink"]),
            ("mkfifo", &["fifo", "640"]),
            ("write", &["fifo", "x"]),
            ("truncate", &["d1/s/c", "100"]),
            ("chown", &["d1/e", "5", "5"]),
        ]),
    );
}

#[test]
fn random_scripts() {
    let seeds: u64 = std::env::var("LAYERFS_DIFF_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let nops: usize = std::env::var("LAYERFS_DIFF_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        run_script(&format!("seed {seed}"), &random_script(seed, nops));
    }
}
