//! Open files (the kernel's file.c): opening (copying up what may be written), the handles
//! reads and writes use without the namespace lock, fsync and release.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::handles::OpenFile;
use super::{errno, Loc, Overlay};
use crate::error::Result;
use crate::sys;

impl Overlay {
    /// Opens `id`; anything that may write copies it up first.
    pub fn open(&self, id: u64, flags: i32) -> Result<u64> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
        let _prepared;
        let (loc, seen) = if writes {
            self.upper()?;
            _prepared = self.prepare_copy_up(id);
            let mut tree = self.change_tree();
            self.copy_up(&mut tree, id)?;
            (self.loc(&tree, id)?, self.copyups.load(Ordering::Acquire))
        } else {
            let tree = self.tree.read();
            (self.loc(&tree, id)?, self.copyups.load(Ordering::Acquire))
        };
        let fd = self.open_loc(&loc, flags)?;
        Ok(self.handles.add_file(OpenFile {
            node: id,
            fd: RwLock::new(Arc::new(fd)),
            on_lower: matches!(loc, Loc::Lower(..)),
            seen_copyups: AtomicU64::new(seen),
        }))
    }

    /// A handle for an fd `create` returned.
    pub fn add_open_file(&self, id: u64, fd: OwnedFd) -> u64 {
        self.handles.add_file(OpenFile {
            node: id,
            fd: RwLock::new(Arc::new(fd)),
            on_lower: false,
            seen_copyups: AtomicU64::new(0),
        })
    }

    /// The fd to read through: a handle opened on a lower file moves to the upper copy once
    /// there is one.
    pub fn read_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        let f = self.handles.file(fh).ok_or_else(|| errno(libc::EBADF))?;
        if f.on_lower {
            let now = self.copyups.load(Ordering::Acquire);
            if f.seen_copyups.swap(now, Ordering::AcqRel) != now {
                let tree = self.tree.read();
                if let Ok(loc) = self.loc(&tree, f.node) {
                    if !matches!(loc, Loc::Lower(..)) {
                        if let Ok(fd) = self.open_loc(&loc, libc::O_RDONLY) {
                            *f.fd.write() = Arc::new(fd);
                        }
                    }
                }
            }
        }
        Ok(f.fd())
    }

    /// Whether handle `fh` was opened on a lower layer's file.
    /// Whether a change to node `id` would first copy its data up (a file not yet in the
    /// upper layer), which may take long.
    pub fn would_copy_data_up(&self, id: u64) -> bool {
        let tree = self.tree.read();
        tree.get(id)
            .is_some_and(|n| !n.is_dir() && !n.upper && n.lower_layer.is_some())
    }

    pub fn handle_on_lower(&self, fh: u64) -> bool {
        self.handles.file(fh).map(|f| f.on_lower).unwrap_or(false)
    }

    pub fn file_fd(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        Ok(self
            .handles
            .file(fh)
            .ok_or_else(|| errno(libc::EBADF))?
            .fd())
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        Ok(sys::fsync(self.file_fd(fh)?.as_fd(), datasync)?)
    }
}
