//! FUSE passthrough: reads and writes of an open file go straight from the kernel to the
//! layer's file, without a round trip through the daemon.
//!
//! The kernel allows one backing file per inode at a time, shared by every open of it,
//! and refuses any open of such an inode that is not passthrough too. A lower file must
//! never be a backing file: a writer coming after its copy-up would need the upper copy
//! as a second backing file, or would write into the lower layer. So only files already
//! in the upper layer pass through; an inode first opened on a lower layer keeps cached
//! I/O through the daemon until its last handle closes. A node's mode is fixed by its
//! first open and held while any handle is open. Without the privilege to register
//! backing files the whole feature turns itself off on the first refusal.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::sys;

/// A registered backing file, unregistered when the last handle using it closes.
struct BackingId {
    id: u32,
    dev: Arc<OwnedFd>,
}

impl Drop for BackingId {
    fn drop(&mut self) {
        if let Err(e) = sys::backing_close(self.dev.as_fd(), self.id) {
            log::debug!("closing backing id {}: {e}", self.id);
        }
    }
}

enum Io {
    Backing {
        id: BackingId,
        /// (st_dev, st_ino) of the file behind it.
        file: (u64, u64),
    },
    Cached,
}

struct NodeIo {
    io: Io,
    users: usize,
}

/// What an open should reply.
pub enum Mode {
    /// The backing id to name in the reply.
    Passthrough(u32),
    /// The inode passes through to another file (cannot happen while inode numbers of
    /// open files are never reused): go through the daemon, uncached.
    DirectIo,
    /// Passthrough is off: ordinary cached I/O through the daemon.
    Cached,
}

pub struct Passthrough {
    enabled: AtomicBool,
    nodes: Mutex<HashMap<u64, NodeIo>>,
    /// Open handles passing through, and their node.
    handles: Mutex<HashMap<u64, u64>>,
}

impl Passthrough {
    pub fn new() -> Passthrough {
        Passthrough {
            enabled: AtomicBool::new(false),
            nodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        }
    }

    /// Called from `init` once the kernel has agreed to passthrough.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Decides how handle `fh` of `node`, open on `fd`, is served. `on_lower`: the fd is
    /// a lower layer's file. Backing files are registered on the session device `dev`.
    pub fn open(
        &self,
        node: u64,
        fh: u64,
        fd: BorrowedFd,
        on_lower: bool,
        dev: &Arc<OwnedFd>,
    ) -> Mode {
        if !self.enabled() {
            return Mode::Cached;
        }
        let Ok(st) = sys::fstat(fd) else {
            return Mode::Cached;
        };
        let file = (st.st_dev, st.st_ino);
        let mut nodes = self.nodes.lock();
        let mode = match nodes.get_mut(&node) {
            Some(n) => {
                n.users += 1;
                match &n.io {
                    Io::Backing { id, file: f } if *f == file => Mode::Passthrough(id.id),
                    Io::Backing { .. } => Mode::DirectIo,
                    Io::Cached => Mode::Cached,
                }
            }
            None => {
                let io = if on_lower {
                    Io::Cached
                } else {
                    match sys::backing_open(dev.as_fd(), fd.as_fd()) {
                        Ok(id) => Io::Backing {
                            id: BackingId {
                                id,
                                dev: dev.clone(),
                            },
                            file,
                        },
                        Err(e) => {
                            // EPERM without CAP_SYS_ADMIN, EINVAL when the layer is itself
                            // stacked too deep: both hold for every file, so stop trying.
                            log::debug!(
                                "passthrough unavailable ({e}); I/O goes through the daemon"
                            );
                            self.enabled.store(false, Ordering::Release);
                            return Mode::Cached;
                        }
                    }
                };
                let mode = match &io {
                    Io::Backing { id, .. } => Mode::Passthrough(id.id),
                    Io::Cached => Mode::Cached,
                };
                nodes.insert(node, NodeIo { io, users: 1 });
                mode
            }
        };
        self.handles.lock().insert(fh, node);
        mode
    }

    /// Handle `fh` closed; the last passthrough handle of a node frees its backing id.
    pub fn release(&self, fh: u64) {
        let Some(node) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut nodes = self.nodes.lock();
        if let Some(b) = nodes.get_mut(&node) {
            b.users -= 1;
            if b.users == 0 {
                nodes.remove(&node);
            }
        }
    }
}

impl Default for Passthrough {
    fn default() -> Self {
        Passthrough::new()
    }
}
