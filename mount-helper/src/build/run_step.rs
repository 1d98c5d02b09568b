//! A RUN step: the command in a rootless container on a layerfs mount of the step's
//! parent image (the `run` code), its layer the commit of that container.

use super::*;

impl<'a> Builder<'a> {
    pub(super) fn run_step(&mut self, st: &mut State, ins: &Instruction) -> Result<()> {
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
    pub(super) fn commit_container(
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
}

/// A name for a step's container, docker-style (12 hex digits).
pub(super) fn container_id(serial: u64) -> String {
    let seed = format!(
        "{}-{}-{:?}",
        std::process::id(),
        serial,
        std::time::SystemTime::now()
    );
    format!("{:x}", Sha256::digest(seed.as_bytes()))[..12].to_string()
}
