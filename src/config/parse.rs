//! The `-o` option string parsed through the tables of `options.rs`: splitting at unescaped
//! commas (and colons in `lowerdir=`), the values' syntax, and what only the whole set of
//! options decides. Every refusal is one line naming the option and the fix.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::options::{declared, x_option, Opt, Takes, IGNORED, IGNORED_KEYS, KERNEL_FLAGS};
use super::{Config, IdRange};
use crate::error::{Error, Result};

/// Accumulates `-o` options straight into a [`Config`] that starts from its defaults;
/// later options override earlier ones, as with mount(8).
pub(super) struct OptionParser {
    pub(super) config: Config,
    pub(super) ro: bool,
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

impl OptionParser {
    pub(super) fn parse(&mut self, options: &[u8]) -> Result<()> {
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
            }) => set(&mut self.config, key, value),
            Some(Opt { help: Some(_), .. }) => Err(Error::usage(format!(
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
            Some(Opt { help: Some(_), .. }) => {
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
    pub(super) fn finish(mut self, mountpoint: PathBuf, as_root: bool) -> Result<Config> {
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

fn unknown(key: &str) -> Error {
    Error::usage(format!(
        "unknown option `{key}`; see layerfs --help for the supported options"
    ))
}

/// A numeric option's value, refused (naming `expected`) unless it parses and is `ok`.
pub(super) fn number<T: std::str::FromStr>(
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

/// An `on|off` option's value.
pub(super) fn on_off(key: &str, value: &[u8]) -> Result<bool> {
    match text(key, value)? {
        "on" => Ok(true),
        "off" => Ok(false),
        v => Err(bad_value(key, v, "on or off")),
    }
}

pub(super) fn bad_value(key: &str, value: &str, expected: &str) -> Error {
    Error::usage(format!(
        "invalid value `{value}` for option {key}; expected {expected}"
    ))
}

pub(super) fn text<'a>(key: &str, value: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(value)
        .map_err(|_| bad_value(key, &String::from_utf8_lossy(value), "plain text"))
}

pub(super) fn parse_id(key: &str, value: &[u8]) -> Result<u32> {
    let v = text(key, value)?;
    v.parse::<u32>()
        .map_err(|_| bad_value(key, v, "a numeric id such as 0 or 1000"))
}

/// `FROM:TO:LEN[:FROM:TO:LEN...]`, as fuse-overlayfs writes id mappings.
pub(super) fn parse_mapping(key: &str, value: &[u8]) -> Result<Vec<IdRange>> {
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

pub(super) fn parse_dir(key: &str, value: &[u8]) -> Result<PathBuf> {
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

pub(super) fn parse_lowerdir(value: &[u8]) -> Result<Vec<PathBuf>> {
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
