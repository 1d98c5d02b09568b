//! Mount options (fuse-overlayfs compatible) turned into a validated [`Config`].
//!
//! Parsing and validation live here so that `main.rs` only hands a `Config` to the library.

use std::path::PathBuf;

/// How deletions are recorded in the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// A character device 0:0 where mknod is permitted, else `.wh.` files.
    Auto,
    /// Always a character device 0:0 (fails where mknod is not permitted).
    CharDev,
    /// Always an OCI/AUFS `.wh.NAME` file.
    File,
}

/// One contiguous id range of a `uidmapping=`/`gidmapping=` option: ids
/// `from..from+len` inside the mount correspond to `to..to+len` on the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub from: u32,
    pub to: u32,
    pub len: u32,
}

/// Everything the daemon needs to mount, already checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lower layers, top-most first (as written in `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// Writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem, for atomic copy-up.
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// Stay in the foreground instead of returning once the mount is ready.
    pub foreground: bool,
    /// `-d`: debug logging (implies foreground, as in fuse-overlayfs).
    pub debug: bool,
    /// `redirect_dir=on|off`: allow renaming directories that exist in a lower layer.
    pub redirect_dir: bool,
    pub whiteout: WhiteoutMode,
    /// `volatile` or `fsync=0`: skip fsync on copy-up and ignore fsync requests.
    pub volatile: bool,
    /// Read-only: no upperdir, or `ro` given.
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    /// Generic mount flags passed to the kernel as they are (nodev, nosuid, noexec, noatime, ...).
    pub kernel_flags: Vec<String>,
    pub uid_mapping: Vec<IdRange>,
    pub gid_mapping: Vec<IdRange>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    /// Seconds the kernel may cache entries and attributes.
    pub timeout: f64,
    /// Worker threads serving FUSE requests.
    pub threads: usize,
}

impl Config {
    /// A config with defaults for everything but the layers and mount point.
    pub fn new(lowers: Vec<PathBuf>, mountpoint: PathBuf) -> Config {
        Config {
            lowers,
            upper: None,
            work: None,
            mountpoint,
            foreground: false,
            debug: false,
            redirect_dir: true,
            whiteout: WhiteoutMode::Auto,
            volatile: false,
            read_only: true,
            allow_other: false,
            allow_root: false,
            default_permissions: true,
            kernel_flags: Vec::new(),
            uid_mapping: Vec::new(),
            gid_mapping: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            timeout: 1.0,
            threads: 2,
        }
    }
}
