//! The io_uring side of FUSE over io_uring: one ring per queue thread, carrying
//! `IORING_OP_URING_CMD` commands to `/dev/fuse` (128-byte SQEs, as the kernel requires).
//!
//! A registered entry is a header buffer and a payload buffer the kernel writes a request
//! into and reads the reply from. It does so only inside this thread's `io_uring_enter`
//! (the ring runs deferred task work), so between calls the buffers are plain memory.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// `FUSE_IO_URING_CMD_REGISTER`: hand an entry's buffers to a queue.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: reply to the entry's request, take the next one.
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Size of `struct fuse_uring_req_header`: in/out header, per-op header, entry in/out.
pub const HEADER_SIZE: usize = 288;

/// The buffers of one ring entry; boxed so their addresses stay put while registered.
pub struct EntryBuffers {
    pub header: Box<[u8; HEADER_SIZE]>,
    pub payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the iovecs' raw pointers point into this entry's own boxed buffers, which move
// with it (boxes keep their addresses), so the entry owns everything it points at and can
// be handed to another thread like any owned data.
unsafe impl Send for EntryBuffers {}

impl EntryBuffers {
    pub fn new(payload_size: usize) -> EntryBuffers {
        let mut header = Box::new([0u8; HEADER_SIZE]);
        let mut payload = vec![0u8; payload_size].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]);
        EntryBuffers {
            header,
            payload,
            iov,
        }
    }
}

/// `struct fuse_uring_cmd_req`: flags, commit id, queue id.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

pub struct CmdRing {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
}

impl CmdRing {
    /// A ring for `depth` outstanding commands, for use by the calling thread only.
    pub fn new(depth: u32) -> io::Result<CmdRing> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Flags pending deferred task work (an arrived request) in the shared ring,
            // so `poll` can see one without a system call.
            .setup_taskrun_flag()
            .build(depth.next_power_of_two())?;
        Ok(CmdRing { ring })
    }

    /// Queues the registration of `entry` with queue `qid`; its completion (tagged `tag`)
    /// carries the entry's first request.
    ///
    /// The buffers must stay alive, and not move, until the ring is dropped.
    pub fn register(
        &mut self,
        dev: BorrowedFd,
        qid: u16,
        entry: &mut EntryBuffers,
        tag: u64,
    ) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), CMD_REGISTER)
            .cmd(cmd_req(0, qid))
            .addr(Some(entry.iov.as_ptr() as u64))
            .build()
            .user_data(tag);
        // The kernel takes the iovec count from the SQE's `len` (two: header and payload),
        // which UringCmd80 has no setter for. `len` is the u32 at byte 24 of the SQE.
        // SAFETY: Entry128 is repr(C): the 64-byte io_uring_sqe followed by 64 command
        // bytes, 128 bytes in all, so it round-trips through a byte array of that size.
        let sqe: squeue::Entry128 = unsafe {
            let mut bytes: [u8; 128] = std::mem::transmute(sqe);
            bytes[24..28].copy_from_slice(&2u32.to_ne_bytes());
            std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes)
        };
        self.push(&sqe)
    }

    /// Queues a read of eventfd `fd`'s counter into `buf`, completing (tagged `tag`) when
    /// something signals it.
    ///
    /// `buf` must stay alive, and not move, until the read completes or the ring is dropped.
    pub fn read_event(&mut self, fd: BorrowedFd, buf: *mut u64, tag: u64) -> io::Result<()> {
        let sqe: squeue::Entry128 = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(tag)
            .into();
        self.push(&sqe)
    }

    /// Queues the reply already written into the entry tagged `tag` and asks for its next
    /// request.
    pub fn commit_and_fetch(
        &mut self,
        dev: BorrowedFd,
        qid: u16,
        commit_id: u64,
        tag: u64,
    ) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), CMD_COMMIT_AND_FETCH)
            .cmd(cmd_req(commit_id, qid))
            .build()
            .user_data(tag);
        self.push(&sqe)
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: the only memory the commands name is an entry's buffers (and iovecs) and
        // an event counter, which the caller keeps alive and in place while the ring exists.
        let pushed = unsafe { self.ring.submission().push(sqe) };
        if pushed.is_err() {
            // Full: hand what is queued to the kernel and try once more.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion; returns the
    /// completions as (tag, result).
    pub fn wait(&mut self, out: &mut Vec<(u64, i32)>) -> io::Result<()> {
        retry_eintr(|| self.ring.submit_and_wait(1))?;
        self.collect(out);
        Ok(())
    }

    /// Submits what is queued, then looks for completions without sleeping, yielding the
    /// CPU between looks, for as long as `keep_polling` says. Returns whether it found any
    /// (into `out`).
    pub fn poll(
        &mut self,
        out: &mut Vec<(u64, i32)>,
        keep_polling: impl Fn() -> bool,
    ) -> io::Result<bool> {
        retry_eintr(|| self.ring.submit())?;
        loop {
            if !self.ring.completion().is_empty() {
                self.collect(out);
                return Ok(true);
            }
            if self.ring.submission().taskrun() {
                // A request is waiting as deferred task work; an enter (which `submit` does
                // when the flag is up) turns it into a completion.
                retry_eintr(|| self.ring.submit())?;
                continue;
            }
            if !keep_polling() {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    fn collect(&mut self, out: &mut Vec<(u64, i32)>) {
        out.clear();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }
}

fn retry_eintr(mut enter: impl FnMut() -> io::Result<usize>) -> io::Result<()> {
    loop {
        match enter() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
