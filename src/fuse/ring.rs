//! FUSE over io_uring: requests taken from per-CPU rings instead of `/dev/fuse` reads.
//!
//! With `/dev/fuse`, every request costs the daemon a read and a write, and the request
//! usually wakes a worker on another CPU. Over io_uring the kernel queues a request on the
//! ring of the CPU the caller runs on; that queue's thread, pinned to the same CPU, takes
//! it, answers with [`Ops`], and commits the reply and fetches the next request in one
//! `io_uring_enter`. INIT, FORGET and INTERRUPT still come through `/dev/fuse` (fuser's
//! session serves them).
//!
//! The kernel wakes the caller while the queue thread still runs on its CPU, so the
//! scheduler would move the caller to an idle CPU, and every request would then pay for
//! waking an idle CPU (in a VM that costs more than the request: an lstat loop took
//! 50 us per entry instead of 14). So while requests keep coming, up to [`MAX_POLLERS`]
//! queue threads look for the next one without sleeping ([`Polling`]), yielding to any
//! other task: no CPU goes idle, the caller stays where it is, and its queue thread is
//! already awake.
//!
//! A request that may take long (a copy-up of a lower file's data, an fsync; see
//! [`slow`]) is handed to a helper thread instead, which answers it into the same entry
//! and has the queue thread commit it ([`Helpers`]): otherwise every other request made on
//! that CPU would wait behind it.
//!
//! The kernel queues requests per possible CPU and uses the rings only once every queue
//! has an entry registered; until then new requests wait. If a registration fails the
//! kernel turns io_uring off for the connection and requests go through `/dev/fuse`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fuse::ops::{self, Answer, Ctx, DirPlusSink, DirSink, Ops, ReadSink, Xattr};
use crate::overlay::SetAttr;
use crate::sys::uring::{CmdRing, EntryBuffers};
use crate::sys::{self, Stat};

/// The largest request or reply body: the kernel's default limit of 256 pages per request.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Entries registered per queue: requests the kernel can hand over while one is served.
const DEPTH: usize = 8;

/// Queue threads polling at once. Two keeps a 2-CPU machine busy (the caller's CPU and
/// the other one) during a burst; on larger machines more pollers would burn more CPUs
/// for a scheduler choice they cannot pin down.
const MAX_POLLERS: usize = 2;

/// Who may use the mount besides what the kernel already checks (fuser's session applies
/// the same rule to requests from `/dev/fuse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    RootAndOwner,
    Owner,
}

impl Access {
    pub fn of(config: &crate::Config) -> Access {
        if config.allow_other {
            Access::All
        } else if config.allow_root {
            Access::RootAndOwner
        } else {
            Access::Owner
        }
    }
}

/// Whether this process can run the rings: decided before INIT agrees to them, because
/// once it has the kernel holds every request back until they are registered.
pub fn available() -> std::io::Result<()> {
    possible_cpus()?;
    // The rings are made by their threads (each is single-issuer); this one only proves
    // the kernel allows io_uring with 128-byte entries here (io_uring_disabled, seccomp).
    drop(CmdRing::new(DEPTH as u32 * 2)?);
    Ok(())
}

/// The running queue threads.
pub struct Rings {
    stopped: mpsc::Receiver<()>,
    running: usize,
}

impl Rings {
    /// Waits (at most `limit`) for the queue threads to stop, which they do when the
    /// connection ends. The last one drops the operations, and with them the overlay,
    /// which tidies the work directory.
    pub fn finish(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for _ in 0..self.running {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stopped.recv_timeout(left).is_err() {
                log::warn!("FUSE ring threads still running at exit");
                return;
            }
        }
    }
}

/// Starts one thread per possible CPU, each registering its queue's ring entries, after
/// INIT agreed to FUSE over io_uring. Any queue that cannot start turns io_uring off for
/// the connection, so requests keep coming through `/dev/fuse`.
pub fn start(ops: Arc<Ops>, dev: BorrowedFd, access_rule: Access, poll: Duration) -> Rings {
    let (done, stopped) = mpsc::channel();
    let mut rings = Rings {
        stopped,
        running: 0,
    };
    let dev = match dev.try_clone_to_owned() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            log::error!("cannot start FUSE over io_uring ({e})");
            disable(dev, u16::MAX);
            return rings;
        }
    };
    let queues = match possible_cpus() {
        Ok(n) => n,
        Err(e) => {
            log::error!("cannot start FUSE over io_uring ({e})");
            disable(dev.as_fd(), u16::MAX);
            return rings;
        }
    };
    let (jobs, queued) = mpsc::channel();
    let server = Arc::new(Server {
        ops,
        access: access_rule,
        owner: sys::process::geteuid(),
        polling: Polling::new(poll),
        jobs,
    });
    start_helpers(queues, queued);
    for qid in 0..queues {
        let (server, queue_dev, done) = (server.clone(), dev.clone(), done.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("layerfs-ring{qid}"))
            .spawn(move || {
                if let Err(e) = serve_queue(&server, &queue_dev, qid as u16) {
                    log::error!("FUSE ring queue {qid} stopped: {e}");
                    disable(queue_dev.as_fd(), u16::MAX);
                }
                drop(server);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => rings.running += 1,
            Err(e) => {
                // Without this queue the rings never become ready and, having agreed to
                // io_uring, the kernel would hold every request back waiting for them.
                log::error!("cannot start FUSE ring queue {qid} ({e})");
                disable(dev.as_fd(), u16::MAX);
            }
        }
    }
    rings
}

/// Turns io_uring off for this connection, so requests go through `/dev/fuse` again: the
/// kernel does that when a registration fails, and one for a queue that does not exist
/// (or with buffers too small) fails.
fn disable(dev: BorrowedFd, bad_qid: u16) {
    let Ok(mut ring) = CmdRing::new(2) else {
        log::error!("cannot turn FUSE over io_uring off: requests may hang");
        return;
    };
    let mut entry = EntryBuffers::new(0);
    let mut done = Vec::new();
    if ring.register(dev, bad_qid, &mut entry, 0).is_ok() {
        let _ = ring.wait(&mut done);
    }
    drop(ring);
    std::mem::forget(entry);
}

/// How many queues a ring session would have (0 when that cannot be read), for sizing
/// what else may keep descriptors.
pub fn queue_count() -> usize {
    possible_cpus().unwrap_or(0)
}

/// The CPUs the kernel may run a caller on: one queue each (`/sys/devices/system/cpu/possible`,
/// "0-3" or "0,2-5").
fn possible_cpus() -> std::io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut last = 0;
    for part in text.trim().split(',') {
        let end = part.rsplit('-').next().unwrap_or(part);
        let n: usize = end
            .parse()
            .map_err(|_| std::io::Error::other(format!("cannot read possible CPUs {text:?}")))?;
        last = last.max(n);
    }
    Ok(last + 1)
}

struct Server {
    ops: Arc<Ops>,
    access: Access,
    owner: u32,
    polling: Polling,
    /// Slow requests for the helper threads. They end when the last queue thread drops
    /// the server (the jobs in flight hold it too).
    jobs: mpsc::Sender<Job>,
}

/// A slow request handed to a helper thread, with the entry it came in.
struct Job {
    server: Arc<Server>,
    slot: EntryBuffers,
    tag: u64,
    back: Arc<Answered>,
}

/// Entries a helper has answered, for their queue thread to commit (only the ring's own
/// thread may submit to it), and the eventfd that wakes that thread.
struct Answered {
    entries: Mutex<Vec<(u64, u64, EntryBuffers)>>,
    event: OwnedFd,
}

impl Drop for Answered {
    fn drop(&mut self) {
        // As with the queue's own entries, the kernel may still hold these buffers'
        // addresses while the connection winds down.
        let entries = std::mem::take(&mut *self.entries.lock().unwrap_or_else(|e| e.into_inner()));
        std::mem::forget(entries);
    }
}

/// Helper threads for slow requests: as many as queues, from 2 to 4.
fn start_helpers(queues: usize, queued: mpsc::Receiver<Job>) {
    let queued = Arc::new(Mutex::new(queued));
    for n in 0..queues.clamp(2, 4) {
        let queued = queued.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("layerfs-slow{n}"))
            .spawn(move || {
                let mut scratch = Vec::new();
                loop {
                    let job = queued.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(mut job) = job else { return };
                    let commit_id = serve(&job.server, &mut job.slot, &mut scratch);
                    job.back
                        .entries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((job.tag, commit_id, job.slot));
                    if let Err(e) = sys::process::eventfd_signal(job.back.event.as_fd()) {
                        log::error!("cannot wake FUSE ring queue thread: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            // Slow requests are then answered by the queue threads themselves.
            log::warn!("cannot start a helper thread for slow requests ({e})");
        }
    }
}

/// Whether a request may take long enough to hold up the others on its queue: it may copy
/// a lower file's data up, or waits for the disk. Everything else is answered in place.
fn slow(server: &Server, header: &[u8]) -> bool {
    let opcode = u32_at(header, IN_OUT + 4);
    let node = u64_at(header, IN_OUT + 16);
    match opcode {
        FSYNC | FSYNCDIR | FALLOCATE | COPY_FILE_RANGE | RENAME | RENAME2 | LINK => true,
        OPEN => {
            let flags = u32_at(header, OP_IN) as i32;
            let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
            writes && server.ops.would_copy_data_up(node)
        }
        SETATTR | SETXATTR | REMOVEXATTR => server.ops.would_copy_data_up(node),
        _ => false,
    }
}

/// The completion tag of the read of a queue's eventfd (entries are tagged 0..DEPTH).
const EVENT_TAG: u64 = u64::MAX;

/// When a queue last took or answered a request, and how many threads are polling for
/// the next.
struct Polling {
    window_ns: u64,
    epoch: Instant,
    last_ns: AtomicU64,
    pollers: AtomicUsize,
}

/// A polling turn; ends when dropped.
struct PollTurn<'a>(&'a AtomicUsize);

impl Drop for PollTurn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Polling {
    fn new(window: Duration) -> Polling {
        Polling {
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            pollers: AtomicUsize::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }

    /// Stamps a request taken or answered: polling lasts a window past either, so a
    /// request that takes a while to answer does not end the others' polling.
    fn stamp(&self) {
        if self.window_ns > 0 {
            self.last_ns.store(self.now_ns(), Ordering::Relaxed);
        }
    }

    /// Whether a queue took or answered a request within the window.
    fn busy(&self) -> bool {
        let last = self.last_ns.load(Ordering::Relaxed);
        last != 0 && self.now_ns().saturating_sub(last) < self.window_ns
    }

    /// A turn to poll, if requests are coming and fewer than MAX_POLLERS threads poll.
    fn turn(&self) -> Option<PollTurn<'_>> {
        if !self.busy() {
            return None;
        }
        if self.pollers.fetch_add(1, Ordering::Relaxed) >= MAX_POLLERS {
            self.pollers.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(PollTurn(&self.pollers))
    }
}

fn serve_queue(server: &Arc<Server>, dev: &OwnedFd, qid: u16) -> std::io::Result<()> {
    // Same CPU as the callers this queue serves: the request and its reply stay in one
    // CPU's caches, and the caller's wakeup needs no other CPU.
    if let Err(e) = sys::process::pin_to_cpu(qid as usize) {
        log::debug!("FUSE ring queue {qid} not pinned: {e}");
    }
    let mut ring = CmdRing::new(DEPTH as u32 * 2 + 1)?;
    let mut slots: Vec<Option<EntryBuffers>> = (0..DEPTH)
        .map(|_| Some(EntryBuffers::new(MAX_PAYLOAD)))
        .collect();
    let answered = Arc::new(Answered {
        entries: Mutex::new(Vec::new()),
        event: sys::process::eventfd()?,
    });
    let mut counter = Box::new(0u64);
    let result = run(
        server,
        dev.as_fd(),
        qid,
        &mut ring,
        &mut slots,
        &answered,
        &mut counter,
    );
    drop(ring);
    // The kernel may still hold the buffers' addresses while the connection winds down;
    // the process is ending with it, so they are simply left to it.
    std::mem::forget(slots);
    std::mem::forget(counter);
    result
}

fn run(
    server: &Arc<Server>,
    dev: BorrowedFd,
    qid: u16,
    ring: &mut CmdRing,
    slots: &mut [Option<EntryBuffers>],
    answered: &Arc<Answered>,
    counter: &mut u64,
) -> std::io::Result<()> {
    for (tag, slot) in slots.iter_mut().enumerate() {
        if let Some(slot) = slot {
            ring.register(dev, qid, slot, tag as u64)?;
        }
    }
    ring.read_event(answered.event.as_fd(), counter, EVENT_TAG)?;
    let mut done = Vec::with_capacity(slots.len() + 1);
    let mut scratch = Vec::new();
    loop {
        let polled = match server.polling.turn() {
            Some(_turn) => ring.poll(&mut done, || server.polling.busy())?,
            None => false,
        };
        if !polled {
            ring.wait(&mut done)?;
        }
        server.polling.stamp();
        for &(tag, res) in &done {
            if tag == EVENT_TAG {
                let entries = std::mem::take(
                    &mut *answered.entries.lock().unwrap_or_else(|e| e.into_inner()),
                );
                for (tag, commit_id, slot) in entries {
                    if let Some(place) = slots.get_mut(tag as usize) {
                        *place = Some(slot);
                        ring.commit_and_fetch(dev, qid, commit_id, tag)?;
                    }
                }
                ring.read_event(answered.event.as_fd(), counter, EVENT_TAG)?;
                continue;
            }
            let Some(place) = slots.get_mut(tag as usize) else {
                continue;
            };
            match res {
                0 => {
                    let Some(slot) = place.take() else {
                        continue;
                    };
                    let slot = if slow(server, &slot.header[..]) {
                        match hand_over(server, slot, tag, answered) {
                            Ok(()) => continue,
                            // No helper: answer it here after all.
                            Err(slot) => slot,
                        }
                    } else {
                        slot
                    };
                    let commit_id = serve(server, place.insert(slot), &mut scratch);
                    ring.commit_and_fetch(dev, qid, commit_id, tag)?;
                }
                // Unmounted (or the connection aborted): this queue is done.
                r if r == -libc::ENOTCONN || r == -libc::ECONNABORTED || r == -libc::ECANCELED => {
                    log::debug!("FUSE ring queue {qid}: connection closed");
                    return Ok(());
                }
                r => {
                    return Err(std::io::Error::from_raw_os_error(-r));
                }
            }
        }
        server.polling.stamp();
    }
}

/// Gives the request in `slot` to a helper thread; hands the entry back if none is running.
fn hand_over(
    server: &Arc<Server>,
    slot: EntryBuffers,
    tag: u64,
    answered: &Arc<Answered>,
) -> Result<(), EntryBuffers> {
    let job = Job {
        server: server.clone(),
        slot,
        tag,
        back: answered.clone(),
    };
    server
        .jobs
        .send(job)
        .map_err(|mpsc::SendError(job)| job.slot)
}

// ----- the request and reply layout (include/uapi/linux/fuse.h) -----

/// Offsets in the entry's header buffer.
const IN_OUT: usize = 0;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    })
}

/// The NUL-terminated names at the start of a request payload.
struct Names<'a>(&'a [u8]);

impl<'a> Names<'a> {
    fn next(&mut self) -> Option<&'a OsStr> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let name = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(OsStr::from_bytes(name))
    }

    fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// Reply bodies, laid out as the kernel reads them.
struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }

    /// `struct fuse_attr` (88 bytes).
    fn attr(&mut self, st: &Stat) {
        self.u64(st.st_ino);
        self.u64(st.st_size as u64);
        self.u64(st.st_blocks as u64);
        self.u64(st.st_atime as u64);
        self.u64(st.st_mtime as u64);
        self.u64(st.st_ctime as u64);
        self.u32(st.st_atime_nsec as u32);
        self.u32(st.st_mtime_nsec as u32);
        self.u32(st.st_ctime_nsec as u32);
        self.u32(st.st_mode);
        self.u32(st.st_nlink as u32);
        self.u32(st.st_uid);
        self.u32(st.st_gid);
        self.u32(st.st_rdev as u32);
        self.u32(st.st_blksize as u32);
        self.u32(0);
    }

    /// `struct fuse_entry_out` (128 bytes).
    fn entry(&mut self, e: &ops::Entry, ttl: Duration) {
        self.u64(e.id);
        self.u64(e.generation);
        self.u64(ttl.as_secs());
        self.u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos());
        self.u32(ttl.subsec_nanos());
        self.attr(&e.st);
    }

    /// `struct fuse_open_out` (16 bytes).
    fn open(&mut self, o: &ops::Opened) {
        self.u64(o.fh);
        self.u32(o.flags);
        self.u32(o.backing.unwrap_or(0));
    }

    /// `struct fuse_dirent` and its name, padded to 8 bytes.
    fn dirent(&mut self, ino: u64, cookie: u64, dtype: u32, name: &OsStr) {
        self.u64(ino);
        self.u64(cookie);
        self.u32(name.len() as u32);
        self.u32(dtype);
        self.0.extend_from_slice(name.as_bytes());
        let pad = (8 - name.len() % 8) % 8;
        self.0.extend_from_slice(&[0u8; 8][..pad]);
    }
}

fn dirent_size(name: &OsStr) -> usize {
    (24 + name.len()).div_ceil(8) * 8
}

struct Dir<'a> {
    out: Out<'a>,
    limit: usize,
}

impl DirSink for Dir<'_> {
    fn add(&mut self, ino: u64, cookie: u64, dtype: u8, name: &OsStr) -> bool {
        if self.out.0.len() + dirent_size(name) > self.limit {
            return true;
        }
        self.out.dirent(ino, cookie, dtype as u32, name);
        false
    }
}

impl DirPlusSink for Dir<'_> {
    fn add(&mut self, e: &ops::Entry, ttl: Duration, cookie: u64, name: &OsStr) -> bool {
        if self.out.0.len() + 128 + dirent_size(name) > self.limit {
            return true;
        }
        self.out.entry(e, ttl);
        let dtype = (e.st.st_mode & libc::S_IFMT) >> 12;
        self.out.dirent(e.st.st_ino, cookie, dtype, name);
        false
    }
}

struct Payload<'a>(&'a mut [u8]);

impl ReadSink for Payload<'_> {
    fn buffer(&mut self, size: usize) -> &mut [u8] {
        let n = size.min(self.0.len());
        &mut self.0[..n]
    }
}

// Opcodes (enum fuse_opcode).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const SETXATTR: u32 = 21;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const REMOVEXATTR: u32 = 24;
const FLUSH: u32 = 25;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const FSYNCDIR: u32 = 30;
const ACCESS: u32 = 34;
const CREATE: u32 = 35;
const DESTROY: u32 = 38;
const IOCTL: u32 = 39;
const FALLOCATE: u32 = 43;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;
const LSEEK: u32 = 46;
const COPY_FILE_RANGE: u32 = 47;

// SETATTR's `valid` bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;

const FUSE_GETATTR_FH: u32 = 1;
const FUSE_FSYNC_FDATASYNC: u32 = 1;

/// The request's name, for the log line of a request that panicked.
fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        LOOKUP => "LOOKUP",
        GETATTR => "GETATTR",
        SETATTR => "SETATTR",
        READLINK => "READLINK",
        SYMLINK => "SYMLINK",
        MKNOD => "MKNOD",
        MKDIR => "MKDIR",
        UNLINK => "UNLINK",
        RMDIR => "RMDIR",
        RENAME | RENAME2 => "RENAME",
        LINK => "LINK",
        OPEN => "OPEN",
        READ => "READ",
        WRITE => "WRITE",
        CREATE => "CREATE",
        SETXATTR => "SETXATTR",
        GETXATTR => "GETXATTR",
        LISTXATTR => "LISTXATTR",
        REMOVEXATTR => "REMOVEXATTR",
        READDIR => "READDIR",
        READDIRPLUS => "READDIRPLUS",
        _ => "FUSE",
    }
}

/// Requests the kernel may send on behalf of no particular user (writeback, release);
/// fuser lets these through its allow_root check too.
fn uid_free(opcode: u32) -> bool {
    matches!(
        opcode,
        DESTROY | READ | READDIR | READDIRPLUS | WRITE | FSYNC | FSYNCDIR | RELEASE | RELEASEDIR
    )
}

/// Answers the request in `slot` and leaves the reply in it; returns the commit id.
fn serve(server: &Server, slot: &mut EntryBuffers, scratch: &mut Vec<u8>) -> u64 {
    let header = &slot.header[..];
    let opcode = u32_at(header, IN_OUT + 4);
    let unique = u64_at(header, IN_OUT + 8);
    let commit_id = u64_at(header, ENT_COMMIT_ID);
    let payload_len = (u32_at(header, ENT_PAYLOAD_SZ) as usize).min(slot.payload.len());
    scratch.clear();
    let result = ops::guarded(opcode_name(opcode), || {
        if opcode == READ {
            read(server, header, &mut slot.payload)
        } else {
            let r = answer(
                server,
                header,
                &slot.payload[..payload_len],
                opcode,
                &mut Out(scratch),
            );
            // Replies are bounded by what the request allowed (readdir and xattr sizes),
            // which the kernel keeps within the payload buffer; anything larger is
            // refused, not cut.
            match (r, slot.payload.get_mut(..scratch.len())) {
                (Ok(()), Some(body)) => {
                    body.copy_from_slice(scratch);
                    Ok(scratch.len())
                }
                (Ok(()), None) => Err(libc::ERANGE),
                (Err(e), _) => Err(e),
            }
        }
    })
    .unwrap_or(Err(libc::EIO));
    let (error, body) = match result {
        Ok(n) => (0, n),
        Err(e) => (-e, 0),
    };
    let h = &mut slot.header[..];
    h[IN_OUT..IN_OUT + 4].copy_from_slice(&((16 + body) as u32).to_ne_bytes());
    h[IN_OUT + 4..IN_OUT + 8].copy_from_slice(&error.to_ne_bytes());
    h[IN_OUT + 8..IN_OUT + 16].copy_from_slice(&unique.to_ne_bytes());
    h[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(body as u32).to_ne_bytes());
    commit_id
}

/// READ straight into the payload buffer the reply is taken from.
fn read(server: &Server, header: &[u8], payload: &mut [u8]) -> Answer<usize> {
    let op = &header[OP_IN..OP_IN + 128];
    let (fh, offset, size) = (u64_at(op, 0), u64_at(op, 8), u32_at(op, 16));
    server.ops.read(fh, offset, size, &mut Payload(payload))
}

fn answer(
    server: &Server,
    header: &[u8],
    payload: &[u8],
    opcode: u32,
    out: &mut Out,
) -> Answer<()> {
    let ops = &server.ops;
    let ttl = ops.ttl();
    let node = u64_at(header, IN_OUT + 16);
    let ctx = Ctx {
        uid: u32_at(header, IN_OUT + 24),
        gid: u32_at(header, IN_OUT + 28),
    };
    let allowed = match server.access {
        Access::All => true,
        Access::RootAndOwner => ctx.uid == 0 || ctx.uid == server.owner,
        Access::Owner => ctx.uid == server.owner,
    };
    if !allowed && !uid_free(opcode) {
        return Err(libc::EACCES);
    }
    let op = &header[OP_IN..OP_IN + 128];
    let mut names = Names(payload);
    fn name<'a>(names: &mut Names<'a>) -> Answer<&'a OsStr> {
        names.next().ok_or(libc::EINVAL)
    }
    match opcode {
        LOOKUP => out.entry(&ops.lookup(node, name(&mut names)?)?, ttl),
        GETATTR => {
            let fh = (u32_at(op, 0) & FUSE_GETATTR_FH != 0).then(|| u64_at(op, 8));
            attr_out(out, ttl, &ops.getattr(node, fh)?)
        }
        SETATTR => attr_out(out, ttl, &ops.setattr(node, setattr(op))?),
        READLINK => out.0.extend_from_slice(ops.readlink(node)?.as_bytes()),
        SYMLINK => {
            let link = name(&mut names)?;
            let target = name(&mut names)?;
            out.entry(&ops.symlink(ctx, node, link, target)?, ttl)
        }
        MKNOD => {
            let (mode, rdev, umask) = (u32_at(op, 0), u32_at(op, 4), u32_at(op, 8));
            out.entry(
                &ops.mknod(ctx, node, name(&mut names)?, mode, umask, rdev)?,
                ttl,
            )
        }
        MKDIR => {
            let (mode, umask) = (u32_at(op, 0), u32_at(op, 4));
            out.entry(&ops.mkdir(ctx, node, name(&mut names)?, mode, umask)?, ttl)
        }
        UNLINK => ops.unlink(node, name(&mut names)?)?,
        RMDIR => ops.rmdir(node, name(&mut names)?)?,
        RENAME | RENAME2 => {
            let newdir = u64_at(op, 0);
            let flags = if opcode == RENAME2 { u32_at(op, 8) } else { 0 };
            let (old, new) = (name(&mut names)?, name(&mut names)?);
            ops.rename(node, old, newdir, new, flags)?
        }
        LINK => out.entry(&ops.link(u64_at(op, 0), node, name(&mut names)?)?, ttl),
        OPEN => out.open(&ops.open(node, u32_at(op, 0) as i32)?),
        WRITE => {
            let (fh, offset, size) = (u64_at(op, 0), u64_at(op, 8), u32_at(op, 16) as usize);
            let data = payload.get(..size).ok_or(libc::EINVAL)?;
            out.u32(ops.write(fh, offset, data)?);
            out.u32(0);
        }
        STATFS => {
            let s = ops.statfs()?;
            for v in [s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree] {
                out.u64(v);
            }
            for v in [s.f_bsize as u32, s.f_namemax as u32, s.f_frsize as u32, 0] {
                out.u32(v);
            }
            out.0.extend_from_slice(&[0u8; 24]);
        }
        RELEASE => ops.release(u64_at(op, 0))?,
        FSYNC => ops.fsync(u64_at(op, 0), u32_at(op, 8) & FUSE_FSYNC_FDATASYNC != 0)?,
        SETXATTR => {
            // The 8-byte compat `fuse_setxattr_in` (FUSE_SETXATTR_EXT is not asked for).
            let (size, flags) = (u32_at(op, 0) as usize, u32_at(op, 4) as i32);
            let attr = name(&mut names)?;
            let value = names.rest().get(..size).ok_or(libc::EINVAL)?;
            ops.setxattr(node, attr, value, flags)?
        }
        GETXATTR => xattr_out(out, ops.getxattr(node, name(&mut names)?, u32_at(op, 0))?),
        LISTXATTR => xattr_out(out, ops.listxattr(node, u32_at(op, 0))?),
        REMOVEXATTR => ops.removexattr(node, name(&mut names)?)?,
        FLUSH => ops.flush()?,
        OPENDIR => out.open(&ops.opendir()?),
        READDIR | READDIRPLUS => {
            let (offset, size) = (u64_at(op, 8), u32_at(op, 16) as usize);
            let mut dir = Dir {
                out: Out(out.0),
                limit: size.min(MAX_PAYLOAD),
            };
            if opcode == READDIR {
                ops.readdir(node, offset, &mut dir)?
            } else {
                ops.readdirplus(node, offset, &mut dir)?
            }
        }
        RELEASEDIR | DESTROY => {}
        FSYNCDIR => ops.fsyncdir(node, u32_at(op, 8) & FUSE_FSYNC_FDATASYNC != 0)?,
        ACCESS => ops.access(node)?,
        CREATE => {
            let (flags, mode, umask) = (u32_at(op, 0) as i32, u32_at(op, 4), u32_at(op, 8));
            let (entry, opened) = ops.create(ctx, node, name(&mut names)?, mode, umask, flags)?;
            out.entry(&entry, ttl);
            out.open(&opened);
        }
        // As kernel overlayfs answers commands it does not know.
        IOCTL => return Err(libc::ENOTTY),
        FALLOCATE => {
            let (fh, offset, length) = (u64_at(op, 0), u64_at(op, 8), u64_at(op, 16));
            ops.fallocate(fh, offset, length, u32_at(op, 24) as i32)?
        }
        LSEEK => {
            out.u64(ops.lseek(u64_at(op, 0), u64_at(op, 8) as i64, u32_at(op, 16) as i32)? as u64)
        }
        COPY_FILE_RANGE => {
            let (fh_in, off_in) = (u64_at(op, 0), u64_at(op, 8));
            let (fh_out, off_out, len) = (u64_at(op, 24), u64_at(op, 32), u64_at(op, 40));
            let n = ops.copy_file_range(fh_in, off_in, fh_out, off_out, len)?;
            out.u32(n.min(u32::MAX as u64) as u32);
            out.u32(0);
        }
        // Locks (the kernel keeps POSIX locks itself), bmap, poll, tmpfile, statx, and
        // anything newer: not served, as through /dev/fuse.
        _ => return Err(libc::ENOSYS),
    }
    Ok(())
}

fn attr_out(out: &mut Out, ttl: Duration, st: &Stat) {
    out.u64(ttl.as_secs());
    out.u32(ttl.subsec_nanos());
    out.u32(0);
    out.attr(st);
}

fn xattr_out(out: &mut Out, x: Xattr) {
    match x {
        Xattr::Size(n) => {
            out.u32(n);
            out.u32(0);
        }
        Xattr::Data(v) => out.0.extend_from_slice(&v),
    }
}

/// `struct fuse_setattr_in`, as the overlay takes it.
fn setattr(op: &[u8]) -> SetAttr {
    let valid = u32_at(op, 0);
    let has = |bit: u32| valid & bit != 0;
    let time = |now: u32, sec: usize, nsec: usize| {
        if has(now) {
            sys::Timespec {
                tv_sec: 0,
                tv_nsec: sys::UTIME_NOW,
            }
        } else {
            sys::Timespec {
                tv_sec: u64_at(op, sec) as i64,
                tv_nsec: u32_at(op, nsec) as i64,
            }
        }
    };
    SetAttr {
        mode: has(FATTR_MODE).then(|| u32_at(op, 68)),
        uid: has(FATTR_UID).then(|| u32_at(op, 76)),
        gid: has(FATTR_GID).then(|| u32_at(op, 80)),
        size: has(FATTR_SIZE).then(|| u64_at(op, 16)),
        atime: has(FATTR_ATIME).then(|| time(FATTR_ATIME_NOW, 32, 56)),
        mtime: has(FATTR_MTIME).then(|| time(FATTR_MTIME_NOW, 40, 60)),
        fh: has(FATTR_FH).then(|| u64_at(op, 8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        let mut buf = Vec::new();
        Out(&mut buf).dirent(7, 9, 4, OsStr::new("abc"));
        assert_eq!(buf.len(), 32);
        assert_eq!(buf.len(), dirent_size(OsStr::new("abc")));
        assert_eq!(u64_at(&buf, 0), 7);
        assert_eq!(u64_at(&buf, 8), 9);
        assert_eq!(u32_at(&buf, 16), 3);
        assert_eq!(&buf[24..27], b"abc");
        assert_eq!(dirent_size(OsStr::new("12345678")), 32);
        assert_eq!(dirent_size(OsStr::new("123456789")), 40);
    }

    #[test]
    fn entry_and_attr_have_the_kernel_sizes() {
        let mut buf = Vec::new();
        let mut st = sys::zeroed_stat();
        st.st_ino = 42;
        st.st_mode = libc::S_IFREG | 0o644;
        let e = ops::Entry {
            id: 42,
            generation: 3,
            st,
        };
        Out(&mut buf).entry(&e, Duration::from_millis(1500));
        assert_eq!(buf.len(), 128);
        assert_eq!(u64_at(&buf, 0), 42);
        assert_eq!(u64_at(&buf, 16), 1);
        assert_eq!(u32_at(&buf, 32), 500_000_000);
        // attr.mode sits after ino, size, blocks, three times and three nanoseconds.
        assert_eq!(u32_at(&buf, 40 + 60), libc::S_IFREG | 0o644);
    }

    #[test]
    fn setattr_reads_only_the_valid_fields() {
        let mut op = [0u8; 128];
        let valid = FATTR_MODE | FATTR_SIZE | FATTR_MTIME | FATTR_MTIME_NOW;
        op[0..4].copy_from_slice(&valid.to_ne_bytes());
        op[16..24].copy_from_slice(&77u64.to_ne_bytes());
        op[68..72].copy_from_slice(&0o600u32.to_ne_bytes());
        op[76..80].copy_from_slice(&1000u32.to_ne_bytes());
        let a = setattr(&op);
        assert_eq!(a.mode, Some(0o600));
        assert_eq!(a.size, Some(77));
        assert_eq!(a.uid, None);
        assert_eq!(a.atime.map(|t| t.tv_nsec), None);
        assert_eq!(a.mtime.map(|t| t.tv_nsec), Some(sys::UTIME_NOW));
    }

    #[test]
    fn names_split_at_nul() {
        let mut n = Names(b"old\0new\0rest");
        assert_eq!(n.next(), Some(OsStr::new("old")));
        assert_eq!(n.next(), Some(OsStr::new("new")));
        assert_eq!(n.rest(), b"rest");
        assert_eq!(n.next(), None);
    }
}
