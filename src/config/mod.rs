//! Mount options (fuse-overlayfs compatible) turned into a validated [`Config`].
//!
//! The command line is `layerfs [-f] [-d] [-o OPTIONS]... MOUNTPOINT`. Every flag and
//! option is declared once in `options` (what it sets, its default, its help line), parsed
//! by `parse`, described by `help`, and the result checked against the system by
//! `validate`, so that `main.rs` only hands a `Config` to the library. Every problem is
//! reported as one line that names the option and says how to fix it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

mod help;
mod options;
mod parse;
mod validate;

pub use help::usage;
pub use parse::MAX_LOWERS;

use options::{FlagDoes, Takes, FLAGS, OPTIONS};
use parse::OptionParser;

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

/// Everything the daemon needs to mount, already checked. The options that set a field,
/// and the defaults of those that take a value, are declared in `options.rs`.
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

impl Config {
    /// A config with defaults for everything but the layers and mount point: flags off,
    /// and each option that takes a value at the default its declaration gives.
    pub fn new(lowers: Vec<PathBuf>, mountpoint: PathBuf) -> Config {
        // Placeholders for the value options, each overwritten below.
        let mut config = Config {
            lowers,
            upper: None,
            work: None,
            mountpoint,
            foreground: false,
            debug: false,
            redirect_dir: false,
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
            timeout: 0.0,
            threads: 0,
            io_uring: false,
            io_uring_poll: Duration::ZERO,
            readahead: false,
            xattr_permissions: 0,
            fsname: String::new(),
        };
        for opt in OPTIONS {
            if let (Some(default), Takes::Value(set)) = (opt.default, &opt.takes) {
                let applied = set(&mut config, opt.name, default.as_bytes());
                // The declarations are constants; the unit test `declared_defaults` parses
                // each, so this can only fail in a build that test fails.
                debug_assert!(applied.is_ok(), "default of {}: {applied:?}", opt.name);
            }
        }
        config
    }

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

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Mount(Box<Config>),
    Help,
    Version,
}

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
        if bytes == b"--" {
            only_positional = true;
            continue;
        }
        let flag = FLAGS
            .iter()
            .find(|f| f.names.iter().any(|n| n.as_bytes() == bytes));
        match flag.map(|f| &f.does) {
            Some(FlagDoes::Help) => return Ok(Invocation::Help),
            Some(FlagDoes::Version) => return Ok(Invocation::Version),
            Some(FlagDoes::Set(set)) => set(&mut parser.config),
            Some(FlagDoes::Options) => match args.next() {
                Some(opts) => parser.parse(opts.as_ref().as_bytes())?,
                None => {
                    return Err(Error::usage(
                        "-o needs a value; write -o lowerdir=DIR,... before the mount point",
                    ))
                }
            },
            None if bytes.starts_with(b"-o") => parser.parse(&bytes[2..])?,
            None => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.io_uring_poll, Duration::from_micros(100));
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

    /// Each declared default parses, and together they are the mount's defaults.
    #[test]
    fn declared_defaults() {
        for opt in OPTIONS {
            if let (Some(default), Takes::Value(set)) = (opt.default, &opt.takes) {
                let mut c = Config::new(Vec::new(), PathBuf::new());
                set(&mut c, opt.name, default.as_bytes()).unwrap();
            }
            if opt.default.is_some() {
                assert!(matches!(opt.takes, Takes::Value(_)), "{}", opt.name);
            }
        }
        let c = Config::new(vec![PathBuf::from("/l")], PathBuf::from("/m"));
        assert_eq!(c.lowers, [PathBuf::from("/l")]);
        assert_eq!(c.mountpoint, PathBuf::from("/m"));
        assert!(c.redirect_dir && c.io_uring && c.readahead && !c.volatile);
        assert_eq!(c.whiteout, WhiteoutMode::Auto);
        assert_eq!((c.timeout, c.threads), (86400.0, 2));
        assert_eq!(c.io_uring_poll, Duration::from_micros(100));
        assert_eq!((c.xattr_permissions, c.fsname.as_str()), (0, "layerfs"));
        assert!(c.read_only && c.default_permissions && !c.foreground && !c.debug);
        assert!(!c.allow_other && !c.allow_root && c.kernel_flags.is_empty());
        assert!(c.uid_mapping.is_empty() && c.gid_mapping.is_empty());
        assert!(!c.squash_to_root && c.squash_to_uid.is_none() && c.squash_to_gid.is_none());
        assert!(c.upper.is_none() && c.work.is_none());
    }
}
