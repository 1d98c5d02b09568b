//! COPY and ADD: sources from the context (or a stage or image), their layer written
//! through the confined writer; ADD of a local tar extracted, of a URL refused.

use super::*;

impl<'a> Builder<'a> {
    /// The stage or image a `--from` names: (image id, its config).
    pub(super) fn source_image(&self, from: &str) -> Result<String> {
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

    pub(super) fn copy_step(&mut self, st: &mut State, ins: &Instruction, add: bool) -> Result<()> {
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
    pub(super) fn ensure_dirs(
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
    pub(super) fn chown_in_image(&self, st: &State, spec: &str) -> Result<(u32, u32)> {
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
    pub(super) fn mount_image(&self, id: &str) -> Result<(String, PathBuf)> {
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
    pub(super) fn add_tar(
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

/// Parses `--chown=USER[:GROUP]` (numeric, or names in the image's passwd/group).
pub(super) fn parse_chown(spec: &str, lookup_root: Option<&Path>) -> Result<(u32, u32)> {
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

pub(super) fn sys_dup(fd: BorrowedFd) -> Result<OwnedFd> {
    fd.try_clone_to_owned()
        .ctx(|| "duplicating the context handle".to_string())
}

/// A local ADD source that is a tar (plain or gzip): its stream, else None.
pub(super) fn tar_source(root: BorrowedFd, rel: &[OsString]) -> Result<Option<Box<dyn Read>>> {
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
pub(super) fn add_url(url: &str, what: &str) -> crate::error::Error {
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
