//! `layerctl commit` of a container whose processes are writing: the processes are held
//! while the upper directory is read, so every committed image is one moment of the
//! container, the commit never fails on a file renamed away under it, and the writer
//! carries on afterwards. For a plain `layerctl mount` with a writer working in it, and
//! for containers `layerctl run` started (crun and bubblewrap), which run in the
//! foreground of their own `layerctl run` while another `layerctl commit` commits them.

mod common;

#[path = "../../tests/common/rootless.rs"]
mod rootless;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// For tests/common/rootless.rs.
#[allow(dead_code)]
fn layerfs_bin() -> PathBuf {
    layerctl_bin().with_file_name("layerfs")
}

const SIZE: usize = 64 * 1024;
/// Written in this order in every pass: whole files renamed over the old ones, then
/// files rewritten in place by one write(2) each.
const RENAMED: usize = 8;
const IN_PLACE: usize = 4;

/// The writer, run with its working directory in the container (a busybox or a host
/// shell: only yes, head, mv, dd and sleep). Pass i writes every file with the pattern of i,
/// then `count` = i. It ends when `stop` appears.
const WRITER: &str = r#"
i=0
while [ ! -e stop ]; do
  i=$((i+1))
  k=0
  while [ $k -lt 8 ]; do
    yes "i=$i k=r$k" | head -c 65536 > r$k.tmp && mv r$k.tmp r$k
    k=$((k+1))
  done
  k=0
  while [ $k -lt 4 ]; do
    yes "i=$i k=p$k" | head -c 65536 > src.tmp
    dd if=src.tmp of=p$k bs=65536 count=1 conv=notrunc 2>/dev/null
    k=$((k+1))
  done
  echo $i > count.tmp && mv count.tmp count
  # Not flat out: the machine is shared; a pass still spans several commits' reads.
  sleep 0.02
done
"#;

fn names() -> Vec<String> {
    (0..RENAMED)
        .map(|k| format!("r{k}"))
        .chain((0..IN_PLACE).map(|k| format!("p{k}")))
        .collect()
}

fn pattern(i: u64, name: &str) -> Vec<u8> {
    let line = format!("i={i} k={name}\n");
    line.as_bytes().iter().copied().cycle().take(SIZE).collect()
}

/// Checks that `dir` (the writer's directory in a committed image) is a moment the
/// container passed through; returns the pass it shows (`count`).
///
/// One moment: each file is whole, exactly the pattern of one pass; taken in the order
/// the writer writes them, the passes never go up and span at most two neighbours
/// (files before the writer's position show pass i, the rest i - 1); `count` is the
/// last file's pass, or one less while the writer has not yet written `count` after
/// finishing all of a pass.
fn check_moment(dir: &Path) -> Result<u64, String> {
    let mut passes = Vec::new();
    for n in names() {
        let data = fs::read(dir.join(&n)).map_err(|e| format!("{n}: {e}"))?;
        let first = data.split(|b| *b == b'\n').next().unwrap_or(b"");
        let first = String::from_utf8_lossy(first).into_owned();
        let i: u64 = first
            .strip_prefix("i=")
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{n}: unexpected start {first:?}"))?;
        if data != pattern(i, &n) {
            return Err(format!(
                "{n} is not whole: starts as pass {i} but has {} bytes that differ from it (size {})",
                data.iter()
                    .zip(pattern(i, &n))
                    .filter(|(a, b)| **a != *b)
                    .count(),
                data.len()
            ));
        }
        passes.push(i);
    }
    let count: u64 = fs::read_to_string(dir.join("count"))
        .map_err(|e| format!("count: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("count: {e}"))?;
    let (first, last) = (passes[0], passes[passes.len() - 1]);
    let monotone = passes.windows(2).all(|w| w[0] >= w[1]);
    let ok_count = if first == last {
        count == last || count + 1 == last
    } else {
        count == last
    };
    if !monotone || first - last > 1 || !ok_count {
        return Err(format!(
            "not one moment: passes in write order {passes:?}, count {count}"
        ));
    }
    Ok(count)
}

fn read_count(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the writer has finished `n` more passes than `from`, seen in `dir`.
fn wait_passes(dir: &Path, from: u64, n: u64, what: &str) -> u64 {
    let start = Instant::now();
    loop {
        let c = read_count(dir);
        if c >= from + n {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: the writer is stuck at pass {c} (wanted {})",
            from + n
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process state letters of `pid`'s process group (R, S, D, T, ...).
fn group_states(pgid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|r| r.1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if rest.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push((pid, rest[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// Commits `name` `rounds` times while the writer runs; mounts each image read-only and
/// checks it is one moment (`rel` is the writer's directory inside the image); checks
/// the writer runs on after each commit and is never left stopped.
fn commit_while_writing(env: &Env, name: &str, live: &Path, rel: &str, writer_pgid: i32) {
    let mut seen = wait_passes(live, 0, 2, "before the first commit");
    for round in 0..6 {
        let img = format!("snap{round}:latest");
        let out = env.run(&["commit", name, &img]);
        assert!(
            out.status.success(),
            "commit {round} of a container in use failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stopped: Vec<_> = group_states(writer_pgid)
            .into_iter()
            .filter(|(_, s)| *s == 'T')
            .collect();
        assert!(
            stopped.is_empty(),
            "after commit {round} the writer is left stopped: {stopped:?}"
        );
        let ro = env.path(&format!("ro{round}"));
        fs::create_dir_all(&ro).unwrap();
        let _guard = MountGuard(vec![ro.clone()]);
        let ro_name = format!("ro{round}");
        env.ok(&[
            "mount",
            &img,
            ro.to_str().unwrap(),
            "--name",
            &ro_name,
            "--read-only",
        ]);
        let res = check_moment(&ro.join(rel));
        env.ok(&["umount", &ro_name]);
        env.ok(&["rm", &ro_name]);
        let pass = res.unwrap_or_else(|e| panic!("image of commit {round}: {e}"));
        assert!(pass >= 1, "commit {round} shows no finished pass");
        // The writer carries on: two more whole passes after this commit.
        seen = wait_passes(live, seen.max(pass), 2, &format!("after commit {round}"));
    }
}

fn spawn_group(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn().unwrap()
}

/// Kills a process group started by [`spawn_group`] if the test fails half-way.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // kill(2) itself, never the kill(1) of procps: that reads `-KILL -11039` as
        // signal 9 to pid -1, i.e. to every process on the machine.
        if self.0 > 1 {
            let _ = layerctl::sys::kill(-self.0, libc::SIGCONT);
            let _ = layerctl::sys::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// A plain `layerctl mount` with a shell writing in it (its working directory there):
/// every commit succeeds and is one moment; the writer keeps going.
#[test]
fn commit_of_a_mount_in_use_is_one_moment() {
    let env = Env::new();
    env.import_rootfs("base");
    let (mnt, _guard) = env.mount_new("base", "mnt", "c");
    let w = mnt.join("w");
    fs::create_dir(&w).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(WRITER).current_dir(&w);
    let mut child = spawn_group(cmd);
    let pgid = child.id() as i32;
    let _kill = GroupGuard(pgid);
    commit_while_writing(&env, "c", &w, "w", pgid);
    fs::write(w.join("stop"), "").unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "writer failed: {st}");
}

/// The same with a container `layerctl run` started, once per runtime: the commit comes
/// from another layerctl while `run` is in the foreground.
#[test]
fn commit_of_a_running_container_is_one_moment() {
    let env = Env::new();
    let rootfs = env.path("bb");
    rootless::busybox_rootfs(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "bb:1"]);
    for rt in ["crun", "bwrap"] {
        let name = format!("run-{rt}");
        let script = format!("mkdir -p /w && cd /w && {WRITER}");
        let mut cmd = env.cmd(&[
            "run",
            "--name",
            &name,
            "--runtime",
            rt,
            "bb:1",
            "/bin/sh",
            "-c",
            &script,
        ]);
        cmd.env_remove("LAYERFS_ROOT");
        let child = spawn_group(cmd);
        let _kill = GroupGuard(child.id() as i32);
        // The container's mount point, once `run` has recorded it.
        let start = Instant::now();
        let mnt = loop {
            let v = env.json(&["ps", "--json"]);
            let mp = v.as_array().unwrap().iter().find_map(|c| {
                (c["name"] == name.as_str())
                    .then(|| c["mountpoint"].as_str().map(PathBuf::from))
                    .flatten()
            });
            if let Some(mp) = mp {
                break mp;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{rt}: the container never got mounted"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let live = mnt.join("w");
        commit_while_writing(&env, &name, &live, "w", child.id() as i32);
        fs::write(live.join("stop"), "").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{rt}: run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The oracle itself: a file from another pass out of order, a torn file and a count
/// ahead of the files are each refused; a moment mid-pass is accepted.
#[test]
fn the_moment_check_refuses_mixed_and_torn_states() {
    let d = tempfile::tempdir().unwrap();
    let put = |passes: &[u64], count: u64| {
        for (n, i) in names().iter().zip(passes) {
            fs::write(d.path().join(n), pattern(*i, n)).unwrap();
        }
        fs::write(d.path().join("count"), format!("{count}\n")).unwrap();
    };
    let mid = [5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4];
    put(&mid, 4);
    assert_eq!(check_moment(d.path()), Ok(4));
    put(&[5; 12], 4);
    assert_eq!(check_moment(d.path()), Ok(4));
    put(&[5, 5, 4, 5, 4, 4, 4, 4, 4, 4, 4, 4], 4);
    assert!(check_moment(d.path()).is_err(), "out of order");
    put(&[6, 6, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], 4);
    assert!(check_moment(d.path()).is_err(), "two passes apart");
    put(&mid, 5);
    assert!(check_moment(d.path()).is_err(), "count ahead");
    put(&mid, 4);
    let mut torn = pattern(4, "p1");
    torn[..1000].copy_from_slice(&pattern(5, "p1")[..1000]);
    fs::write(d.path().join("p1"), torn).unwrap();
    assert!(check_moment(d.path()).is_err(), "torn in-place file");
}

/// True when some process of group `pgid` is stopped.
fn any_stopped(pgid: i32) -> bool {
    group_states(pgid).iter().any(|(_, s)| *s == 'T')
}

/// A commit killed while it holds the container (SIGINT, SIGTERM, and SIGKILL, which
/// layerctl cannot catch: its watchdog continues the processes) never leaves a process
/// stopped; the writer carries on.
#[test]
fn an_interrupted_commit_never_leaves_the_container_stopped() {
    let env = Env::new();
    env.import_rootfs("base");
    let (mnt, _guard) = env.mount_new("base", "mnt", "c");
    // A big upper keeps the commit reading (and the writer held) long enough to be hit.
    sh(&mnt, "head -c 40000000 /dev/urandom > big; mkdir w");
    let w = mnt.join("w");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(WRITER).current_dir(&w);
    let mut child = spawn_group(cmd);
    let pgid = child.id() as i32;
    let _kill = GroupGuard(pgid);
    wait_passes(&w, 0, 1, "before the commits");
    for (sig, signo) in [
        ("INT", libc::SIGINT),
        ("TERM", libc::SIGTERM),
        ("KILL", libc::SIGKILL),
    ] {
        let mut commit = env
            .cmd(&["commit", "c", "killed:latest"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !any_stopped(pgid) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "SIG{sig}: the commit never paused the writer"
            );
            assert!(
                commit.try_wait().unwrap().is_none(),
                "SIG{sig}: the commit ended before it was seen pausing the writer"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        layerctl::sys::kill(commit.id() as i32, signo).unwrap();
        let st = commit.wait().unwrap();
        assert!(
            !st.success(),
            "SIG{sig}: the commit finished before the signal"
        );
        let start = Instant::now();
        while any_stopped(pgid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "SIG{sig}: the writer is left stopped: {:?}",
                group_states(pgid)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let c = read_count(&w);
        wait_passes(&w, c, 2, &format!("after SIG{sig}"));
    }
    fs::write(w.join("stop"), "").unwrap();
    assert!(child.wait().unwrap().success());
    env.fsck_passes("after interrupted commits");
}
