//! Holding a container still while it is committed, as `docker commit` pauses it.
//!
//! A commit reads the container's upper directory file by file. Processes that keep
//! writing meanwhile make that read see no single moment of the container: a file renamed
//! away between listing and reading fails the commit with ENOENT, and files written in
//! one pass of a program show up from different passes, or half-written.
//!
//! What is held: every process that uses the mount, seen from /proc: its root, its working
//! directory, an open file or a mapped file on the mount's device. That is every process
//! of a container `layerctl run` started (crun and bubblewrap both make the mount the
//! container's root) and every process working in a plain `layerctl mount`. They are
//! stopped with SIGSTOP, parents before children, and continued with SIGCONT, children
//! before parents, so that a shell in the mount never sees its job stop.
//!
//! Why signals and not the alternatives:
//! - `crun pause` and the cgroup freezer need the container in a cgroup of its own;
//!   `run` starts crun with `--cgroup-manager=disabled` (hybrid-cgroup hosts refuse it
//!   otherwise) and bubblewrap has no cgroup at all. Freezing the cgroup they share
//!   with layerctl would freeze the caller too.
//! - The daemon cannot hold writes: with FUSE passthrough (src/passthrough.rs) the
//!   kernel writes an open upper file directly, without asking the daemon, and dirty
//!   mmap pages reach the file the same way.
//!
//! A system call in progress finishes before its process stops (a stop takes effect on
//! the way back to user space, and layerfs ignores FUSE_INTERRUPT), so one `write(2)` is
//! committed whole or not at all. Every thread of every held process is seen stopped
//! before the upper is read; processes that appear meanwhile (forked by one not yet
//! stopped) are found by scanning again until a scan finds nothing new.
//!
//! Never left stopped: the processes are continued when the commit ends, on error, on
//! SIGINT/SIGTERM/SIGHUP (the interrupt thread calls [`resume_after_interrupt`]) and,
//! should layerctl be killed with SIGKILL, by a watchdog child (`layerctl
//! __resume-watchdog`, in a process group of its own so that Ctrl-C does not reach it)
//! that learns each pid before it is stopped and continues them all when its pipe from
//! layerctl closes without "done".
//!
//! Not held: layerctl, its ancestors (they wait for it; stopping a shell that waits
//! would hand its terminal back to an outer shell), FUSE daemons (anything with
//! /dev/fuse open), processes already stopped, and processes of other users that this
//! user may not signal (the commit fails then, naming one). A process outside the mount
//! that only names paths in it, with nothing open there at the moment of a scan, is not
//! seen.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::err;
use crate::error::Result;
use crate::sys;

/// The hidden subcommand the watchdog runs as.
pub const WATCHDOG_ARG: &str = "__resume-watchdog";

/// How long the processes of one scan may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scans before giving up on processes that keep forking new ones.
const MAX_ROUNDS: usize = 64;

/// Processes this layerctl stopped, in the order it stopped them, each with a pidfd so
/// that the SIGCONT reaches that very process.
static STOPPED: Mutex<Vec<(i32, OwnedFd)>> = Mutex::new(Vec::new());

/// The processes of a mount, stopped; continued on drop.
pub struct Paused {
    watchdog: Option<(Child, ChildStdin)>,
    count: usize,
}

impl Paused {
    /// How many processes are held.
    pub fn count(&self) -> usize {
        self.count
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        resume_all();
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"done\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Continues every process this layerctl stopped, the last stopped first.
fn resume_all() {
    let held: Vec<(i32, OwnedFd)> = match STOPPED.lock() {
        Ok(mut s) => std::mem::take(&mut *s),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for (_, fd) in held.iter().rev() {
        let _ = sys::pidfd_signal(fd.as_fd(), libc::SIGCONT);
    }
}

/// Called by the interrupt thread before layerctl ends on a signal.
pub fn resume_after_interrupt() {
    resume_all();
}

/// What /proc/PID/stat says about a process.
struct Stat {
    state: char,
    ppid: i32,
    kernel_thread: bool,
}

fn read_stat(path: &Path) -> Option<Stat> {
    let text = fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    const PF_KTHREAD: u64 = 0x0020_0000;
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        kernel_thread: f.get(6)?.parse::<u64>().ok()? & PF_KTHREAD != 0,
    })
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn stopped_state(c: char) -> bool {
    // T: stopped by a signal; t: stopped by a tracer. Z/X: exiting, never runs again.
    matches!(c, 'T' | 't' | 'Z' | 'X')
}

/// How process `pid` relates to the mount on device `dev`.
#[derive(PartialEq)]
enum Use {
    None,
    Uses,
    /// Has /dev/fuse open: a FUSE daemon, maybe the mount's own; never stopped.
    FuseDaemon,
}

fn uses_mount(pid: i32, dev: (u32, u32)) -> Use {
    let base = format!("/proc/{pid}");
    let mut uses = false;
    for l in ["root", "cwd"] {
        if sys::dev_of_cached(Path::new(&format!("{base}/{l}"))).ok() == Some(dev) {
            uses = true;
        }
    }
    if let Ok(rd) = fs::read_dir(format!("{base}/fd")) {
        for e in rd.flatten() {
            let p = e.path();
            if fs::read_link(&p).is_ok_and(|t| t == Path::new("/dev/fuse")) {
                return Use::FuseDaemon;
            }
            if !uses && sys::dev_of_cached(&p).ok() == Some(dev) {
                uses = true;
            }
        }
    }
    if !uses {
        if let Ok(maps) = fs::read_to_string(format!("{base}/maps")) {
            // "start-end perms offset MAJ:MIN inode path", the numbers in hex.
            uses = maps.lines().any(|l| {
                let d = l.split_whitespace().nth(3).and_then(|d| d.split_once(':'));
                d.and_then(|(a, b)| {
                    Some((
                        u32::from_str_radix(a, 16).ok()?,
                        u32::from_str_radix(b, 16).ok()?,
                    ))
                }) == Some(dev)
            });
        }
    }
    if uses {
        Use::Uses
    } else {
        Use::None
    }
}

/// Every process of the system: pid -> its stat.
fn all_processes() -> HashMap<i32, Stat> {
    let mut out = HashMap::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(s) = read_stat(&e.path().join("stat")) {
            out.insert(pid, s);
        }
    }
    out
}

/// Depth of `pid` in the process tree (bounded: a pid table is finite, a loop is not).
fn depth(procs: &HashMap<i32, Stat>, pid: i32) -> usize {
    let mut d = 0;
    let mut cur = pid;
    while let Some(s) = procs.get(&cur) {
        if s.ppid <= 0 || d > procs.len() {
            break;
        }
        d += 1;
        cur = s.ppid;
    }
    d
}

/// True once every thread of `pid` is stopped (or the process is gone).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    rd.flatten()
        .all(|t| read_stat(&t.path().join("stat")).is_none_or(|s| stopped_state(s.state)))
}

fn start_watchdog() -> Result<(Child, ChildStdin)> {
    let exe = std::env::current_exe()
        .map_err(|e| err!("finding layerctl's own executable for the pause watchdog: {e}"))?;
    let mut child = Command::new(&exe)
        .arg(WATCHDOG_ARG)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            err!(
                "starting the pause watchdog {} ({e}): commit with --no-pause to skip pausing",
                exe.display()
            )
        })?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| err!("the pause watchdog has no stdin"))?;
    Ok((child, stdin))
}

/// Stops every process using the mount at `mountpoint` (see the module comment) and
/// returns once all of them are stopped. `what` names the container in errors.
pub fn pause_mount(mountpoint: &Path, what: &str) -> Result<Paused> {
    let dev = sys::dev_of_cached(mountpoint)
        .map_err(|e| err!("pausing container {what}: {}: {e}", mountpoint.display()))?;
    let (child, stdin) = start_watchdog()?;
    let mut paused = Paused {
        watchdog: None,
        count: 0,
    };
    let watchdog_pid = child.id() as i32;
    paused.watchdog = Some((child, stdin));

    let me = std::process::id() as i32;
    let mut exclude: HashSet<i32> = [me, watchdog_pid].into_iter().collect();
    let procs = all_processes();
    let mut cur = me;
    while let Some(s) = procs.get(&cur) {
        if s.ppid <= 0 || !exclude.insert(s.ppid) {
            break;
        }
        cur = s.ppid;
    }

    let mut held: HashSet<i32> = HashSet::new();
    for _round in 0..MAX_ROUNDS {
        let procs = all_processes();
        let mut found: Vec<i32> = Vec::new();
        for (&pid, s) in &procs {
            if exclude.contains(&pid) || held.contains(&pid) || s.kernel_thread {
                continue;
            }
            if stopped_state(s.state) {
                // Already stopped by someone else: not ours to continue.
                continue;
            }
            match uses_mount(pid, dev) {
                Use::Uses => found.push(pid),
                Use::FuseDaemon => {
                    exclude.insert(pid);
                }
                Use::None => {}
            }
        }
        if found.is_empty() {
            return Ok(paused);
        }
        // Parents first: a parent that is already stopped cannot react to its child's stop.
        let mut by_depth: Vec<(usize, i32)> =
            found.iter().map(|&p| (depth(&procs, p), p)).collect();
        by_depth.sort_unstable();
        let mut i = 0;
        while i < by_depth.len() {
            let d = by_depth[i].0;
            let mut level = Vec::new();
            while i < by_depth.len() && by_depth[i].0 == d {
                level.push(by_depth[i].1);
                i += 1;
            }
            let mut level_held = Vec::new();
            for &pid in &level {
                // The pidfd first, then the check again: if the number was reused since
                // the scan, the new process fails the check (it does not use the mount)
                // or the old one is gone and the signal finds nothing.
                let Ok(fd) = sys::pidfd_open(pid) else {
                    continue;
                };
                if uses_mount(pid, dev) != Use::Uses {
                    continue;
                }
                // The watchdog learns the pid first: a layerctl killed right after the
                // stop still gets it continued.
                if let Some((_, stdin)) = paused.watchdog.as_mut() {
                    stdin
                        .write_all(format!("{pid}\n").as_bytes())
                        .and_then(|()| stdin.flush())
                        .map_err(|e| {
                            err!("pausing container {what}: the pause watchdog is gone ({e}); commit with --no-pause to skip pausing")
                        })?;
                }
                let sent = sys::pidfd_signal(fd.as_fd(), libc::SIGSTOP);
                if sent.is_ok() {
                    if let Ok(mut s) = STOPPED.lock() {
                        s.push((pid, fd));
                    }
                }
                match sent {
                    Ok(()) => {
                        held.insert(pid);
                        level_held.push(pid);
                        paused.count += 1;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(err!(
                            "pausing container {what}: cannot stop process {pid} ({}) that uses {}: {e}; commit as its owner, or with --no-pause",
                            comm(pid),
                            mountpoint.display()
                        ))
                    }
                }
            }
            let start = Instant::now();
            while let Some(&late) = level_held.iter().find(|&&p| !all_threads_stopped(p)) {
                if start.elapsed() > STOP_TIMEOUT {
                    return Err(err!(
                        "pausing container {what}: process {late} ({}) did not stop within {}s (blocked in the kernel?); commit with --no-pause to skip pausing",
                        comm(late),
                        STOP_TIMEOUT.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    Err(err!(
        "pausing container {what}: processes using {} keep starting new ones faster than they can be stopped; commit with --no-pause to skip pausing",
        mountpoint.display()
    ))
}

/// `layerctl __resume-watchdog`: reads pids, one a line, from stdin; at "done" it exits;
/// at end of input without "done" (layerctl died) it continues them all.
pub fn watchdog_main() -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        sys::set_signal(sig, libc::SIG_IGN);
    }
    let mut pids = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "done" {
            return 0;
        }
        if let Ok(p) = line.trim().parse::<i32>() {
            pids.push(p);
        }
    }
    for &p in pids.iter().rev() {
        let _ = sys::kill(p, libc::SIGCONT);
    }
    0
}
