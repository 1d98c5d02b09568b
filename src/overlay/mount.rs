//! Mount set-up (the kernel's super.c): opening the layers, probing how whiteouts and
//! overlay xattrs can be written on the upper filesystem, and statfs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::RwLock;

use super::handles::Handles;
use super::nodes::{Node, Tree, ROOT};
use super::readahead::ReadAhead;
use super::readdir::Listings;
use super::Overlay;
use crate::config::{Config, WhiteoutMode};
use crate::error::{Error, Result};
use crate::layers::layer::Layer;
use crate::layers::stack::Stack;
use crate::layers::whiteout::{self, Encoding, XattrNs};
use crate::layers::workdir::WorkDir;
use crate::sys;

impl Overlay {
    pub fn new(config: &Config) -> Result<Overlay> {
        let lowers = config
            .lowers
            .iter()
            .map(|p| Layer::open_immutable(p).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        if lowers.is_empty() {
            return Err(Error::usage(
                "no lowerdir given: pass -o lowerdir=DIR[:DIR...]",
            ));
        }
        let mut upper = config.upper.as_deref().map(Layer::open).transpose()?;
        let write_override = match config.xattr_permissions {
            1 => Some(whiteout::OVERRIDE_STAT_XATTRS[0]),
            2 => Some(whiteout::OVERRIDE_STAT_XATTRS[2]),
            _ => None,
        };
        if let (Some(u), Some(attr)) = (upper.as_mut(), write_override) {
            mark_override_layer(u, attr)?;
        }
        let work_layer = config.work.as_deref().map(Layer::open).transpose()?;
        let read_only = config.read_only || upper.is_none();
        let work = match (&upper, &work_layer) {
            (Some(_), Some(w)) => Some(WorkDir::open(w.root(), !config.volatile)?),
            (Some(_), None) => {
                return Err(Error::usage(
                    "upperdir needs a workdir: add -o workdir=DIR on the upper's filesystem",
                ))
            }
            _ => None,
        };
        let (whiteout, xattr_ns) = match &work {
            Some(w) => (probe_whiteout(w, config.whiteout)?, probe_xattr_ns(w)),
            None => (Encoding::File, XattrNs::User),
        };
        log::debug!("whiteouts as {whiteout:?}, overlay xattrs in {xattr_ns:?}");
        let shared_dev = shared_dev(upper.iter().chain(lowers.iter().map(|l| &**l)))?;
        let readahead = ReadAhead::start(if config.readahead {
            lowers.clone()
        } else {
            Vec::new()
        });
        let stack = Stack {
            upper,
            work: work_layer,
            lowers,
            xattr_ns,
            whiteout,
            shared_dev,
            refused: Default::default(),
        };
        let any_override = stack.upper.iter().any(|u| u.stat_override.is_some())
            || stack.lowers.iter().any(|l| l.stat_override.is_some());
        let mut root = Node::new(libc::S_IFDIR, ROOT);
        root.upper = stack.upper.is_some();
        root.lower_dirs = stack.root_lowers().into_boxed_slice();
        Ok(Overlay {
            stack,
            work,
            tree: RwLock::new(Tree::new(root)),
            handles: Handles::default(),
            listings: Listings::default(),
            readahead,
            copyups: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            prepared: parking_lot::Mutex::new(HashMap::new()),
            nodes_peak: std::sync::atomic::AtomicUsize::new(0),
            redirect_dir: config.redirect_dir,
            read_only,
            volatile: config.volatile,
            own_ids: (sys::process::geteuid(), sys::process::getegid()),
            any_override,
            write_override: write_override.filter(|_| !read_only),
        })
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        let layer = self.stack.upper.as_ref().unwrap_or(&self.stack.lowers[0]);
        let mut st = sys::fstatvfs(layer.root())?;
        if self.stack.whiteout == Encoding::File {
            // A name must leave room for the `.wh.` prefix of its whiteout.
            st.f_namemax = st
                .f_namemax
                .min(libc::NAME_MAX as u64 - whiteout::WHITEOUT_PREFIX.len() as u64);
        }
        Ok(st)
    }
}

/// The device all `layers` are on, if they share one.
pub(super) fn shared_dev<'a>(layers: impl Iterator<Item = &'a Layer>) -> Result<Option<u64>> {
    let mut dev = None;
    for layer in layers {
        let d = sys::fstat(layer.root())?.st_dev;
        match dev {
            None => dev = Some(d),
            Some(first) if first != d => return Ok(None),
            Some(_) => {}
        }
    }
    Ok(dev)
}

/// Chooses how deletions are written: a char device 0:0 where mknod works, else `.wh.` files.
pub(super) fn probe_whiteout(work: &WorkDir, mode: WhiteoutMode) -> Result<Encoding> {
    let tmp = work.temp_name();
    let mknod_ok = match whiteout::make_whiteout(work.temp(), &tmp, Encoding::CharDev) {
        Ok(()) => {
            let _ = sys::unlinkat(work.temp(), &tmp, false);
            true
        }
        Err(e) => {
            log::debug!("mknod of a whiteout refused ({e}): using .wh. files");
            false
        }
    };
    match mode {
        WhiteoutMode::File => Ok(Encoding::File),
        WhiteoutMode::Auto if mknod_ok => Ok(Encoding::CharDev),
        WhiteoutMode::Auto => Ok(Encoding::File),
        WhiteoutMode::CharDev if mknod_ok => Ok(Encoding::CharDev),
        WhiteoutMode::CharDev => Err(Error::usage("whiteout=chardev: mknod of a 0:0 device is not permitted here; use whiteout=auto or whiteout=file")),
    }
}

/// trusted.* where the daemon may write it (real root), else user.*.
pub(super) fn probe_xattr_ns(work: &WorkDir) -> XattrNs {
    let tmp = work.temp_name();
    let ok = sys::mkdirat(work.temp(), &tmp, 0o700).is_ok()
        && sys::setxattr(
            work.temp(),
            &tmp,
            OsStr::new("trusted.overlay.layerfs-probe"),
            b"y",
            0,
        )
        .is_ok();
    let _ = sys::unlinkat(work.temp(), &tmp, true);
    if ok {
        XattrNs::Trusted
    } else {
        XattrNs::User
    }
}

/// Makes the upper layer keep owners and modes in `attr` (`xattr_permissions=`): its root
/// gets the xattr, with its own owner and mode, if it has none yet, as fuse-overlayfs does,
/// so any later mount of the layer (by either program) detects the mode from the root.
pub(super) fn mark_override_layer(upper: &mut Layer, attr: &'static str) -> Result<()> {
    let dot = OsStr::new(".");
    if sys::getxattr(upper.root(), dot, OsStr::new(attr)).is_err() {
        let st = sys::fstat(upper.root())?;
        let value = whiteout::OverrideStat::format(st.st_uid, st.st_gid, st.st_mode);
        sys::setxattr(upper.root(), dot, OsStr::new(attr), value.as_bytes(), 0)
            .map_err(|e| Error::from(e).context(format!("{attr} on {}", upper.path.display())))?;
    }
    upper.stat_override = Some(attr);
    Ok(())
}
