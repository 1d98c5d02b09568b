//! FUSE over io_uring: requests taken from per-CPU rings instead of `/dev/fuse` reads.
//! This file owns the queues and their threads; what an entry holds and how it is answered
//! is `wire`'s and `dispatch`'s.
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
//! [`Dispatch::slow`]) is handed to a helper thread instead, which answers it into the same entry
//! and has the queue thread commit it (`start_helpers`): otherwise every other request made on
//! that CPU would wait behind it.
//!
//! The kernel queues requests per possible CPU and uses the rings only once every queue
//! has an entry registered; until then new requests wait. If a registration fails the
//! kernel turns io_uring off for the connection and requests go through `/dev/fuse`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::fuse::dispatch::Access;
use crate::fuse::dispatch::Dispatch;
use crate::fuse::ops::Ops;
use crate::fuse::wire::MAX_PAYLOAD;
use crate::sys;
use crate::sys::uring::{CmdRing, EntryBuffers};

/// Entries registered per queue: requests the kernel can hand over while one is served.
const DEPTH: usize = 8;

/// Queue threads polling at once. Two keeps a 2-CPU machine busy (the caller's CPU and
/// the other one) during a burst; on larger machines more pollers would burn more CPUs
/// for a scheduler choice they cannot pin down.
const MAX_POLLERS: usize = 2;

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
        dispatch: Dispatch {
            ops,
            access: access_rule,
            owner: sys::process::geteuid(),
        },
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
    dispatch: Dispatch,
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
                    let commit_id = job.server.dispatch.serve(&mut job.slot, &mut scratch);
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
                    let slot = if server.dispatch.slow(&slot.header[..]) {
                        match hand_over(server, slot, tag, answered) {
                            Ok(()) => continue,
                            // No helper: answer it here after all.
                            Err(slot) => slot,
                        }
                    } else {
                        slot
                    };
                    let commit_id = server.dispatch.serve(place.insert(slot), &mut scratch);
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
