//! `layerctl build`: a Containerfile into images, step by step as docker's classic builder
//! does. Every step's result is an intermediate image (unnamed, its parent recorded);
//! RUN runs in a rootless container on a layerfs mount (the `run` code) and its layer is
//! the commit of that container; COPY/ADD write their layer straight from the context
//! through the confined writer; metadata steps make an image with an empty_layer history
//! entry. A step whose key (parent, instruction, inputs) was built before is reused.

pub mod cache;
pub mod context;
pub mod expand;
pub mod parse;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use layerfs::layers::writer::{LayerPath, LayerWriter, Meta};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::changeset;
use crate::container::{self, NewMount};
use crate::copytree;
use crate::err;
use crate::error::{Context, Result};
use crate::image::{host_arch, now_rfc3339, rfc3339, History, ImageConfig, RootFs, RuntimeConfig};
use crate::images::{self, lower_view};
use crate::output::{out, short};
use crate::run::{self, Network, OutputTail, RunOptions, Runtime};
use crate::store::{parse_ref, Store};
use context::{CopyMeta, HashCache, Ignore};
use parse::Instruction;

pub struct BuildOptions {
    pub context: PathBuf,
    /// None: CONTEXT/Containerfile, else CONTEXT/Dockerfile; `-`: stdin.
    pub file: Option<PathBuf>,
    pub tags: Vec<String>,
    pub build_args: Vec<String>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// Clamp every created time and file time of new layers to this.
    pub timestamp: Option<i64>,
    pub quiet: bool,
    pub network: Network,
    pub keep_failed: bool,
    pub runtime: Option<Runtime>,
}

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// Output lines a failed RUN's error repeats.
const TAIL_LINES: usize = 10;

/// What a stage has built so far.
struct State {
    cfg: ImageConfig,
    /// The image the next step builds on (None for `FROM scratch` before any step).
    parent: Option<String>,
    /// ARGs declared in this stage: name -> value in effect (None: declared, unset).
    args: Vec<(String, Option<String>)>,
}

impl State {
    fn env(&self) -> Vec<String> {
        self.cfg.config.env.clone().unwrap_or_default()
    }

    /// A variable as expansion sees it: ENV wins over ARG, as the Dockerfile reference says.
    fn var(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        if let Some(e) = self.env().iter().rev().find(|e| e.starts_with(&prefix)) {
            return Some(e[prefix.len()..].to_string());
        }
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    }

    /// Build args in effect for RUN that ENV does not override, in declaration order.
    fn run_args(&self) -> Vec<(String, String)> {
        let env = self.env();
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.args {
            let Some(v) = v else { continue };
            if env.iter().any(|e| e.split('=').next() == Some(k.as_str())) {
                continue;
            }
            out.retain(|(x, _)| x != k);
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

struct Builder<'a> {
    store: &'a Store,
    opts: &'a BuildOptions,
    escape: char,
    ctx: OwnedFd,
    ignore: Ignore,
    hashes: HashCache,
    /// --build-arg values (None: named without a value and unset in the environment).
    build_args: BTreeMap<String, Option<String>>,
    used_args: std::collections::BTreeSet<String>,
    /// Stage name (lowercase) or index -> its final image id.
    stages: Vec<(Option<String>, String)>,
    step: usize,
    total: usize,
    serial: u64,
}

fn say(quiet: bool, s: impl AsRef<str>) {
    if !quiet {
        out(s);
    }
}

/// Reads the Containerfile the options name.
fn read_file(opts: &BuildOptions) -> Result<(String, String)> {
    match &opts.file {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .ctx(|| "reading the Containerfile from stdin".to_string())?;
            Ok((s, "stdin".into()))
        }
        Some(p) => fs::read_to_string(p)
            .ctx(|| {
                format!(
                    "reading {} (give the Containerfile with -f FILE)",
                    p.display()
                )
            })
            .map(|s| (s, p.display().to_string())),
        None => {
            for n in ["Containerfile", "Dockerfile"] {
                let p = opts.context.join(n);
                if p.is_file() {
                    return fs::read_to_string(&p)
                        .ctx(|| format!("reading {}", p.display()))
                        .map(|s| (s, p.display().to_string()));
                }
            }
            Err(err!(
                "no Containerfile or Dockerfile in {}: add one or give it with -f FILE",
                opts.context.display()
            ))
        }
    }
}

fn created(opts: &BuildOptions) -> String {
    match opts.timestamp {
        Some(t) => rfc3339(t, 0),
        None => now_rfc3339(),
    }
}

fn scratch_config() -> ImageConfig {
    ImageConfig {
        created: None,
        architecture: host_arch().to_string(),
        os: "linux".to_string(),
        config: RuntimeConfig {
            env: Some(vec![format!("PATH={}", run::DEFAULT_PATH)]),
            ..RuntimeConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        },
        history: Vec::new(),
        extra: Map::new(),
    }
}

/// Go's `%q` of a string slice, as docker's classic builder writes CMD and friends in
/// history: `["npm" "start"]`.
fn go_quoted(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

fn nop(s: &str) -> String {
    format!("/bin/sh -c #(nop)  {s}")
}

/// Updates the object under `key` of the config's extra fields (Labels, ExposedPorts,
/// ...), starting from an empty one when there is none (or something else is there).
fn update_map(cfg: &mut RuntimeConfig, key: &str, f: impl FnOnce(&mut Map<String, Value>)) {
    let mut m = match cfg.extra.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    f(&mut m);
    cfg.extra.insert(key.to_string(), Value::Object(m));
}

fn set_env(env: &mut Vec<String>, k: &str, v: &str) {
    let prefix = format!("{k}=");
    if let Some(e) = env.iter_mut().find(|e| e.starts_with(&prefix)) {
        *e = format!("{k}={v}");
    } else {
        env.push(format!("{k}={v}"));
    }
}

/// `KEY=VALUE ...` pairs (ENV, LABEL), or the legacy `KEY VALUE` form.
fn pairs(b: &Builder, st: &State, rest: &str, what: &str) -> Result<Vec<(String, String)>> {
    let vars = |n: &str| st.var(n);
    let words = expand::words(rest, &vars, b.escape).map_err(|e| err!("{what}: {e}"))?;
    let Some(first) = words.first() else {
        return Err(err!("{what} needs KEY=VALUE"));
    };
    if !first.contains('=') {
        // Legacy form: the first word is the key, the rest of the line its value.
        let key = rest
            .split_whitespace()
            .next()
            .map(str::to_string)
            .unwrap_or_default();
        let value_raw = rest.trim_start()[key.len()..].trim();
        let value = expand::word(value_raw, &vars, b.escape).map_err(|e| err!("{what}: {e}"))?;
        return Ok(vec![(first.clone(), value)]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(err!("{what}: {w:?} is not KEY=VALUE")),
        })
        .collect()
}

/// Parses `--chown=USER[:GROUP]` (numeric, or names in the image's passwd/group).
fn parse_chown(spec: &str, lookup_root: Option<&Path>) -> Result<(u32, u32)> {
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    let num = |s: &str| s.parse::<u32>().ok();
    let uid = match num(u) {
        Some(n) => n,
        None => {
            let root = lookup_root.ok_or_else(|| {
                err!("--chown={spec}: names need the image's /etc/passwd; give numeric ids")
            })?;
            crate::runtime::resolve_user(root, u)?.0
        }
    };
    let gid = if g.is_empty() {
        match lookup_root {
            Some(root) if num(u).is_none() => crate::runtime::resolve_user(root, u)?.1,
            _ => uid,
        }
    } else {
        match num(g) {
            Some(n) => n,
            None => {
                let root = lookup_root.ok_or_else(|| {
                    err!("--chown={spec}: names need the image's /etc/group; give numeric ids")
                })?;
                crate::runtime::resolve_user(root, &format!("0:{g}"))?.1
            }
        }
    };
    Ok((uid, gid))
}

/// Sets every time in the layer directory `dir` that is later than `t` to `t`.
/// Explicit stack: the layer's depth is what the build made it.
fn clamp_times(dir: &Path, t: i64) -> Result<()> {
    let root = OwnedFd::from(fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))?);
    let ts = [
        layerfs::sys::Timespec {
            tv_sec: t as libc::time_t,
            tv_nsec: 0,
        },
        layerfs::sys::Timespec {
            tv_sec: t as libc::time_t,
            tv_nsec: 0,
        },
    ];
    let late =
        |st: &layerfs::sys::Stat| st.st_mtime > t || (st.st_mtime == t && st.st_mtime_nsec > 0);
    let mut stack: Vec<OwnedFd> = vec![root];
    let mut dirs_to_stamp: Vec<(std::rc::Rc<OwnedFd>, OsString)> = Vec::new();
    while let Some(d) = stack.pop() {
        let d = std::rc::Rc::new(d);
        for name in copytree::sorted_names(d.as_fd()).ctx(|| "reading a new layer".to_string())? {
            let st = layerfs::sys::fstatat(d.as_fd(), &name)
                .ctx(|| format!("stat {} in a new layer", name.to_string_lossy()))?;
            if copytree::is_dir(&st) {
                let sub = copytree::open_subdir(d.as_fd(), &name)
                    .ctx(|| format!("opening {} in a new layer", name.to_string_lossy()))?;
                stack.push(sub);
                if late(&st) {
                    dirs_to_stamp.push((std::rc::Rc::clone(&d), name));
                }
            } else if late(&st) {
                layerfs::sys::utimensat(d.as_fd(), &name, &ts)
                    .ctx(|| format!("setting the time of {}", name.to_string_lossy()))?;
            }
        }
    }
    // Directories last: stamping them first would not change, but keeps the order plain.
    for (d, name) in dirs_to_stamp {
        layerfs::sys::utimensat(d.as_fd(), &name, &ts)
            .ctx(|| format!("setting the time of {}", name.to_string_lossy()))?;
    }
    let rootst = fs::metadata(dir).ctx(|| format!("stat {}", dir.display()))?;
    use std::os::unix::fs::MetadataExt;
    if rootst.mtime() > t || (rootst.mtime() == t && rootst.mtime_nsec() > 0) {
        let f = fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
        layerfs::sys::futimens(f.as_fd(), &ts)
            .ctx(|| format!("setting the time of {}", dir.display()))?;
    }
    Ok(())
}

/// A name for a step's container, docker-style (12 hex digits).
fn container_id(serial: u64) -> String {
    let seed = format!(
        "{}-{}-{:?}",
        std::process::id(),
        serial,
        std::time::SystemTime::now()
    );
    format!("{:x}", Sha256::digest(seed.as_bytes()))[..12].to_string()
}

impl<'a> Builder<'a> {
    fn vars<'s>(&self, st: &'s State) -> impl Fn(&str) -> Option<String> + 's {
        move |n: &str| st.var(n)
    }

    fn word(&self, st: &State, s: &str, what: &str) -> Result<String> {
        let v = self.vars(st);
        expand::word(s, &v, self.escape).map_err(|e| err!("{what}: {e}"))
    }

    fn text(&self, st: &State, s: &str, what: &str) -> Result<String> {
        let v = self.vars(st);
        expand::text(s, &v, self.escape).map_err(|e| err!("{what}: {e}"))
    }

    fn words(&self, st: &State, s: &str, what: &str) -> Result<Vec<String>> {
        let v = self.vars(st);
        expand::words(s, &v, self.escape).map_err(|e| err!("{what}: {e}"))
    }

    fn header(&self, ins: &Instruction) -> String {
        format!("STEP {}/{}: {}", self.step, self.total, ins.display())
    }

    /// Reuses the image an earlier build made for `key`, if any: prints so and moves on.
    fn cached(&self, st: &mut State, key: &str) -> Result<bool> {
        if self.opts.no_cache {
            return Ok(false);
        }
        let Some(id) = cache::lookup(self.store, key) else {
            return Ok(false);
        };
        let cfg = self.store.read_image(&id)?;
        say(self.opts.quiet, "---> Using cache");
        say(self.opts.quiet, format!("---> {}", short(&id)));
        st.cfg = cfg;
        st.parent = Some(id);
        Ok(true)
    }

    fn key(&self, st: &State, parts: &[&str]) -> String {
        let mut k = format!(
            "layerctl-build-v1\0{}",
            st.parent.as_deref().unwrap_or("scratch")
        );
        for p in parts {
            k.push('\0');
            k.push_str(p);
        }
        k
    }

    /// Writes `cfg` as the step's image (parent recorded, cache entry written); the caller
    /// holds the store lock. Prints its id.
    fn finish_step(
        &self,
        st: &mut State,
        mut cfg: ImageConfig,
        h: History,
        key: &str,
    ) -> Result<()> {
        cfg.created = h.created.clone();
        cfg.history.push(h);
        let id = self.store.write_image(&cfg)?;
        if let Some(p) = &st.parent {
            if *p != id {
                self.store.set_parent(&id, p)?;
            }
        }
        cache::record(self.store, key, &id)?;
        st.cfg = cfg;
        st.parent = Some(id);
        Ok(())
    }

    /// A metadata-only step: the config changes, the history gets an empty_layer entry.
    fn meta_step(
        &self,
        st: &mut State,
        created_by: String,
        change: impl FnOnce(&mut RuntimeConfig),
    ) -> Result<()> {
        let key = self.key(st, &["meta", &created_by]);
        if self.cached(st, &key)? {
            return Ok(());
        }
        let mut cfg = st.cfg.clone();
        change(&mut cfg.config);
        let h = History {
            created: Some(created(self.opts)),
            created_by: Some(created_by),
            empty_layer: true,
            ..History::default()
        };
        let _lock = self.store.lock()?;
        self.finish_step(st, cfg, h, &key)?;
        self.say_id(st);
        Ok(())
    }

    fn say_id(&self, st: &State) {
        if let Some(id) = &st.parent {
            say(self.opts.quiet, format!("---> {}", short(id)));
        }
    }

    /// Stores the layer in `tmp/diff` (times clamped for a reproducible build) and makes
    /// the step's image from it.
    /// The caller holds the store lock (taken before `tmp` was made: a new lock clears tmp/).
    fn layer_step(&self, st: &mut State, tmp: &Path, created_by: String, key: &str) -> Result<()> {
        if let Some(t) = self.opts.timestamp {
            if let Err(e) = clamp_times(&tmp.join("diff"), t) {
                let _ = copytree::remove_any(tmp);
                return Err(e);
            }
        }
        let (diff_id, _, _) = images::store_layer(self.store, tmp, "hashing")?;
        let mut cfg = st.cfg.clone();
        cfg.rootfs.diff_ids.push(diff_id);
        let h = History {
            created: Some(created(self.opts)),
            created_by: Some(created_by),
            ..History::default()
        };
        self.finish_step(st, cfg, h, key)
    }

    fn run_step(&mut self, st: &mut State, ins: &Instruction) -> Result<()> {
        let shell: Vec<String> = st
            .cfg
            .config
            .extra
            .get("Shell")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        let argv: Vec<String> = match ins.json_args() {
            Some(a) if !a.is_empty() => a,
            Some(_) => return Err(err!("line {}: RUN [] has no command", ins.line)),
            None => {
                let script = match ins.heredocs.as_slice() {
                    // `RUN <<EOF` alone: the body is the script.
                    [h] if ins.rest.trim().starts_with("<<")
                        && !ins.rest.trim().contains(char::is_whitespace) =>
                    {
                        h.body.clone()
                    }
                    // Otherwise the shell reads the heredocs itself.
                    hs => {
                        let mut s = ins.rest.clone();
                        for h in hs {
                            s.push('\n');
                            s.push_str(&h.body);
                            s.push_str(&h.name);
                        }
                        s
                    }
                };
                if script.trim().is_empty() {
                    return Err(err!("line {}: RUN has no command", ins.line));
                }
                shell.iter().cloned().chain([script]).collect()
            }
        };
        let args = st.run_args();
        for (k, _) in &args {
            self.used_args.insert(k.clone());
        }
        let mut created_by = String::new();
        if !args.is_empty() {
            created_by.push_str(&format!("|{} ", args.len()));
            for (k, v) in &args {
                created_by.push_str(&format!("{k}={v} "));
            }
        }
        created_by.push_str(&argv.join(" "));
        let key = self.key(st, &["run", &created_by]);
        if self.cached(st, &key)? {
            return Ok(());
        }
        let Some(parent) = st.parent.clone() else {
            return Err(err!(
                "line {}: RUN on `FROM scratch` before any COPY: the empty image has no shell; copy a static binary in first or build FROM an image",
                ins.line
            ));
        };
        self.serial += 1;
        let name = format!("build-{}", container_id(self.serial));
        say(self.opts.quiet, format!("---> Running in {}", &name[6..]));
        let env: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let tail = OutputTail::new(!self.opts.quiet, TAIL_LINES);
        let ropts = RunOptions {
            name: Some(&name),
            runtime: self.opts.runtime,
            env: &env,
            network: self.opts.network,
            quiet: true,
            output: Some(&tail),
            make_workdir: true,
            // RUN runs its command alone: the image's Entrypoint is not put in front.
            entrypoint: Some(""),
            ..RunOptions::default()
        };
        let code = match run::run(self.store, &parent, &argv, &ropts) {
            Ok(c) => c,
            Err(e) => {
                if self.store.container_dir(&name).exists() && !self.opts.keep_failed {
                    let _ = container::rm(self.store, &name, true);
                }
                return Err(err!(
                    "step {}/{} `{}`: {e}",
                    self.step,
                    self.total,
                    ins.display()
                ));
            }
        };
        if code != 0 {
            let kept = if self.opts.keep_failed {
                format!("container {name} kept (`layerctl diff {name}`, `layerctl rm {name}`)")
            } else {
                let _ = container::rm(self.store, &name, true);
                "container removed (--keep-failed keeps it)".to_string()
            };
            let last = tail.last();
            let shown = if last.is_empty() {
                "no output".to_string()
            } else {
                format!("last output: {}", last.join(" | "))
            };
            return Err(err!(
                "step {}/{} `{}` failed: the command exited with status {code}; {shown}; {kept}",
                self.step,
                self.total,
                ins.display()
            ));
        }
        let res = self.commit_container(st, &name, created_by, &key);
        let _ = container::rm(self.store, &name, true);
        res?;
        say(
            self.opts.quiet,
            format!("Removing intermediate container {}", &name[6..]),
        );
        self.say_id(st);
        Ok(())
    }

    /// The step's layer: the commit of the (unmounted) container `name`.
    fn commit_container(
        &self,
        st: &mut State,
        name: &str,
        created_by: String,
        key: &str,
    ) -> Result<()> {
        let lowers = lower_view(self.store, &st.cfg)?;
        let _lock = self.store.lock()?;
        let tmp = self.store.tmp_dir()?;
        let out = tmp.join("diff");
        fs::create_dir(&out).ctx(|| format!("creating {}", out.display()))?;
        let res = changeset::Builder::new(&lowers, &|| {}).build(
            &container::upper_dir(self.store, name),
            Some(&self.store.container_dir(name).join("work/index")),
            &out,
        );
        if let Err(e) = res {
            let _ = copytree::remove_any(&tmp);
            return Err(e);
        }
        self.layer_step(st, &tmp, created_by, key)
    }

    /// The stage or image a `--from` names: (image id, its config).
    fn source_image(&self, from: &str) -> Result<String> {
        let lower = from.to_ascii_lowercase();
        if let Some((_, id)) = self
            .stages
            .iter()
            .find(|(n, _)| n.as_deref() == Some(&lower))
        {
            return Ok(id.clone());
        }
        if let Ok(i) = from.parse::<usize>() {
            if let Some((_, id)) = self.stages.get(i) {
                return Ok(id.clone());
            }
        }
        self.store.resolve_image(from).map_err(|e| {
            err!("--from={from}: not an earlier stage and not an image in the store ({e})")
        })
    }

    fn copy_step(&mut self, st: &mut State, ins: &Instruction, add: bool) -> Result<()> {
        let what = format!("line {} {}", ins.line, ins.cmd);
        for (k, _) in &ins.flags {
            if !["from", "chown", "chmod", "link"].contains(&k.as_str()) {
                return Err(err!(
                    "{what}: unknown option --{k} (use --from, --chown, --chmod)"
                ));
            }
        }
        let mut words = match ins.json_args() {
            Some(a) => a
                .iter()
                .map(|w| self.word(st, &format!("'{}'", w.replace('\'', "'\\''")), &what))
                .collect::<Result<Vec<_>>>()?,
            None => self.words(st, &ins.rest, &what)?,
        };
        if words.len() < 2 {
            return Err(err!(
                "{what} needs at least one source and a destination: {} SRC... DEST",
                ins.cmd
            ));
        }
        let dest_raw = words.pop().unwrap_or_default();
        let workdir = st
            .cfg
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let dest_abs = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{}", workdir.trim_end_matches('/'), dest_raw)
        };
        let dest_dir_hint = dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.");
        let dest_comps = context::clean_rel(&dest_abs)
            .ok_or_else(|| err!("{what}: destination {dest_raw:?} climbs above /"))?;
        let dest =
            LayerPath::from_components(&dest_comps.iter().map(OsString::from).collect::<Vec<_>>());
        let chmod = match ins.flag("chmod") {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| err!("{what}: --chmod={m} is not an octal mode (e.g. 644)"))?,
            ),
            None => None,
        };
        let from = ins
            .flag("from")
            .map(|f| self.word(st, f, &what))
            .transpose()?;
        let clamp = self.opts.timestamp;

        // Heredoc sources (`COPY <<EOF /f`): files made from the bodies.
        let heredoc_src: Vec<&parse::Heredoc> = words
            .iter()
            .filter_map(|w| {
                let n = w
                    .trim_start_matches("<<")
                    .trim_start_matches('-')
                    .trim_matches(['"', '\'']);
                w.starts_with("<<")
                    .then(|| ins.heredocs.iter().find(|h| h.name == n))
                    .flatten()
            })
            .collect();
        if !heredoc_src.is_empty() && heredoc_src.len() != words.len() {
            return Err(err!(
                "{what}: mixing heredoc and file sources is not supported: use one COPY each"
            ));
        }

        // The source root: the context, or a read-only mount of the --from image.
        let mut mounted: Option<(String, PathBuf)> = None;
        let res = (|| -> Result<()> {
            let (root, ignore, from_id): (OwnedFd, Option<&Ignore>, Option<String>) = match &from {
                None => (sys_dup(self.ctx.as_fd())?, Some(&self.ignore), None),
                Some(f) => {
                    let id = self.source_image(f)?;
                    let (name, dir) = self.mount_image(&id)?;
                    let fd = OwnedFd::from(
                        fs::File::open(&dir).ctx(|| format!("opening {}", dir.display()))?,
                    );
                    mounted = Some((name, dir));
                    (fd, None, Some(id))
                }
            };
            let empty = Ignore::default();
            let ig = ignore.unwrap_or(&empty);
            let mut sources = Vec::new();
            if heredoc_src.is_empty() {
                for w in &words {
                    if add && (w.starts_with("http://") || w.starts_with("https://")) {
                        return Err(add_url(w, &what));
                    }
                    sources.extend(context::resolve(root.as_fd(), w, ig, &what)?);
                }
            }
            let chown = match ins.flag("chown") {
                Some(c) => {
                    let c = self.word(st, c, &what)?;
                    Some(self.chown_in_image(st, &c)?)
                }
                None => None,
            };
            // Key: the instruction after expansion and what it copies.
            let sum = if heredoc_src.is_empty() {
                context::checksum(root.as_fd(), &sources, &self.hashes)?
            } else {
                {
                    let mut h = Sha256::new();
                    for d in &heredoc_src {
                        h.update(d.name.as_bytes());
                        h.update([0]);
                        h.update(d.body.as_bytes());
                    }
                    format!("{:x}", h.finalize())
                }
            };
            let kind = if heredoc_src.len() + sources.len() > 1 {
                "multi"
            } else if sources.first().is_some_and(|s| s.is_dir) {
                "dir"
            } else {
                "file"
            };
            let shown_dest = if dest_raw.starts_with('/') {
                dest_raw.clone()
            } else {
                dest_abs.clone()
            };
            let created_by = format!(
                "/bin/sh -c #(nop) {} {kind}:{sum} in {shown_dest} ",
                ins.cmd
            );
            let key = self.key(
                st,
                &[
                    "copy",
                    &ins.display(),
                    &words.join("\0"),
                    &dest_abs,
                    &format!("{chown:?} {chmod:?} {clamp:?}"),
                    &sum,
                ],
            );
            if self.cached(st, &key)? {
                return Ok(());
            }
            let many = sources.len() + heredoc_src.len() > 1;
            let lowers = lower_view(self.store, &st.cfg)?;
            let dest_in_image = lowers
                .lookup(&dest)
                .ctx(|| format!("looking up {} in the image", dest.display()))?;
            let dest_is_dir_in_image = dest_in_image.as_ref().is_some_and(|e| e.is_dir());
            if many && !dest_dir_hint && !dest_is_dir_in_image {
                return Err(err!(
                    "{what}: with several sources the destination must be a directory ending in '/' ({dest_raw}/)"
                ));
            }
            let how = CopyMeta {
                chown,
                chmod,
                clamp,
                keep_owner: from_id.is_some(),
            };
            let _lock = self.store.lock()?;
            let tmp = self.store.tmp_dir()?;
            let diff = tmp.join("diff");
            fs::create_dir(&diff).ctx(|| format!("creating {}", diff.display()))?;
            let made = (|| -> Result<()> {
                let mut w =
                    LayerWriter::open(&diff).ctx(|| format!("opening {}", diff.display()))?;
                let made_dir = Meta {
                    mode: 0o755,
                    uid: chown.map(|c| c.0).unwrap_or(0),
                    gid: chown.map(|c| c.1).unwrap_or(0),
                    mtime: clamp.unwrap_or_else(now_secs),
                    ..Meta::default()
                };
                // The working directory exists once a layer step ran, as buildah makes it.
                if let Some(wd) = context::clean_rel(&workdir) {
                    let wp = LayerPath::from_components(
                        &wd.iter().map(OsString::from).collect::<Vec<_>>(),
                    );
                    self.ensure_dirs(&mut w, &lowers, &wp, true, &made_dir)?;
                }
                let dest_is_dir = dest_dir_hint
                    || many
                    || dest_is_dir_in_image
                    || sources.first().is_some_and(|s| s.is_dir);
                if dest_is_dir {
                    self.ensure_dirs(&mut w, &lowers, &dest, true, &made_dir)?;
                } else {
                    self.ensure_dirs(&mut w, &lowers, &dest.parent(), true, &made_dir)?;
                }
                for h in &heredoc_src {
                    let to = if dest_is_dir {
                        dest.join(std::ffi::OsStr::new(&h.name))
                    } else {
                        dest.clone()
                    };
                    let meta = Meta {
                        mode: chmod.unwrap_or(0o644),
                        uid: chown.map(|c| c.0).unwrap_or(0),
                        gid: chown.map(|c| c.1).unwrap_or(0),
                        mtime: clamp.unwrap_or_else(now_secs),
                        ..Meta::default()
                    };
                    let body = if h.quoted {
                        h.body.clone()
                    } else {
                        self.text(st, &h.body, &what)?
                    };
                    w.file(&to, &meta, &mut body.as_bytes())
                        .map_err(|e| err!("{what}: writing {}: {}", to.display(), e.why))?;
                }
                for s in &sources {
                    let to = if s.is_dir {
                        dest.clone()
                    } else if dest_is_dir {
                        let base = s.entries[0].ctx.last().cloned().unwrap_or_default();
                        dest.join(&base)
                    } else {
                        dest.clone()
                    };
                    if add && !s.is_dir && from_id.is_none() {
                        if let Some(r) = tar_source(root.as_fd(), &s.entries[0].ctx)? {
                            w = self.add_tar(w, r, &s.name, &dest, &tmp, &what)?;
                            continue;
                        }
                    }
                    context::copy_source(root.as_fd(), s, &mut w, &to, &how)
                        .map_err(|e| err!("{what}: {e}"))?;
                }
                w.finish()
                    .map_err(|e| err!("{what}: finishing the layer: {e}"))
            })();
            if let Err(e) = made {
                let _ = copytree::remove_any(&tmp);
                return Err(e);
            }
            self.layer_step(st, &tmp, created_by, &key)?;
            self.say_id(st);
            Ok(())
        })();
        if let Some((name, dir)) = mounted {
            let _ = container::umount(self.store, &name);
            let _ = container::rm(self.store, &name, true);
            let _ = fs::remove_dir(&dir);
        }
        res
    }

    /// Makes `path` and its parents directories in the new layer: those the image has
    /// keep the image's owner, mode and times (the merged view of them is unchanged), the
    /// missing ones get `made`. A non-directory of the image on the way is refused.
    fn ensure_dirs(
        &self,
        w: &mut LayerWriter,
        lowers: &crate::lowerview::LowerView,
        path: &LayerPath,
        _last_dir: bool,
        made: &Meta,
    ) -> Result<()> {
        for depth in 1..=path.depth() {
            let cur = LayerPath::from_components(&path.components()[..depth]);
            if w.open_dir(&cur).is_ok() {
                continue;
            }
            match lowers
                .lookup(&cur)
                .ctx(|| format!("looking up {} in the image", cur.display()))?
            {
                Some(f) if f.is_dir() => {
                    let pd = lowers
                        .open_dir(f.layer, &cur.parent())
                        .ctx(|| format!("opening {} in the image", cur.parent().display()))?;
                    let meta = copytree::meta_of(pd.as_fd(), cur.name(), &f.stat)
                        .ctx(|| format!("reading {} in the image", cur.display()))?;
                    w.mkdir(&cur, meta)
                        .map_err(|e| err!("creating {}: {}", cur.display(), e.why))?;
                }
                Some(_) => {
                    return Err(err!(
                        "/{} is not a directory in the image (a symlink or file): give a destination below a real directory",
                        cur.display()
                    ))
                }
                None => w
                    .mkdir(&cur, made.clone())
                    .map_err(|e| err!("creating {}: {}", cur.display(), e.why))?,
            }
        }
        Ok(())
    }

    /// `--chown` names are looked up in the image (mounted read-only for that).
    fn chown_in_image(&self, st: &State, spec: &str) -> Result<(u32, u32)> {
        let numeric = spec
            .split(':')
            .all(|p| p.is_empty() || p.parse::<u32>().is_ok());
        if numeric {
            return parse_chown(spec, None);
        }
        let Some(parent) = &st.parent else {
            return Err(err!(
                "--chown={spec}: the image has no /etc/passwd (FROM scratch): give numeric ids"
            ));
        };
        let (name, dir) = self.mount_image(parent)?;
        let r = parse_chown(spec, Some(&dir));
        let _ = container::umount(self.store, &name);
        let _ = container::rm(self.store, &name, true);
        let _ = fs::remove_dir(&dir);
        r
    }

    /// A read-only container of image `id` mounted in the store's run directory.
    fn mount_image(&self, id: &str) -> Result<(String, PathBuf)> {
        let work = self.store.root.join("run");
        fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
        let name = format!(
            "build-{}",
            container_id(id.len() as u64 ^ now_secs() as u64)
        );
        let dir = work.join(format!("{}-{}", std::process::id(), name));
        fs::create_dir(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let how = NewMount {
            name: Some(&name),
            read_only: true,
            ..NewMount::default()
        };
        if let Err(e) = container::mount_new(self.store, id, &dir, &how) {
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
        Ok((name, dir))
    }

    /// ADD of a local tar: extracted (through extract.rs, into a scratch layer) and the
    /// result copied into `dest` of the new layer.
    fn add_tar(
        &self,
        w: LayerWriter,
        r: Box<dyn Read>,
        name: &str,
        dest: &LayerPath,
        tmp: &Path,
        what: &str,
    ) -> Result<LayerWriter> {
        let x = tmp.join("add");
        fs::create_dir(&x).ctx(|| format!("creating {}", x.display()))?;
        crate::extract::extract(r, &x, &format!("{what} {name}"), &|| {})?;
        let src = fs::File::open(&x).ctx(|| format!("opening {}", x.display()))?;
        let mut c = copytree::Copier::new(w);
        c.copy_tree_into(src.into(), dest, &|| {})?;
        let w = c.w;
        copytree::remove_any(&x)?;
        Ok(w)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn sys_dup(fd: BorrowedFd) -> Result<OwnedFd> {
    fd.try_clone_to_owned()
        .ctx(|| "duplicating the context handle".to_string())
}

/// A local ADD source that is a tar (plain or gzip): its stream, else None.
fn tar_source(root: BorrowedFd, rel: &[OsString]) -> Result<Option<Box<dyn Read>>> {
    let mut p = PathBuf::new();
    for c in rel {
        p.push(c);
    }
    let fd = layerfs::sys::openat_beneath(root, &p, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
        .ctx(|| format!("opening {} in the build context", p.display()))?;
    let mut f = fs::File::from(fd);
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(err!("reading {}: {e}", p.display())),
        }
    }
    let is_gz = n >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    let is_tar = n >= 262 && &head[257..262] == b"ustar";
    if !is_gz && !is_tar {
        return Ok(None);
    }
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))
        .ctx(|| format!("reading {}", p.display()))?;
    if is_gz {
        Ok(Some(Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::new(f),
        ))))
    } else {
        Ok(Some(Box::new(std::io::BufReader::new(f))))
    }
}

/// ADD of a URL: layerctl does not download; an unreachable host is named as such.
fn add_url(url: &str, what: &str) -> crate::error::Error {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or("");
    let default_port = if url.starts_with("https") { 443 } else { 80 };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => {
            (h.to_string(), p.parse().unwrap_or(default_port))
        }
        _ => (hostport.to_string(), default_port),
    };
    use std::net::ToSocketAddrs;
    let reachable = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)).is_ok()
        });
    if reachable {
        err!("{what}: ADD of a URL ({url}) is not supported: download it into the build context, or fetch it in a RUN step")
    } else {
        err!("{what}: cannot reach {host}:{port} for ADD {url}: the build has no network to fetch it; download it into the build context instead")
    }
}

/// Builds the Containerfile; returns the final image id.
pub fn build(store: &Store, opts: &BuildOptions) -> Result<String> {
    for t in &opts.tags {
        parse_ref(t)?;
    }
    let (text, fname) = read_file(opts)?;
    let file = parse::parse(&text).map_err(|e| err!("{fname}: {e}"))?;
    let ctx_dir = fs::File::open(&opts.context).ctx(|| {
        format!(
            "opening the build context {} (give a directory)",
            opts.context.display()
        )
    })?;
    if !ctx_dir.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(err!(
            "the build context {} is not a directory",
            opts.context.display()
        ));
    }
    let ctx = OwnedFd::from(ctx_dir);
    let ignore = Ignore::load(ctx.as_fd())?;
    let mut build_args = BTreeMap::new();
    for a in &opts.build_args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                build_args.insert(k.to_string(), Some(v.to_string()));
            }
            Some(_) => return Err(err!("bad --build-arg {a:?}: use NAME=VALUE or NAME")),
            None => {
                build_args.insert(a.clone(), std::env::var(a).ok());
            }
        }
    }
    // Stages, and the meta ARGs before the first FROM.
    let mut meta_args: Vec<&Instruction> = Vec::new();
    let mut stages: Vec<Vec<&Instruction>> = Vec::new();
    for ins in &file.instructions {
        if ins.cmd == "FROM" {
            stages.push(vec![ins]);
        } else if let Some(s) = stages.last_mut() {
            s.push(ins);
        } else if ins.cmd == "ARG" {
            meta_args.push(ins);
        } else {
            return Err(err!(
                "{fname} line {}: {} before the first FROM (only ARG may come first)",
                ins.line,
                ins.cmd
            ));
        }
    }
    if stages.is_empty() {
        return Err(err!("{fname} has no FROM instruction"));
    }
    let stage_name = |s: &[&Instruction]| -> Option<String> {
        let w: Vec<&str> = s[0].rest.split_whitespace().collect();
        (w.len() == 3 && w[1].eq_ignore_ascii_case("as")).then(|| w[2].to_ascii_lowercase())
    };
    let last = match &opts.target {
        None => stages.len() - 1,
        Some(t) => stages
            .iter()
            .position(|s| stage_name(s).as_deref() == Some(&t.to_ascii_lowercase()))
            .ok_or_else(|| err!("--target {t}: no stage is named {t} (FROM IMAGE AS {t})"))?,
    };
    let total: usize = stages[..=last].iter().map(|s| s.len()).sum();
    let hashes = HashCache::load(&cache::dir(store).join("files.json"));
    let mut b = Builder {
        store,
        opts,
        escape: file.escape,
        ctx,
        ignore,
        hashes,
        build_args,
        used_args: Default::default(),
        stages: Vec::new(),
        step: 0,
        total,
        serial: 0,
    };
    // Meta ARG values (for FROM lines), build args overriding defaults.
    let mut meta = State {
        cfg: scratch_config(),
        parent: None,
        args: Vec::new(),
    };
    meta.cfg.config.env = Some(Vec::new());
    for ins in &meta_args {
        b.declare_arg(&mut meta, ins)?;
    }
    let mut final_id = None;
    for s in &stages[..=last] {
        let id = b.stage(s, &meta)?;
        b.stages.push((stage_name(s), id.clone()));
        final_id = Some(id);
    }
    let id = final_id.ok_or_else(|| err!("nothing was built"))?;
    let unused: Vec<&String> = b
        .build_args
        .keys()
        .filter(|k| !b.used_args.contains(*k))
        .collect();
    if !unused.is_empty() && !opts.quiet {
        eprintln!(
            "[Warning] One or more build-args {:?} were not consumed",
            unused
        );
    }
    say(opts.quiet, format!("Successfully built {}", short(&id)));
    {
        let _lock = store.lock()?;
        let _ = b.hashes.save(&cache::dir(store).join("files.json"));
        for t in &opts.tags {
            let full = images::tag(store, t, &id)?;
            say(opts.quiet, format!("Successfully tagged {full}"));
        }
    }
    if opts.quiet {
        out(&id);
    }
    Ok(id)
}

impl<'a> Builder<'a> {
    /// `ARG NAME[=DEFAULT]`: declared in the state; the build arg wins over the default.
    fn declare_arg(&mut self, st: &mut State, ins: &Instruction) -> Result<Vec<String>> {
        let what = format!("line {} ARG", ins.line);
        let mut shown = Vec::new();
        for w in self.words(st, &ins.rest, &what)? {
            let (k, default) = match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w.clone(), None),
            };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err!("{what}: {k:?} is not a valid name"));
            }
            let v = match self.build_args.get(&k) {
                Some(v) => {
                    self.used_args.insert(k.clone());
                    v.clone().or(default.clone())
                }
                None => default.clone(),
            };
            st.args.retain(|(x, _)| *x != k);
            st.args.push((k.clone(), v));
            shown.push(match default {
                Some(d) => format!("{k}={d}"),
                None => k,
            });
        }
        if shown.is_empty() {
            return Err(err!("{what} needs a name: ARG NAME[=DEFAULT]"));
        }
        Ok(shown)
    }

    fn stage(&mut self, ins: &[&Instruction], meta: &State) -> Result<String> {
        let from = ins[0];
        self.step += 1;
        say(self.opts.quiet, self.header(from));
        let what = format!("line {} FROM", from.line);
        let words = self.words(meta, &from.rest, &what)?;
        let image = match words.as_slice() {
            [i] => i.clone(),
            [i, a, _] if a.eq_ignore_ascii_case("as") => i.clone(),
            _ => return Err(err!("{what}: use FROM IMAGE [AS NAME]")),
        };
        if let Some(p) = from.flag("platform") {
            if !p.ends_with(host_arch()) {
                return Err(err!(
                    "{what}: --platform={p}: layerctl builds for linux/{} only",
                    host_arch()
                ));
            }
        }
        let mut st = if image.eq_ignore_ascii_case("scratch") {
            State {
                cfg: scratch_config(),
                parent: None,
                args: Vec::new(),
            }
        } else {
            let lower = image.to_ascii_lowercase();
            let id = match self.stages.iter().find(|(n, _)| n.as_deref() == Some(&lower)) {
                Some((_, id)) => id.clone(),
                None => self.store.resolve_image(&image).map_err(|_| {
                    err!("{what}: image {image} is not in the store and layerctl never pulls: `layerctl load` or `layerctl import` it first")
                })?,
            };
            let cfg = self.store.read_image(&id)?;
            say(self.opts.quiet, format!("---> {}", short(&id)));
            State {
                cfg,
                parent: Some(id),
                args: Vec::new(),
            }
        };
        // ONBUILD triggers of the base run first, as docker does, and are not inherited.
        let triggers: Vec<String> = match st.cfg.config.extra.remove("OnBuild") {
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if !triggers.is_empty() {
            say(
                self.opts.quiet,
                format!(
                    "# Executing {} build trigger{}",
                    triggers.len(),
                    if triggers.len() == 1 { "" } else { "s" }
                ),
            );
            for t in &triggers {
                let text = format!("# escape={}\n{t}\n", self.escape);
                let parsed = parse::parse(&text)
                    .map_err(|e| err!("{what}: ONBUILD trigger {t:?} of {image}: {e}"))?;
                for tins in &parsed.instructions {
                    self.instruction(&mut st, tins, meta)
                        .map_err(|e| err!("ONBUILD trigger {t:?} of {image}: {e}"))?;
                }
            }
        }
        for ins in &ins[1..] {
            self.step += 1;
            say(self.opts.quiet, self.header(ins));
            self.instruction(&mut st, ins, meta)?;
        }
        match st.parent {
            Some(id) => Ok(id),
            None => {
                // `FROM scratch` and nothing else: the empty image itself.
                let mut cfg = st.cfg;
                cfg.created = Some(created(self.opts));
                let _lock = self.store.lock()?;
                self.store.write_image(&cfg)
            }
        }
    }

    fn instruction(&mut self, st: &mut State, ins: &Instruction, meta: &State) -> Result<()> {
        let what = format!("line {} {}", ins.line, ins.cmd);
        let json_or_shell = |ins: &Instruction, shell: Vec<String>| -> Vec<String> {
            match ins.json_args() {
                Some(a) => a,
                None => shell.into_iter().chain([ins.rest.clone()]).collect(),
            }
        };
        let shell: Vec<String> = st
            .cfg
            .config
            .extra
            .get("Shell")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        match ins.cmd.as_str() {
            "RUN" => self.run_step(st, ins),
            "COPY" => self.copy_step(st, ins, false),
            "ADD" => self.copy_step(st, ins, true),
            "ENV" => {
                let kv = pairs(self, st, &ins.rest, &what)?;
                let shown: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
                self.meta_step(st, nop(&format!("ENV {}", shown.join(" "))), |c| {
                    let env = c.env.get_or_insert_with(Vec::new);
                    for (k, v) in &kv {
                        set_env(env, k, v);
                    }
                })
            }
            "ARG" => {
                // A meta ARG named without a default takes the value it had before FROM.
                let mut shown = self.declare_arg(st, ins)?;
                for s in shown.iter_mut() {
                    if !s.contains('=') {
                        if let Some((_, Some(v))) = meta.args.iter().find(|(k, _)| k == s) {
                            if !self.build_args.contains_key(s.as_str()) {
                                let k = s.clone();
                                st.args.retain(|(x, _)| *x != k);
                                st.args.push((k, Some(v.clone())));
                            }
                        }
                    }
                }
                self.meta_step(st, nop(&format!("ARG {}", shown.join(" "))), |_| {})
            }
            "WORKDIR" => {
                let p = self.word(st, &ins.rest, &what)?;
                if p.is_empty() {
                    return Err(err!("{what} needs a path"));
                }
                let base = st
                    .cfg
                    .config
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".into());
                let joined = if p.starts_with('/') {
                    p
                } else {
                    format!("{}/{p}", base.trim_end_matches('/'))
                };
                let clean = context::clean_rel(&joined)
                    .ok_or_else(|| err!("{what}: {joined} climbs above /"))?;
                let dir = format!("/{}", clean.join("/"));
                let d2 = dir.clone();
                self.meta_step(st, nop(&format!("WORKDIR {dir}")), move |c| {
                    c.working_dir = Some(d2)
                })
            }
            "USER" => {
                let u = self.word(st, &ins.rest, &what)?;
                if u.is_empty() {
                    return Err(err!("{what} needs a user: USER NAME[:GROUP]"));
                }
                let u2 = u.clone();
                self.meta_step(st, nop(&format!("USER {u}")), move |c| c.user = Some(u2))
            }
            "CMD" | "ENTRYPOINT" => {
                let v = json_or_shell(ins, shell);
                let shown = format!("{} {}", ins.cmd, go_quoted(&v));
                let is_cmd = ins.cmd == "CMD";
                self.meta_step(st, nop(&shown), move |c| {
                    if is_cmd {
                        c.cmd = Some(v);
                    } else {
                        c.entrypoint = Some(v);
                        // As docker: a new ENTRYPOINT drops the inherited CMD.
                        c.cmd = None;
                    }
                })
            }
            "LABEL" => {
                let kv = pairs(self, st, &ins.rest, &what)?;
                let shown: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
                self.meta_step(st, nop(&format!("LABEL {}", shown.join(" "))), |c| {
                    update_map(c, "Labels", |m| {
                        for (k, v) in kv {
                            m.insert(k, json!(v));
                        }
                    })
                })
            }
            "MAINTAINER" => {
                let m = self.word(st, &ins.rest, &what)?;
                let key = self.key(st, &["meta", &nop(&format!("MAINTAINER {m}"))]);
                if self.cached(st, &key)? {
                    return Ok(());
                }
                let mut cfg = st.cfg.clone();
                cfg.extra.insert("author".into(), json!(m));
                let h = History {
                    created: Some(created(self.opts)),
                    created_by: Some(nop(&format!("MAINTAINER {m}"))),
                    empty_layer: true,
                    ..History::default()
                };
                let _lock = self.store.lock()?;
                self.finish_step(st, cfg, h, &key)?;
                self.say_id(st);
                Ok(())
            }
            "EXPOSE" => {
                let mut ports = Vec::new();
                for p in self.words(st, &ins.rest, &what)? {
                    let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    let ok = num.split('-').all(|n| n.parse::<u16>().is_ok())
                        && ["tcp", "udp", "sctp"].contains(&proto.to_ascii_lowercase().as_str());
                    if !ok {
                        return Err(err!("{what}: {p:?} is not PORT[/tcp|udp|sctp]"));
                    }
                    ports.push(format!("{num}/{}", proto.to_ascii_lowercase()));
                }
                let shown = format!("EXPOSE {}", ports.join(" "));
                self.meta_step(st, nop(&shown), |c| {
                    update_map(c, "ExposedPorts", |m| {
                        for p in ports {
                            m.insert(p, json!({}));
                        }
                    })
                })
            }
            "VOLUME" => {
                let vols = match ins.json_args() {
                    Some(v) => v,
                    None => self.words(st, &ins.rest, &what)?,
                };
                if vols.is_empty() {
                    return Err(err!("{what} needs a path"));
                }
                let shown = format!("VOLUME {}", go_quoted(&vols));
                self.meta_step(st, nop(&shown), |c| {
                    update_map(c, "Volumes", |m| {
                        for v in vols {
                            m.insert(v, json!({}));
                        }
                    })
                })
            }
            "STOPSIGNAL" => {
                let s = self.word(st, &ins.rest, &what)?;
                let s2 = s.clone();
                self.meta_step(st, nop(&format!("STOPSIGNAL {s}")), move |c| {
                    c.extra.insert("StopSignal".into(), json!(s2));
                })
            }
            "SHELL" => {
                let v = ins.json_args().filter(|v| !v.is_empty()).ok_or_else(|| {
                    err!("{what} needs a JSON array: SHELL [\"/bin/bash\", \"-c\"]")
                })?;
                let shown = format!("SHELL {}", go_quoted(&v));
                self.meta_step(st, nop(&shown), |c| {
                    c.extra.insert("Shell".into(), json!(v));
                })
            }
            "HEALTHCHECK" => {
                let hc = healthcheck(ins, &shell)?;
                let shown = format!(
                    "HEALTHCHECK {}",
                    ins.display().trim_start_matches("HEALTHCHECK").trim()
                );
                self.meta_step(st, nop(&shown), |c| {
                    c.extra.insert("Healthcheck".into(), hc);
                })
            }
            "ONBUILD" => {
                let t = ins.rest.trim().to_string();
                let first = t
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if ["ONBUILD", "FROM", "MAINTAINER", ""].contains(&first.as_str()) {
                    return Err(err!(
                        "{what}: ONBUILD takes one instruction (not ONBUILD, FROM or MAINTAINER)"
                    ));
                }
                self.meta_step(st, nop(&format!("ONBUILD {t}")), |c| {
                    let list = c
                        .extra
                        .entry("OnBuild".to_string())
                        .or_insert_with(|| json!([]));
                    if let Value::Array(a) = list {
                        a.push(json!(t));
                    }
                })
            }
            other => Err(err!("{what}: {other} is not supported")),
        }
    }
}

/// The config's Healthcheck for `HEALTHCHECK [OPTIONS] CMD ...` or `HEALTHCHECK NONE`.
fn healthcheck(ins: &Instruction, _shell: &[String]) -> Result<Value> {
    let what = format!("line {} HEALTHCHECK", ins.line);
    let rest = ins.rest.trim();
    let mut hc = Map::new();
    if rest.eq_ignore_ascii_case("NONE") {
        hc.insert("Test".into(), json!(["NONE"]));
        return Ok(Value::Object(hc));
    }
    let (word, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if !word.eq_ignore_ascii_case("CMD") || cmd.trim().is_empty() {
        return Err(err!(
            "{what}: use HEALTHCHECK [--interval=D ...] CMD command, or HEALTHCHECK NONE"
        ));
    }
    let test = match parse::json_array(cmd) {
        Some(a) => std::iter::once("CMD".to_string())
            .chain(a)
            .collect::<Vec<_>>(),
        None => vec!["CMD-SHELL".to_string(), cmd.trim().to_string()],
    };
    hc.insert("Test".into(), json!(test));
    for (k, v) in &ins.flags {
        let field = match k.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| err!("{what}: --retries={v} is not a number"))?;
                hc.insert("Retries".into(), json!(n));
                continue;
            }
            other => return Err(err!("{what}: unknown option --{other}")),
        };
        hc.insert(
            field.into(),
            json!(go_duration(v)
                .ok_or_else(|| err!("{what}: --{k}={v} is not a duration (e.g. 30s, 1m30s)"))?),
        );
    }
    Ok(Value::Object(hc))
}

/// A Go duration (`1m30s`, `500ms`) in nanoseconds.
fn go_duration(s: &str) -> Option<u64> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += num * mult;
        rest = &rest[u..];
    }
    Some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_words() {
        assert_eq!(
            go_quoted(&["npm".to_string(), "start".to_string()]),
            "[\"npm\" \"start\"]"
        );
        assert_eq!(nop("CMD [\"sh\"]"), "/bin/sh -c #(nop)  CMD [\"sh\"]");
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("x"), None);
    }

    #[test]
    fn chown_numeric() {
        assert_eq!(parse_chown("1000", None).unwrap(), (1000, 1000));
        assert_eq!(parse_chown("1:2", None).unwrap(), (1, 2));
        assert!(parse_chown("app", None).is_err());
    }
}
