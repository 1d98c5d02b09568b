//! Open files: what a FUSE file handle stands for. Directories have none: the mount
//! declines OPENDIR (see readdir.rs).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;

pub struct OpenFile {
    pub node: u64,
    pub fd: RwLock<Arc<OwnedFd>>,
    /// Opened on a lower layer (read-only): after a copy-up of the node, reads move on to
    /// the upper copy so that they see what writers wrote.
    pub on_lower: bool,
    /// Value of the overlay's copy-up counter when `fd` was opened or last refreshed.
    pub seen_copyups: AtomicU64,
}

impl OpenFile {
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }
}

/// Handle numbers to open files.
pub struct Handles {
    files: DashMap<u64, Arc<OpenFile>>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            files: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }
}

impl Handles {
    pub fn add_file(&self, f: OpenFile) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, Arc::new(f));
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.get(&fh).map(|f| f.clone())
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.remove(&fh).map(|(_, f)| f)
    }

    pub fn open_files(&self) -> usize {
        self.files.len()
    }
}
