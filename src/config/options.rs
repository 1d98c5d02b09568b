//! The command line declared once: every flag and every `-o` option with what it sets, its
//! default and its `--help` line. `parse.rs` reads these tables to parse, `Config::new`
//! to apply the defaults, `help.rs` to write the help; nothing else names an option.

use std::time::Duration;

use super::parse::{
    bad_value, number, on_off, parse_dir, parse_id, parse_lowerdir, parse_mapping, text,
    OptionParser,
};
use super::{Config, WhiteoutMode};
use crate::error::Result;

/// What a flag before or after the mount point does.
pub(super) enum FlagDoes {
    Set(fn(&mut Config)),
    /// `-o OPTIONS` (or `-oOPTIONS`).
    Options,
    Help,
    Version,
}

pub(super) struct Flag {
    /// The first is shown first in the help.
    pub names: &'static [&'static str],
    /// How the help writes its argument; empty when it takes none.
    pub arg: &'static str,
    pub help: &'static str,
    pub does: FlagDoes,
}

pub(super) const FLAGS: &[Flag] = &[
    Flag {
        names: &["-f"],
        arg: "",
        help: "stay in the foreground",
        does: FlagDoes::Set(|c| c.foreground = true),
    },
    Flag {
        names: &["-d", "--debug"],
        arg: "",
        help: "debug logging (implies -f); RUST_LOG overrides the level",
        does: FlagDoes::Set(|c| c.debug = true),
    },
    Flag {
        names: &["-s"],
        arg: "",
        help: "serve requests on a single thread",
        does: FlagDoes::Set(|c| c.threads = 1),
    },
    Flag {
        names: &["-o"],
        arg: "OPTIONS",
        help: "comma-separated mount options (below)",
        does: FlagDoes::Options,
    },
    Flag {
        names: &["-h", "--help"],
        arg: "",
        help: "print this help",
        does: FlagDoes::Help,
    },
    Flag {
        names: &["-V", "--version"],
        arg: "",
        help: "print the version",
        does: FlagDoes::Version,
    },
];

/// Which part of the help an option is listed in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Layers,
    Fuse,
}

/// What an option does with what it is given: a flag alone (`ro`), or a `KEY=VALUE`
/// whose value is parsed (the key comes along for the error message).
pub(super) enum Takes {
    Nothing(fn(&mut OptionParser)),
    Value(fn(&mut Config, &str, &[u8]) -> Result<()>),
}

/// One `-o` option the daemon acts on.
pub(super) struct Opt {
    pub name: &'static str,
    /// How the help writes the value (`DIR`, `on|off`); empty for a flag.
    pub arg: &'static str,
    /// The help line. An option without one (a libfuse alias) is left out of the help
    /// and, given in the wrong form, is unknown rather than told "needs a value".
    pub help: Option<&'static str>,
    /// The value a mount has when the option is not given, written as the option's value:
    /// `Config::new` applies it through `takes` and the help shows it.
    pub default: Option<&'static str>,
    pub section: Section,
    pub takes: Takes,
}

impl Opt {
    const fn default(self, value: &'static str) -> Opt {
        Opt {
            default: Some(value),
            ..self
        }
    }

    const fn unlisted(self) -> Opt {
        Opt { help: None, ..self }
    }
}

const fn flag(
    section: Section,
    name: &'static str,
    help: &'static str,
    set: fn(&mut OptionParser),
) -> Opt {
    Opt {
        name,
        arg: "",
        help: Some(help),
        default: None,
        section,
        takes: Takes::Nothing(set),
    }
}

const fn value(
    section: Section,
    name: &'static str,
    arg: &'static str,
    help: &'static str,
    set: fn(&mut Config, &str, &[u8]) -> Result<()>,
) -> Opt {
    Opt {
        name,
        arg,
        help: Some(help),
        default: None,
        section,
        takes: Takes::Value(set),
    }
}

use Section::{Fuse, Layers};

/// Every option the daemon acts on. Kernel flags and ignored options are the tables below.
pub(super) const OPTIONS: &[Opt] = &[
    value(
        Layers,
        "lowerdir",
        "DIRS",
        "read-only layers separated by ':', top-most first",
        |c, _, v| {
            c.lowers = parse_lowerdir(v)?;
            Ok(())
        },
    ),
    value(Layers, "upperdir", "DIR", "writable layer", |c, k, v| {
        c.upper = Some(parse_dir(k, v)?);
        Ok(())
    }),
    value(
        Layers,
        "workdir",
        "DIR",
        "scratch directory on the same filesystem as upperdir",
        |c, k, v| {
            c.work = Some(parse_dir(k, v)?);
            Ok(())
        },
    ),
    value(
        Layers,
        "redirect_dir",
        "on|follow|nofollow|off",
        "on: directories that come from a lower layer can be renamed; redirects in the \
         layers are followed in every mode",
        |c, k, v| {
            c.redirect_dir = match text(k, v)? {
                "on" => true,
                // follow/nofollow never create redirects, so renames of lower directories
                // fail with EXDEV, as with off.
                "off" | "follow" | "nofollow" => false,
                v => return Err(bad_value(k, v, "on, follow, nofollow or off")),
            };
            Ok(())
        },
    )
    .default("on"),
    value(
        Layers,
        "whiteout",
        "auto|chardev|file",
        "how deletions are recorded: a 0:0 character device where mknod is permitted \
         (auto), always one (chardev), or .wh.NAME files",
        |c, k, v| {
            c.whiteout = match text(k, v)? {
                "auto" => WhiteoutMode::Auto,
                "chardev" => WhiteoutMode::CharDev,
                "file" => WhiteoutMode::File,
                v => return Err(bad_value(k, v, "auto, chardev or file")),
            };
            Ok(())
        },
    )
    .default("auto"),
    flag(
        Layers,
        "volatile",
        "skip fsync on copy-up and ignore fsync requests",
        |p| p.config.volatile = true,
    ),
    value(Layers, "fsync", "0|1", "0 is volatile", |c, k, v| {
        c.volatile = match text(k, v)? {
            "0" => true,
            "1" => false,
            v => return Err(bad_value(k, v, "0 or 1")),
        };
        Ok(())
    })
    .default("1"),
    value(
        Layers,
        "uidmapping",
        "FROM:TO:LEN[:FROM:TO:LEN...]",
        "on-disk user ids FROM.. shown as TO.. (as fuse-overlayfs)",
        |c, k, v| {
            c.uid_mapping = parse_mapping(k, v)?;
            Ok(())
        },
    ),
    value(
        Layers,
        "gidmapping",
        "FROM:TO:LEN[:FROM:TO:LEN...]",
        "the same for group ids",
        |c, k, v| {
            c.gid_mapping = parse_mapping(k, v)?;
            Ok(())
        },
    ),
    flag(Layers, "squash_to_root", "show every owner as root", |p| {
        p.config.squash_to_root = true
    }),
    value(
        Layers,
        "squash_to_uid",
        "UID",
        "show every owning user as UID",
        |c, k, v| {
            c.squash_to_uid = Some(parse_id(k, v)?);
            Ok(())
        },
    ),
    value(
        Layers,
        "squash_to_gid",
        "GID",
        "show every owning group as GID",
        |c, k, v| {
            c.squash_to_gid = Some(parse_id(k, v)?);
            Ok(())
        },
    ),
    value(
        Layers,
        "xattr_permissions",
        "0|1|2",
        "keep owners/modes in security.fuseoverlayfs.override_stat (1) or \
         user.fuseoverlayfs.override_stat (2), as fuse-overlayfs",
        |c, k, v| {
            let expected = "0, 1 (security.*) or 2 (user.*)";
            c.xattr_permissions = number(k, v, |n| *n <= 2, expected)?;
            Ok(())
        },
    )
    .default("0"),
    flag(Fuse, "ro", "mount read-only", |p| p.ro = true),
    flag(
        Fuse,
        "rw",
        "mount read-write (with upperdir; cancels ro)",
        |p| p.ro = false,
    ),
    flag(Fuse, "debug", "as -d", |p| p.config.debug = true),
    flag(Fuse, "allow_other", "let every user use the mount", |p| {
        p.config.allow_other = true
    }),
    flag(Fuse, "allow_root", "let root use the mount too", |p| {
        p.config.allow_root = true
    }),
    // The kernel always checks permissions on a layerfs mount: the daemon acts with its
    // own credentials on the layers, so it must not be the one deciding access.
    flag(
        Fuse,
        "default_permissions",
        "accepted; the kernel always checks permissions",
        |_| {},
    ),
    value(
        Fuse,
        "fsname",
        "NAME",
        "the source shown in the mount table",
        |c, k, v| {
            let v = text(k, v)?;
            if v.is_empty() || v.contains(',') {
                return Err(bad_value(k, v, "a name without commas"));
            }
            c.fsname = v.to_string();
            Ok(())
        },
    )
    .default("layerfs"),
    // Lower layers are immutable while mounted and the upper one changes only through the
    // mount, which tells the kernel of every change it makes: nothing to expire.
    value(
        Fuse,
        "timeout",
        "SECONDS",
        "how long the kernel caches entries and attributes",
        |c, k, v| {
            let ok = |t: &f64| t.is_finite() && *t >= 0.0;
            c.timeout = number(k, v, ok, "a number of seconds such as 1 or 0.5")?;
            Ok(())
        },
    )
    .default("86400"),
    value(
        Fuse,
        "threads",
        "N",
        "worker threads serving requests",
        set_threads,
    )
    .default("2"),
    // libfuse's name for the same setting; accepted, not advertised.
    value(Fuse, "max_threads", "N", "", set_threads).unlisted(),
    value(
        Fuse,
        "io_uring",
        "on|off",
        "FUSE over io_uring when the kernel offers it: fuse module parameter \
         enable_uring=Y",
        |c, k, v| {
            c.io_uring = on_off(k, v)?;
            Ok(())
        },
    )
    .default("on"),
    // Long enough to cover a caller's turnaround between two requests in a loop (a few
    // microseconds) and most requests that take the daemon a while (a directory's first
    // listing); short enough that a quiet mount costs nothing. Measured: an lstat loop took
    // 14-17 us per entry at 100, 16-27 us at 50.
    value(
        Fuse,
        "io_uring_poll",
        "MICROSECONDS",
        "queue threads look for the next request without sleeping this long after the \
         last one, 0 to never",
        |c, k, v| {
            let us = number(k, v, |us| *us <= 10_000, "microseconds from 0 to 10000")?;
            c.io_uring_poll = Duration::from_micros(us);
            Ok(())
        },
    )
    .default("100"),
    value(
        Fuse,
        "readahead",
        "on|off",
        "when listing a directory reads the disk, read its lower subdirectories in the \
         background",
        |c, k, v| {
            c.readahead = on_off(k, v)?;
            Ok(())
        },
    )
    .default("on"),
];

fn set_threads(c: &mut Config, k: &str, v: &[u8]) -> Result<()> {
    let ok = |n: &usize| (1..=1024).contains(n);
    c.threads = number(k, v, ok, "a whole number from 1 to 1024")?;
    Ok(())
}

pub(super) fn declared(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.name == key)
}

/// Kernel mount flags the daemon passes on, each with the flag it cancels.
pub(super) const KERNEL_FLAGS: &[(&str, &str)] = &[
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
pub(super) const IGNORED: &[&str] = &[
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
pub(super) const IGNORED_KEYS: &[&str] = &[
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

/// `x-*` options are for mount(8) and its helpers, never for the file system.
pub(super) fn x_option(key: &str) -> bool {
    key.starts_with("x-")
}
