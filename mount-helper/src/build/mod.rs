//! `layerctl build`: a Containerfile into images, step by step as docker's classic builder
//! does. Every step's result is an intermediate image (unnamed, its parent recorded);
//! RUN runs in a rootless container on a layerfs mount (the `run` code) and its layer is
//! the commit of that container; COPY/ADD write their layer straight from the context
//! through the confined writer; metadata steps make an image with an empty_layer history
//! entry. A step whose key (parent, instruction, inputs) was built before is reused.

pub mod cache;
mod config;
pub mod context;
mod copy_step;
pub mod expand;
pub mod parse;
mod run_step;

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
use config::*;
use context::{CopyMeta, HashCache, Ignore};
use parse::Instruction;
use run_step::*;

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
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::copy_step::parse_chown;
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
