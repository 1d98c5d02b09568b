//! Mount options (fuse-overlayfs compatible) turned into a validated [`Config`].
//!
//! Parsing lives here and checking against the system in `validate`, so that `main.rs`
//! only hands a `Config` to the library.
//! The command line is `layerfs [-f] [-d] [-o OPTIONS]... MOUNTPOINT`; every problem is
//! reported as one line that names the option and says how to fix it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

mod validate;

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

/// One contiguous id range of a `uidmapping=`/`gidmapping=` option, with fuse-overlayfs's
/// meaning: ids `from..from+len` on the layers are shown as `to..to+len` through the mount.
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
    /// `io_uring=on|off`: take requests over FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
    /// `io_uring_poll=MICROSECONDS`: how long a queue thread looks for the next request
    /// without sleeping after any queue took one (0: never).
    pub io_uring_poll: Duration,
    /// `readahead=on|off`: read lower subdirectories ahead of a walk that reads the disk.
    pub readahead: bool,
    /// `xattr_permissions=0|1|2` (fuse-overlayfs's): keep owners and modes written through
    /// the mount in `security.fuseoverlayfs.override_stat` (1) or
    /// `user.fuseoverlayfs.override_stat` (2) instead of the files' own; 0: no.
    pub xattr_permissions: u8,
    /// Source shown in /proc/self/mountinfo (`fsname=`); "layerfs" unless given.
    pub fsname: String,
}

/// How long the kernel may cache entries and attributes by default. Lower layers are
/// immutable while mounted and the upper one changes only through the mount, which tells
/// the kernel of every change it makes, so there is nothing to expire.
pub const DEFAULT_TIMEOUT: f64 = 86400.0;

/// Long enough to cover a caller's turnaround between two requests in a loop (a few
/// microseconds) and most requests that take the daemon a while (a directory's first
/// listing); short enough that a quiet mount costs nothing. Measured: an lstat loop took
/// 14-17 us per entry at 100, 16-27 us at 50.
pub const DEFAULT_IO_URING_POLL: Duration = Duration::from_micros(100);

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
            timeout: DEFAULT_TIMEOUT,
            threads: 2,
            io_uring: true,
            io_uring_poll: DEFAULT_IO_URING_POLL,
            readahead: true,
            xattr_permissions: 0,
            fsname: "layerfs".to_string(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Mount(Box<Config>),
    Help,
    Version,
}

pub const USAGE: &str = "\
usage: layerfs [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=UPPER,workdir=WORK][,OPTIONS] MOUNTPOINT

Merges read-only lower directories (top-most first) with one writable upper directory
at MOUNTPOINT. Without upperdir the mount is read-only. Several -o are merged; a colon
inside a path is written \\: and a comma \\,.

flags:
    -f               stay in the foreground
    -d               debug logging (implies -f); RUST_LOG overrides the level
    -s               serve requests on a single thread
    -o OPTIONS       comma-separated mount options (below)
    -h, --help       print this help
    -V, --version    print the version

layer options:
    lowerdir=DIRS        read-only layers separated by ':', top-most first
    upperdir=DIR         writable layer
    workdir=DIR          scratch directory on the same filesystem as upperdir
    redirect_dir=on|follow|off  allow renaming directories that come from a lower layer
                         (on); redirects in the layers are followed in every mode
    whiteout=auto|chardev|file  how deletions are recorded (auto)
    volatile, fsync=0|1  skip fsync on copy-up and ignore fsync requests
    uidmapping=FROM:TO:LEN[:FROM:TO:LEN...], gidmapping=...
                         on-disk ids FROM.. shown as TO.. (as fuse-overlayfs)
    squash_to_root, squash_to_uid=UID, squash_to_gid=GID
    xattr_permissions=0|1|2  keep owners/modes in security.fuseoverlayfs.override_stat
                         (1) or user.fuseoverlayfs.override_stat (2), as fuse-overlayfs

FUSE and kernel options:
    allow_other, allow_root, default_permissions, ro, rw, dev, nodev, suid, nosuid,
    exec, noexec, atime, noatime, sync, async, dirsync, fsname=NAME,
    timeout=SECONDS (entry and attribute cache, default 86400), threads=N (default 2)
    io_uring=on|off (FUSE over io_uring when the kernel offers it: fuse module
    parameter enable_uring=Y; default on)
    io_uring_poll=MICROSECONDS (queue threads look for the next request without
    sleeping this long after the last one, 0 to never; default 100)
    readahead=on|off (when listing a directory reads the disk, read its lower
    subdirectories in the background; default on)

Options of fuse-overlayfs that do not apply (noacl, fast_ino=, static_nlink, plugins=,
index=, metacopy=, xino=, userxattr, context=, ...) are accepted and ignored. Running as root turns on allow_other, suid and default_permissions.
";

/// Parses the arguments after the program name and validates the result against the
/// file system (layers exist, mount point usable).
pub fn parse_args<I, S>(args: I) -> Result<Invocation>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match parse_args_unchecked(args, crate::sys::process::geteuid() == 0)? {
        Invocation::Mount(mut config) => {
            config.validate()?;
            Ok(Invocation::Mount(config))
        }
        other => Ok(other),
    }
}

/// Parses the arguments without looking at the file system. `as_root` turns on the
/// defaults fuse-overlayfs uses when run by root.
pub fn parse_args_unchecked<I, S>(args: I, as_root: bool) -> Result<Invocation>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut parser = OptionParser::default();
    let mut mountpoint: Option<PathBuf> = None;
    let mut only_positional = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.as_ref();
        let bytes = arg.as_bytes();
        if only_positional || !bytes.starts_with(b"-") || bytes == b"-" {
            if let Some(first) = &mountpoint {
                return Err(Error::usage(format!(
                    "unexpected argument `{}` after mount point `{}`; give exactly one MOUNTPOINT",
                    arg.to_string_lossy(),
                    first.display()
                )));
            }
            mountpoint = Some(PathBuf::from(arg));
            continue;
        }
        match bytes {
            b"--" => only_positional = true,
            b"-h" | b"--help" => return Ok(Invocation::Help),
            b"-V" | b"--version" => return Ok(Invocation::Version),
            b"-f" => parser.config.foreground = true,
            b"-d" | b"--debug" => parser.config.debug = true,
            b"-s" => parser.config.threads = 1,
            b"-o" => match args.next() {
                Some(opts) => parser.parse(opts.as_ref().as_bytes())?,
                None => {
                    return Err(Error::usage(
                        "-o needs a value; write -o lowerdir=DIR,... before the mount point",
                    ))
                }
            },
            _ if bytes.starts_with(b"-o") => parser.parse(&bytes[2..])?,
            _ => {
                return Err(Error::usage(format!(
                    "unknown flag `{}`; see layerfs --help",
                    arg.to_string_lossy()
                )))
            }
        }
    }
    let Some(mountpoint) = mountpoint else {
        return Err(Error::usage(
            "missing MOUNTPOINT; usage is layerfs [-f] [-d] -o lowerdir=DIRS[,upperdir=DIR,workdir=DIR] MOUNTPOINT",
        ));
    };
    Ok(Invocation::Mount(Box::new(
        parser.finish(mountpoint, as_root)?,
    )))
}

impl Config {
    /// Builds and validates a config from one `-o` style option string, as a program that
    /// mounts without going through the command line would.
    pub fn from_options(options: &str, mountpoint: impl Into<PathBuf>) -> Result<Config> {
        let mut parser = OptionParser::default();
        parser.parse(options.as_bytes())?;
        let as_root = crate::sys::process::geteuid() == 0;
        let mut config = parser.finish(mountpoint.into(), as_root)?;
        config.validate()?;
        Ok(config)
    }
}

/// Accumulates `-o` options straight into a [`Config`] that starts from its defaults;
/// later options override earlier ones, as with mount(8).
struct OptionParser {
    config: Config,
    ro: bool,
    kernel_flags: Vec<&'static str>,
}

impl Default for OptionParser {
    fn default() -> OptionParser {
        OptionParser {
            config: Config::new(Vec::new(), PathBuf::new()),
            ro: false,
            kernel_flags: Vec::new(),
        }
    }
}

/// What an option does with what it is given: a flag alone (`ro`), or a `KEY=VALUE`
/// whose value is parsed (the key comes along for the error message).
enum Takes {
    Nothing(fn(&mut OptionParser)),
    Value(fn(&mut OptionParser, &str, &[u8]) -> Result<()>),
}

/// One `-o` option the daemon acts on. `listed`: named in `USAGE` (a test checks), and
/// told "needs a value" / "takes no value" when given in the wrong form; an unlisted one
/// (a libfuse alias) is then just unknown.
struct Opt {
    name: &'static str,
    listed: bool,
    takes: Takes,
}

const fn flag(name: &'static str, set: fn(&mut OptionParser)) -> Opt {
    Opt {
        name,
        listed: true,
        takes: Takes::Nothing(set),
    }
}

const fn value(name: &'static str, set: fn(&mut OptionParser, &str, &[u8]) -> Result<()>) -> Opt {
    Opt {
        name,
        listed: true,
        takes: Takes::Value(set),
    }
}

/// Every option the daemon acts on, declared once: parsing and both wrong-form errors come
/// from here, the defaults from [`Config::new`]. Kernel flags and ignored options are the
/// tables below.
const OPTIONS: &[Opt] = &[
    flag("ro", |p| p.ro = true),
    flag("rw", |p| p.ro = false),
    flag("debug", |p| p.config.debug = true),
    flag("volatile", |p| p.config.volatile = true),
    flag("allow_other", |p| p.config.allow_other = true),
    flag("allow_root", |p| p.config.allow_root = true),
    // The kernel always checks permissions on a layerfs mount: the daemon acts with its
    // own credentials on the layers, so it must not be the one deciding access.
    flag("default_permissions", |_| {}),
    flag("squash_to_root", |p| p.config.squash_to_root = true),
    value("lowerdir", |p, _, v| {
        p.config.lowers = parse_lowerdir(v)?;
        Ok(())
    }),
    value("upperdir", |p, k, v| {
        p.config.upper = Some(parse_dir(k, v)?);
        Ok(())
    }),
    value("workdir", |p, k, v| {
        p.config.work = Some(parse_dir(k, v)?);
        Ok(())
    }),
    value("redirect_dir", |p, k, v| {
        p.config.redirect_dir = match text(k, v)? {
            "on" => true,
            // follow/nofollow never create redirects, so renames of lower directories
            // fail with EXDEV, as with off.
            "off" | "follow" | "nofollow" => false,
            v => return Err(bad_value(k, v, "on, follow, nofollow or off")),
        };
        Ok(())
    }),
    value("whiteout", |p, k, v| {
        p.config.whiteout = match text(k, v)? {
            "auto" => WhiteoutMode::Auto,
            "chardev" => WhiteoutMode::CharDev,
            "file" => WhiteoutMode::File,
            v => return Err(bad_value(k, v, "auto, chardev or file")),
        };
        Ok(())
    }),
    value("fsync", |p, k, v| {
        p.config.volatile = match text(k, v)? {
            "0" => true,
            "1" => false,
            v => return Err(bad_value(k, v, "0 or 1")),
        };
        Ok(())
    }),
    value("timeout", |p, k, v| {
        let ok = |t: &f64| t.is_finite() && *t >= 0.0;
        p.config.timeout = number(k, v, ok, "a number of seconds such as 1 or 0.5")?;
        Ok(())
    }),
    value("threads", set_threads),
    Opt {
        name: "max_threads",
        listed: false,
        takes: Takes::Value(set_threads),
    },
    value("io_uring", |p, k, v| {
        p.config.io_uring = on_off(k, v)?;
        Ok(())
    }),
    value("io_uring_poll", |p, k, v| {
        let us = number(k, v, |us| *us <= 10_000, "microseconds from 0 to 10000")?;
        p.config.io_uring_poll = Duration::from_micros(us);
        Ok(())
    }),
    value("readahead", |p, k, v| {
        p.config.readahead = on_off(k, v)?;
        Ok(())
    }),
    value("xattr_permissions", |p, k, v| {
        let expected = "0, 1 (security.*) or 2 (user.*)";
        p.config.xattr_permissions = number(k, v, |n| *n <= 2, expected)?;
        Ok(())
    }),
    value("uidmapping", |p, k, v| {
        p.config.uid_mapping = parse_mapping(k, v)?;
        Ok(())
    }),
    value("gidmapping", |p, k, v| {
        p.config.gid_mapping = parse_mapping(k, v)?;
        Ok(())
    }),
    value("squash_to_uid", |p, k, v| {
        p.config.squash_to_uid = Some(parse_id(k, v)?);
        Ok(())
    }),
    value("squash_to_gid", |p, k, v| {
        p.config.squash_to_gid = Some(parse_id(k, v)?);
        Ok(())
    }),
    value("fsname", |p, k, v| {
        let v = text(k, v)?;
        if v.is_empty() || v.contains(',') {
            return Err(bad_value(k, v, "a name without commas"));
        }
        p.config.fsname = v.to_string();
        Ok(())
    }),
];

fn set_threads(p: &mut OptionParser, k: &str, v: &[u8]) -> Result<()> {
    let ok = |n: &usize| (1..=1024).contains(n);
    p.config.threads = number(k, v, ok, "a whole number from 1 to 1024")?;
    Ok(())
}

/// A numeric option's value, refused (naming `expected`) unless it parses and is `ok`.
fn number<T: std::str::FromStr>(
    key: &str,
    value: &[u8],
    ok: impl Fn(&T) -> bool,
    expected: &str,
) -> Result<T> {
    let v = text(key, value)?;
    match v.parse::<T>() {
        Ok(n) if ok(&n) => Ok(n),
        _ => Err(bad_value(key, v, expected)),
    }
}

fn declared(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.name == key)
}

/// Kernel mount flags the daemon passes on, each with the flag it cancels.
const KERNEL_FLAGS: &[(&str, &str)] = &[
    ("dev", "nodev"),
    ("nodev", "dev"),
    ("suid", "nosuid"),
    ("nosuid", "suid"),
    ("exec", "noexec"),
    ("noexec", "exec"),
    ("atime", "noatime"),
    ("noatime", "atime"),
    ("sync", "async"),
    ("async", "sync"),
    ("dirsync", ""),
];

/// Options that only make sense for other file systems, for mount(8) itself, or for
/// features of fuse-overlayfs that layerfs does not need; podman may pass any of them.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "user",
    "nouser",
    "users",
    "_netdev",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
    "silent",
    "loud",
    "acl",
    "noacl",
    "userxattr",
    "static_nlink",
    "clone_fd",
    "auto_unmount",
    "kernel_cache",
    "auto_cache",
    "noauto_cache",
    "hard_remove",
    "use_ino",
    "readdir_ino",
    "direct_io",
    "writeback_cache",
    "no_writeback_cache",
];

/// `KEY=` options accepted and ignored, for the same reasons as [`IGNORED`].
const IGNORED_KEYS: &[&str] = &[
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "fast_ino",
    "plugins",
    "index",
    "metacopy",
    "xino",
    "nfs_export",
    "uuid",
    "max_idle_threads",
    "subtype",
    "max_read",
    "max_write",
    "max_readahead",
    "entry_timeout",
    "attr_timeout",
    "negative_timeout",
    // fuse-overlayfs 1.10's remaining KEY= options: its thread pool switch, FUSE
    // writeback caching and turning xattrs off (README, fuse-overlayfs compatibility).
    "threaded",
    "writeback",
    "noxattrs",
];

impl OptionParser {
    fn parse(&mut self, options: &[u8]) -> Result<()> {
        for option in split_unescaped(options, b',', true) {
            // A trailing comma (`...,workdir=W,`) leaves an empty option; podman passes one.
            if option.is_empty() {
                continue;
            }
            self.parse_one(option)?;
        }
        Ok(())
    }

    fn parse_one(&mut self, option: &[u8]) -> Result<()> {
        let (key, value) = match option.iter().position(|&b| b == b'=') {
            Some(i) => (&option[..i], Some(&option[i + 1..])),
            None => (option, None),
        };
        let key = std::str::from_utf8(key).map_err(|_| {
            Error::usage(format!(
                "unknown option `{}`; see layerfs --help",
                String::from_utf8_lossy(key)
            ))
        })?;
        let Some(value) = value else {
            return self.parse_flag(key);
        };
        if x_option(key) || IGNORED_KEYS.contains(&key) {
            log::debug!("ignoring option {key}");
            return Ok(());
        }
        match declared(key) {
            Some(Opt {
                takes: Takes::Value(set),
                ..
            }) => set(self, key, value),
            Some(Opt { listed: true, .. }) => Err(Error::usage(format!(
                "option {key} takes no value; write {key} alone"
            ))),
            _ => Err(unknown(key)),
        }
    }

    fn parse_flag(&mut self, key: &str) -> Result<()> {
        match declared(key) {
            Some(Opt {
                takes: Takes::Nothing(set),
                ..
            }) => set(self),
            Some(Opt { listed: true, .. }) => {
                return Err(Error::usage(format!(
                    "option {key} needs a value; write {key}=VALUE"
                )))
            }
            _ => {
                if let Some(&(flag, opposite)) = KERNEL_FLAGS.iter().find(|(f, _)| *f == key) {
                    self.kernel_flags.retain(|f| *f != flag && *f != opposite);
                    self.kernel_flags.push(flag);
                } else if IGNORED.contains(&key) || x_option(key) {
                    log::debug!("ignoring option {key}");
                } else {
                    return Err(unknown(key));
                }
            }
        }
        Ok(())
    }

    /// What only the whole set of options decides: the kernel flags fuse-overlayfs
    /// defaults to, read-only without an upper layer, root's defaults.
    fn finish(mut self, mountpoint: PathBuf, as_root: bool) -> Result<Config> {
        let mut config = self.config;
        config.mountpoint = mountpoint;
        // fuse-overlayfs mounts with noatime always, and as root with allow_other and suid
        // so that a container's setuid programs work; explicit options win.
        let has = |flags: &[&str], f: &str| flags.contains(&f);
        if !has(&self.kernel_flags, "atime") && !has(&self.kernel_flags, "noatime") {
            self.kernel_flags.push("noatime");
        }
        if as_root && !has(&self.kernel_flags, "suid") && !has(&self.kernel_flags, "nosuid") {
            self.kernel_flags.push("suid");
        }
        config.read_only = self.ro || config.upper.is_none();
        config.foreground = config.foreground || config.debug;
        config.allow_other = config.allow_other || as_root;
        // allow_other already admits root; keeping both would only confuse the ACL.
        config.allow_root = config.allow_root && !config.allow_other;
        config.default_permissions = true;
        config.kernel_flags = self.kernel_flags.iter().map(|f| f.to_string()).collect();
        Ok(config)
    }
}

fn x_option(key: &str) -> bool {
    key.starts_with("x-")
}

fn unknown(key: &str) -> Error {
    Error::usage(format!(
        "unknown option `{key}`; see layerfs --help for the supported options"
    ))
}

/// An `on|off` option's value.
fn on_off(key: &str, value: &[u8]) -> Result<bool> {
    match text(key, value)? {
        "on" => Ok(true),
        "off" => Ok(false),
        v => Err(bad_value(key, v, "on or off")),
    }
}

fn bad_value(key: &str, value: &str, expected: &str) -> Error {
    Error::usage(format!(
        "invalid value `{value}` for option {key}; expected {expected}"
    ))
}

fn text<'a>(key: &str, value: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(value)
        .map_err(|_| bad_value(key, &String::from_utf8_lossy(value), "plain text"))
}

fn parse_id(key: &str, value: &[u8]) -> Result<u32> {
    let v = text(key, value)?;
    v.parse::<u32>()
        .map_err(|_| bad_value(key, v, "a numeric id such as 0 or 1000"))
}

/// `FROM:TO:LEN[:FROM:TO:LEN...]`, as fuse-overlayfs writes id mappings.
fn parse_mapping(key: &str, value: &[u8]) -> Result<Vec<IdRange>> {
    let v = text(key, value)?;
    let expected = "groups of three numbers FROM:TO:LEN joined by colons";
    // Empty fields are skipped, as fuse-overlayfs's strtok does: containers-storage writes
    // each triple as `:FROM:TO:LEN`, so podman passes `uidmapping=:0:1:1000`.
    let numbers = v
        .split(':')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse::<u32>())
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| bad_value(key, v, expected))?;
    if numbers.is_empty() || numbers.len() % 3 != 0 {
        return Err(bad_value(key, v, expected));
    }
    let mut ranges = Vec::new();
    for triple in numbers.chunks_exact(3) {
        let (from, to, len) = (triple[0], triple[1], triple[2]);
        let fits = |start: u32| u64::from(start) + u64::from(len) <= 1 << 32;
        if len == 0 || !fits(from) || !fits(to) {
            return Err(bad_value(
                key,
                v,
                "ranges of length at least 1 that end below 2^32",
            ));
        }
        ranges.push(IdRange { from, to, len });
    }
    Ok(ranges)
}

fn parse_dir(key: &str, value: &[u8]) -> Result<PathBuf> {
    let path = unescape(value);
    if path.is_empty() {
        return Err(Error::usage(format!(
            "option {key} is empty; write {key}=DIR"
        )));
    }
    Ok(PathBuf::from(OsString::from_vec(path)))
}

/// Most lower layers one mount takes.
pub const MAX_LOWERS: usize = u16::MAX as usize - 1;

fn parse_lowerdir(value: &[u8]) -> Result<Vec<PathBuf>> {
    let mut lowers = Vec::new();
    for entry in split_unescaped(value, b':', false) {
        if entry.is_empty() {
            return Err(Error::usage(
                "lowerdir has an empty entry; separate layers with single colons and write a colon inside a path as \\:",
            ));
        }
        lowers.push(PathBuf::from(OsString::from_vec(unescape(entry))));
    }
    if lowers.is_empty() {
        return Err(Error::usage("option lowerdir is empty; write lowerdir=DIR"));
    }
    // Inode numbers carry the layer in 16 bits (slot 0 is the upper layer).
    if lowers.len() > MAX_LOWERS {
        return Err(Error::usage(format!(
            "lowerdir has {} layers, more than the {MAX_LOWERS} a mount can stack; squash some layers first",
            lowers.len()
        )));
    }
    Ok(lowers)
}

/// Splits at `sep` unless it is escaped by a backslash or, with `quotes`, inside double
/// quotes (SELinux labels such as `context="...:c1,c2"` contain commas). Escapes are kept
/// for the next level to remove.
fn split_unescaped(s: &[u8], sep: u8, quotes: bool) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < s.len() {
        match s[i] {
            b'\\' => i += 1,
            b'"' if quotes => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

/// Removes backslash escapes: `\X` stands for `X`.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            out.push(*bytes.next().unwrap_or(&b'\\'));
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::validate::dev_of;
    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    fn parse(args: &[&str]) -> Result<Config> {
        parse_as(args, false)
    }

    fn parse_as(args: &[&str], root: bool) -> Result<Config> {
        match parse_args_unchecked(args, root)? {
            Invocation::Mount(config) => Ok(*config),
            other => panic!("expected a mount, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    /// A stack of fresh directories: l1, l2, u, w, m.
    struct Stack {
        dir: TempDir,
    }

    impl Stack {
        fn new() -> Stack {
            let dir = TempDir::new().unwrap();
            for d in ["l1", "l2", "u", "w", "m"] {
                fs::create_dir(dir.path().join(d)).unwrap();
            }
            Stack { dir }
        }

        fn p(&self, name: &str) -> String {
            self.dir.path().join(name).to_str().unwrap().to_string()
        }

        fn validate(&self, opts: &str, mountpoint: &str) -> Result<Config> {
            let mut config = parse(&["-o", opts, mountpoint])?;
            config.validate()?;
            Ok(config)
        }

        fn validate_err(&self, opts: &str, mountpoint: &str) -> String {
            let message = self.validate(opts, mountpoint).unwrap_err().to_string();
            assert!(!message.contains('\n'), "not one line: {message}");
            message
        }

        fn rw(&self) -> String {
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                self.p("l1"),
                self.p("l2"),
                self.p("u"),
                self.p("w")
            )
        }
    }

    #[test]
    fn refuses_more_layers_than_inode_numbers_can_tell_apart() {
        let many = vec!["/a"; MAX_LOWERS + 1].join(":");
        let err = parse(&["-o", &format!("lowerdir={many}"), "/m"]).unwrap_err();
        assert!(err.to_string().contains("layers"), "{err}");
        let most = vec!["/a"; MAX_LOWERS].join(":");
        assert!(parse(&["-o", &format!("lowerdir={most}"), "/m"]).is_ok());
    }

    #[test]
    fn parses_layers_in_order() {
        let c = parse(&["-o", "lowerdir=/a:/b:/c,upperdir=/u,workdir=/w", "/m"]).unwrap();
        assert_eq!(c.lowers, ["/a", "/b", "/c"].map(PathBuf::from));
        assert_eq!(c.upper, Some(PathBuf::from("/u")));
        assert_eq!(c.work, Some(PathBuf::from("/w")));
        assert_eq!(c.mountpoint, PathBuf::from("/m"));
        assert!(!c.read_only);
        assert!(!c.foreground);
        assert!(c.default_permissions);
    }

    #[test]
    fn escaped_colon_and_comma_stay_in_paths() {
        let c = parse(&[
            "-o",
            r"lowerdir=/a\:b:/c\,d,upperdir=/u\:x,workdir=/w",
            "/m",
        ])
        .unwrap();
        assert_eq!(c.lowers, ["/a:b", "/c,d"].map(PathBuf::from));
        assert_eq!(c.upper, Some(PathBuf::from("/u:x")));
    }

    #[test]
    fn several_o_are_merged_and_trailing_comma_is_accepted() {
        let c = parse(&[
            "-o",
            "lowerdir=/a",
            "-oupperdir=/u,",
            "-o",
            "workdir=/w,",
            "/m",
        ])
        .unwrap();
        assert_eq!(c.lowers, [PathBuf::from("/a")]);
        assert_eq!(c.work, Some(PathBuf::from("/w")));
        assert!(!c.read_only);
    }

    #[test]
    fn options_may_follow_the_mount_point() {
        let c = parse(&["/m", "-o", "lowerdir=/a", "-f"]).unwrap();
        assert_eq!(c.mountpoint, PathBuf::from("/m"));
        assert!(c.foreground);
    }

    #[test]
    fn without_upperdir_or_with_ro_the_mount_is_read_only() {
        assert!(parse(&["-o", "lowerdir=/a", "/m"]).unwrap().read_only);
        let c = parse(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w,ro", "/m"]).unwrap();
        assert!(c.read_only);
        let c = parse(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w,ro,rw", "/m"]).unwrap();
        assert!(!c.read_only);
    }

    #[test]
    fn flags() {
        let c = parse(&["-d", "-o", "lowerdir=/a", "/m"]).unwrap();
        assert!(c.debug && c.foreground);
        let c = parse(&["-o", "lowerdir=/a,debug", "/m"]).unwrap();
        assert!(c.debug && c.foreground);
        let c = parse(&["-s", "-o", "lowerdir=/a", "/m"]).unwrap();
        assert_eq!(c.threads, 1);
        let c = parse(&["-o", "lowerdir=/a", "--", "-m"]).unwrap();
        assert_eq!(c.mountpoint, PathBuf::from("-m"));
        for help in ["-h", "--help"] {
            assert!(matches!(
                parse_args_unchecked([help], false),
                Ok(Invocation::Help)
            ));
        }
        for version in ["-V", "--version"] {
            assert!(matches!(
                parse_args_unchecked([version], false),
                Ok(Invocation::Version)
            ));
        }
    }

    #[test]
    fn overlay_options() {
        let c = parse(&[
            "-o",
            "lowerdir=/a,redirect_dir=off,whiteout=file,fsync=0,timeout=2.5,threads=8,fsname=img",
            "/m",
        ])
        .unwrap();
        assert!(!c.redirect_dir);
        assert_eq!(c.whiteout, WhiteoutMode::File);
        assert!(c.volatile);
        assert_eq!(c.timeout, 2.5);
        assert_eq!(c.threads, 8);
        assert_eq!(c.fsname, "img");
        assert_eq!(c.io_uring_poll, DEFAULT_IO_URING_POLL);
        let c = parse(&["-o", "lowerdir=/a,io_uring_poll=0", "/m"]).unwrap();
        assert_eq!(c.io_uring_poll, Duration::ZERO);
        let c = parse(&["-o", "lowerdir=/a,io_uring_poll=200", "/m"]).unwrap();
        assert_eq!(c.io_uring_poll, Duration::from_micros(200));
        assert!(c.readahead);
        let c = parse(&["-o", "lowerdir=/a,readahead=off", "/m"]).unwrap();
        assert!(!c.readahead);
        let c = parse(&["-o", "lowerdir=/a,volatile,whiteout=chardev", "/m"]).unwrap();
        assert!(c.volatile && c.redirect_dir);
        assert_eq!(c.whiteout, WhiteoutMode::CharDev);
        let c = parse(&["-o", "lowerdir=/a,volatile,fsync=1", "/m"]).unwrap();
        assert!(!c.volatile);
    }

    #[test]
    fn id_mappings_and_squash() {
        let c = parse(&[
            "-o",
            "lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_uid=7,squash_to_gid=8,squash_to_root",
            "/m",
        ])
        .unwrap();
        assert_eq!(
            c.uid_mapping,
            [
                IdRange {
                    from: 0,
                    to: 1000,
                    len: 1
                },
                IdRange {
                    from: 1,
                    to: 100_000,
                    len: 65536
                }
            ]
        );
        assert_eq!(
            c.gid_mapping,
            [IdRange {
                from: 0,
                to: 1000,
                len: 1
            }]
        );
        assert_eq!((c.squash_to_uid, c.squash_to_gid), (Some(7), Some(8)));
        assert!(c.squash_to_root);
        let c = parse(&[
            "-o",
            "lowerdir=/a,uidmapping=:0:1:1000:1000:100000:5,gidmapping=:0:1:1000",
            "/m",
        ])
        .unwrap();
        assert_eq!(c.uid_mapping.len(), 2, "podman's leading colons");
        assert_eq!(
            c.gid_mapping[0],
            IdRange {
                from: 0,
                to: 1,
                len: 1000
            }
        );
        for bad in [
            "uidmapping=",
            "uidmapping=:",
            "uidmapping=0:1",
            "uidmapping=a:b:c",
            "uidmapping=0:0:0",
            "gidmapping=4294967295:0:2",
        ] {
            let e = err(&["-o", &format!("lowerdir=/a,{bad}"), "/m"]);
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn kernel_flags_last_one_wins_with_fuse_overlayfs_defaults() {
        let c = parse(&["-o", "lowerdir=/a,nodev,dev,nosuid,noexec,dirsync", "/m"]).unwrap();
        assert_eq!(
            c.kernel_flags,
            ["dev", "nosuid", "noexec", "dirsync", "noatime"]
        );
        let c = parse(&["-o", "lowerdir=/a,atime", "/m"]).unwrap();
        assert_eq!(c.kernel_flags, ["atime"]);
        assert!(!c.allow_other);
    }

    #[test]
    fn root_gets_allow_other_and_suid() {
        let c = parse_as(&["-o", "lowerdir=/a,allow_root", "/m"], true).unwrap();
        assert!(c.allow_other && c.default_permissions && !c.allow_root);
        assert!(c.kernel_flags.contains(&"suid".to_string()));
        let c = parse_as(&["-o", "lowerdir=/a,nosuid", "/m"], true).unwrap();
        assert!(!c.kernel_flags.contains(&"suid".to_string()));
        let c = parse_as(&["-o", "lowerdir=/a,allow_root", "/m"], false).unwrap();
        assert!(c.allow_root && !c.allow_other);
    }

    #[test]
    fn podman_options_are_accepted() {
        let c = parse(&[
            "-o",
            r#"lowerdir=/a,upperdir=/u,workdir=/w,noacl,threaded=1,writeback=0,noxattrs=0,fast_ino=1,static_nlink,plugins=/p,context="system_u:object_r:container_file_t:s0:c1,c2",index=off,metacopy=on,userxattr,xino=auto,x-gvfs-hide,"#,
            "/m",
        ])
        .unwrap();
        assert_eq!(c.lowers, [PathBuf::from("/a")]);
    }

    #[test]
    fn xattr_permissions_values() {
        let x = |v: &str| parse(&["-o", &format!("lowerdir=/a,xattr_permissions={v}"), "/m"]);
        assert_eq!(x("2").unwrap().xattr_permissions, 2);
        assert_eq!(x("0").unwrap().xattr_permissions, 0);
        assert_eq!(
            parse(&["-o", "lowerdir=/a", "/m"])
                .unwrap()
                .xattr_permissions,
            0
        );
        for bad in ["3", "yes", ""] {
            let e = x(bad).unwrap_err().to_string();
            assert!(e.contains("xattr_permissions"), "{e}");
        }
    }

    #[test]
    fn usage_errors_name_the_problem() {
        assert!(err(&["-o", "lowerdir=/a,bogus", "/m"]).contains("unknown option `bogus`"));
        assert!(err(&["-o", "lowerdir=/a,bogus=1", "/m"]).contains("unknown option `bogus`"));
        assert!(err(&["-x", "/m"]).contains("unknown flag `-x`"));
        assert!(err(&["-o", "lowerdir=/a"]).contains("missing MOUNTPOINT"));
        assert!(err(&["-o", "lowerdir=/a", "/m", "/n"]).contains("unexpected argument `/n`"));
        assert!(err(&["/m", "-o"]).contains("-o needs a value"));
        assert!(err(&["-o", "lowerdir=/a::/b", "/m"]).contains("lowerdir has an empty entry"));
        assert!(err(&["-o", "lowerdir=", "/m"]).contains("lowerdir"));
        assert!(err(&["-o", "lowerdir=/a,redirect_dir=maybe", "/m"]).contains("redirect_dir"));
        assert!(err(&["-o", "lowerdir=/a,whiteout=x", "/m"]).contains("whiteout"));
        assert!(err(&["-o", "lowerdir=/a,threads=0", "/m"]).contains("threads"));
        assert!(err(&["-o", "lowerdir=/a,timeout=-1", "/m"]).contains("timeout"));
        assert!(err(&["-o", "lowerdir=/a,io_uring_poll=1ms", "/m"]).contains("io_uring_poll"));
        assert!(err(&["-o", "lowerdir=/a,io_uring_poll=20000", "/m"]).contains("0 to 10000"));
        assert!(err(&["-o", "lowerdir=/a,fsync=2", "/m"]).contains("fsync"));
        assert!(err(&["-o", "lowerdir=/a,readahead=1", "/m"]).contains("on or off"));
        assert!(err(&["-o", "lowerdir=/a,upperdir", "/m"]).contains("upperdir needs a value"));
        assert!(err(&["-o", "lowerdir=/a,ro=1", "/m"]).contains("ro takes no value"));
    }

    #[test]
    fn valid_stack_is_canonicalized() {
        let s = Stack::new();
        let link = s.p("link");
        symlink(s.p("l2"), &link).unwrap();
        let opts = format!(
            "lowerdir={}:{link},upperdir={},workdir={}",
            s.p("l1"),
            s.p("u"),
            s.p("w")
        );
        let c = s.validate(&opts, &s.p("m")).unwrap();
        let real = |n: &str| fs::canonicalize(s.p(n)).unwrap();
        assert_eq!(c.lowers, [real("l1"), real("l2")]);
        assert_eq!(c.upper, Some(real("u")));
        assert_eq!(c.mountpoint, real("m"));
    }

    #[test]
    fn missing_lowerdir() {
        let s = Stack::new();
        let e = s.validate_err(
            &format!("upperdir={},workdir={}", s.p("u"), s.p("w")),
            &s.p("m"),
        );
        assert!(e.starts_with("missing lowerdir"), "{e}");
    }

    #[test]
    fn layer_missing_or_not_a_directory() {
        let s = Stack::new();
        let e = s.validate_err(
            &format!("lowerdir={}:{}", s.p("l1"), s.p("nope")),
            &s.p("m"),
        );
        assert!(
            e.contains("lowerdir") && e.contains("does not exist"),
            "{e}"
        );
        fs::write(s.p("file"), b"").unwrap();
        let e = s.validate_err(&format!("lowerdir={}", s.p("file")), &s.p("m"));
        assert!(
            e.contains("lowerdir") && e.contains("not a directory"),
            "{e}"
        );
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            s.p("l1"),
            s.p("nope"),
            s.p("w")
        );
        let e = s.validate_err(&opts, &s.p("m"));
        assert!(
            e.contains("upperdir") && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn upper_and_work_come_together() {
        let s = Stack::new();
        let e = s.validate_err(
            &format!("lowerdir={},upperdir={}", s.p("l1"), s.p("u")),
            &s.p("m"),
        );
        assert!(
            e.contains("without workdir") && e.contains("workdir=DIR"),
            "{e}"
        );
        let e = s.validate_err(
            &format!("lowerdir={},workdir={}", s.p("l1"), s.p("w")),
            &s.p("m"),
        );
        assert!(e.contains("without upperdir"), "{e}");
    }

    #[test]
    fn workdir_on_another_filesystem() {
        let s = Stack::new();
        let other = TempDir::new_in("/dev/shm").unwrap();
        assert_ne!(dev_of(other.path()).unwrap(), dev_of(s.dir.path()).unwrap());
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            s.p("l1"),
            s.p("u"),
            other.path().display()
        );
        let e = s.validate_err(&opts, &s.p("m"));
        assert!(e.contains("not on the same filesystem as upperdir"), "{e}");
    }

    #[test]
    fn writable_layers_must_not_overlap_lowers_or_each_other() {
        let s = Stack::new();
        fs::create_dir(s.p("l1/u")).unwrap();
        fs::create_dir(s.p("u/l")).unwrap();
        fs::create_dir(s.p("u/w")).unwrap();
        let cases = [
            (s.p("l1"), s.p("l1/u"), s.p("w"), "upperdir"),
            (s.p("u/l"), s.p("u"), s.p("w"), "upperdir"),
            (s.p("l1"), s.p("u"), s.p("l1"), "workdir"),
            (s.p("l1"), s.p("u"), s.p("u/w"), "overlap"),
            (s.p("l1"), s.p("u"), s.p("u"), "overlap"),
        ];
        for (lower, upper, work, expect) in cases {
            let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
            let e = s.validate_err(&opts, &s.p("m"));
            assert!(
                e.contains(expect) && e.contains("overlap"),
                "{opts} gave {e}"
            );
        }
    }

    #[test]
    fn mount_point_must_be_outside_layers() {
        let s = Stack::new();
        fs::create_dir(s.p("u/m")).unwrap();
        fs::create_dir(s.p("l1/m")).unwrap();
        fs::create_dir(s.p("m/l")).unwrap();
        let e = s.validate_err(&s.rw(), &s.p("u/m"));
        assert!(e.contains("is inside upperdir"), "{e}");
        let e = s.validate_err(&s.rw(), &s.p("l1/m"));
        assert!(e.contains("is inside lowerdir"), "{e}");
        let e = s.validate_err(&s.rw(), &s.p("u"));
        assert!(e.contains("is inside upperdir"), "{e}");
        let e = s.validate_err(&s.rw(), &s.p("w"));
        assert!(e.contains("is inside workdir"), "{e}");
        let opts = format!("lowerdir={}", s.p("m/l"));
        let e = s.validate_err(&opts, &s.p("m"));
        assert!(e.contains("is inside mount point"), "{e}");
        // Mounting over a lower, as kernel overlayfs allows, is fine.
        s.validate(&s.rw(), &s.p("l1")).unwrap();
    }

    #[test]
    fn mount_point_must_exist_and_be_a_directory() {
        let s = Stack::new();
        let e = s.validate_err(&s.rw(), &s.p("nope"));
        assert!(e.contains("does not exist") && e.contains("mkdir"), "{e}");
        fs::write(s.p("file"), b"").unwrap();
        let e = s.validate_err(&s.rw(), &s.p("file"));
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn busy_mount_point() {
        let s = Stack::new();
        let e = s.validate_err(&s.rw(), "/proc");
        assert!(
            e.contains("already a mount point") && e.contains("umount"),
            "{e}"
        );
    }

    /// The help names every option the table declares as listed, so the two cannot drift.
    #[test]
    fn usage_names_every_listed_option() {
        for opt in OPTIONS.iter().filter(|o| o.listed) {
            assert!(
                USAGE.contains(opt.name),
                "USAGE does not mention {}",
                opt.name
            );
        }
    }

    #[test]
    fn from_options_validates() {
        let s = Stack::new();
        let c = Config::from_options(&s.rw(), s.p("m")).unwrap();
        assert_eq!(c.lowers.len(), 2);
        assert!(Config::from_options("upperdir=/x", s.p("m")).is_err());
    }
}
