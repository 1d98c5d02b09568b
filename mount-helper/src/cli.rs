//! Command line: parsing, dispatch and output formatting. The work happens in the modules
//! named after each job (images, container, store, ...).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::container::{self, CommitOptions};
use crate::err;
use crate::error::{Context, Result};
use crate::images::{self, human};
use crate::run;
use crate::store::{self, Store};
use crate::tarfile;

#[derive(Parser)]
#[command(
    name = "layerctl",
    version,
    about = "Layer store and image helper for the layerfs union filesystem"
)]
struct Cli {
    /// Store directory [default: $LAYERFS_ROOT, else /var/lib/layerfs as root, else $XDG_DATA_HOME/layerfs]
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a rootfs directory or tar(.gz) as a one-layer image
    Import { source: PathBuf, image: String },
    /// List images
    Images {
        #[arg(long)]
        json: bool,
    },
    /// List layers with their size and how many images use them
    Layers {
        #[arg(long)]
        json: bool,
    },
    /// Show an image's or a container's record as JSON
    Inspect { what: String },
    /// Show the history of an image, newest first
    History {
        image: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a container from IMAGE (or take an existing unmounted container) and mount it on TARGET; prints the container name
    Mount {
        image: String,
        target: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        read_only: bool,
    },
    /// Run a command in a new container of IMAGE (its Entrypoint + Cmd by default) on a layerfs mount, then unmount; exits with the command's status
    #[command(after_help = run::RUNTIME_HELP)]
    Run(Box<RunArgs>),
    /// Unmount a container (by name or mount point); its changes are kept
    Umount { what: String },
    /// List containers
    Ps {
        /// Show the size of the writable layer and the virtual size
        #[arg(short, long)]
        size: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove a container and its changes
    Rm {
        name: String,
        /// Unmount it first if mounted
        #[arg(short, long)]
        force: bool,
    },
    /// List a container's changes (A added, C changed, D deleted)
    Diff {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Commit a container's changes as a new layer and image
    Commit {
        name: String,
        image: String,
        /// Comment stored in the history entry
        #[arg(short, long)]
        message: Option<String>,
        /// created_by of the history entry
        #[arg(long)]
        created_by: Option<String>,
        /// Config change: 'CMD ...', 'ENTRYPOINT ...', 'ENV K=V', 'WORKDIR /p', 'USER u'
        #[arg(short, long)]
        change: Vec<String>,
        /// Do not pause the processes using the mount while the changes are read (the
        /// image may then mix moments of a container that is writing)
        #[arg(long)]
        no_pause: bool,
    },
    /// Remove an image name (and the image once unnamed); an id with several names needs --force
    Rmi {
        image: String,
        /// Remove even while containers use it, and every name of an image given by id
        #[arg(short, long)]
        force: bool,
    },
    /// Remove images and layers nothing references
    Gc,
    /// Re-hash every layer and check every reference (exit 1 on damage)
    Fsck,
    /// Save images to a docker archive (default), an OCI layout (dir or tar) or a dir-transport directory; to stdout without -o
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        /// Output path, or - for stdout [default: stdout, unless it is a terminal]
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// [default: docker-archive]
        #[arg(long, value_enum)]
        format: Option<crate::save::Format>,
        /// Layer compression [default: gzip for the OCI formats and docker-dir, none for docker-archive]
        #[arg(long, value_enum)]
        compress: Option<crate::save::Compress>,
    },
    /// Load images from a docker archive, an OCI layout (dir or tar) or a dir-transport directory; from stdin without a path
    Load {
        /// The archive or directory, or - for stdin [default: stdin, unless it is a terminal]
        path: Option<PathBuf>,
        /// Name for the image (when the archive holds one)
        image: Option<String>,
        /// The archive, as `docker load -i` (then the first argument is the name)
        #[arg(short, long, value_name = "PATH")]
        input: Option<PathBuf>,
        /// Refuse archives whose uncompressed tar streams add up to more than this (bytes, or K/M/G/T)
        #[arg(long, default_value = "64G")]
        max_size: String,
    },
    /// Write a layer's canonical changeset tar (its sha256 is the diff_id)
    #[command(hide = true)]
    LayerTar {
        diff_id: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Name of the container (default: IMAGE-N)
    #[arg(long)]
    name: Option<String>,
    /// Commit the container afterwards as NEWIMAGE[:TAG] if the command succeeds (created_by = the command line)
    #[arg(long, value_name = "NEWIMAGE[:TAG]")]
    commit: Option<String>,
    /// With --commit: commit even when the command exits non-zero
    #[arg(long, requires = "commit")]
    commit_on_failure: bool,
    /// crun or bwrap [default: crun when installed, else bwrap]
    #[arg(long)]
    runtime: Option<String>,
    /// Remove the container afterwards (after --commit)
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (NAME=VALUE, or NAME for the caller's value)
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file of NAME=VALUE lines
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Bind a host path into the container (absolute paths; ro = read-only)
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volume: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User inside the container: NAME, UID, NAME:GROUP or UID:GID
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Replace the image's Entrypoint (and drop its Cmd); "" clears it
    #[arg(long)]
    entrypoint: Option<String>,
    /// Give the command a pseudo-terminal (when stdin is a terminal)
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep stdin attached (without -i the command's stdin is empty, as in docker run)
    #[arg(short = 'i', long)]
    interactive: bool,
    /// none (a private network namespace with loopback only) or host
    #[arg(long, default_value = "none")]
    network: String,
    /// Mount the container's root file system read-only
    #[arg(long)]
    read_only: bool,
    /// As root: auto runs the container in a user namespace on a subordinate id range (/etc/subuid); host (default) runs it as real root
    #[arg(long, value_name = "auto|host")]
    userns: Option<String>,
    image: String,
    /// The command and its arguments [default: the image's Entrypoint + Cmd]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

pub fn main() -> i32 {
    crate::interrupt::install();
    let cli = match Cli::try_parse_from(docker_style_run(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layerctl: {e}");
            1
        }
    }
}

/// `run`'s options end at IMAGE, as in `docker run`: everything after it is the command,
/// even words that look like layerctl options (`layerctl run img ls --rm`). clap would
/// still take a known option right after IMAGE, so a `--` is put there.
fn docker_style_run(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    // Options of `run` (and the global --root) that take a value as the next word.
    const LONG: &[&str] = &[
        "--root",
        "--name",
        "--commit",
        "--runtime",
        "--env",
        "--env-file",
        "--volume",
        "--workdir",
        "--user",
        "--entrypoint",
        "--network",
        "--userns",
    ];
    const SHORT: &[char] = &['e', 'v', 'w', 'u'];
    let mut i = 1;
    // Global options before the subcommand.
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--root" {
            i += 2;
        } else if a.starts_with("--root=") {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).map(|a| a != "run").unwrap_or(true) {
        return args;
    }
    i += 1;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        if a == "--" {
            return args;
        }
        if let Some(long) = a.strip_prefix("--") {
            let takes = !long.contains('=') && LONG.contains(&a.as_str());
            i += if takes { 2 } else { 1 };
        } else if a.len() > 1 && a.starts_with('-') {
            // A cluster such as -it or -eK=V: a value option takes the rest or the next word.
            let rest: Vec<char> = a[1..].chars().collect();
            let mut skip = 1;
            for (j, c) in rest.iter().enumerate() {
                if SHORT.contains(c) {
                    if j + 1 == rest.len() {
                        skip = 2;
                    }
                    break;
                }
            }
            i += skip;
        } else {
            // IMAGE.
            if i + 1 < args.len() && args[i + 1] != "--" {
                args.insert(i + 1, "--".into());
            }
            return args;
        }
    }
    args
}

fn out(s: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    // A closed pipe (`layerctl images | head`) is not an error worth reporting.
    let _ = writeln!(o, "{}", s.as_ref());
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Prints rows as aligned columns.
fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("   ")
    };
    out(line(head.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        out(line(r));
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    out(serde_json::to_string_pretty(v).map_err(|e| err!("encoding JSON: {e}"))?);
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    let store = Store::open(cli.root.unwrap_or_else(store::default_root))?;
    // This process's temp entries (store tmp/ and half-written records) go if it is
    // interrupted; those of a killed process are cleared by the next writer's lock.
    let pid = std::process::id();
    let _tmp = crate::interrupt::register_prefixed(&store.root.join("tmp"), &format!("{pid}-"));
    let _rec =
        crate::interrupt::register_prefixed(&store.root.join("images"), &format!(".tmp-{pid}-"));
    let _top = crate::interrupt::register_prefixed(&store.root, &format!(".tmp-{pid}-"));
    match cli.cmd {
        Cmd::Import { source, image } => {
            let (r, id, diff_id) = images::import(&store, &source, &image)?;
            eprintln!(
                "imported {} as {r} (layer {})",
                source.display(),
                short(&diff_id)
            );
            out(id);
        }
        Cmd::Images { json } => {
            let refs = store.refs()?;
            let mut rows = Vec::new();
            let mut js = Vec::new();
            for (r, id) in &refs {
                let (name, tag) = store::split_ref(r);
                let cfg = store.read_image(id)?;
                let size: u64 = cfg
                    .rootfs
                    .diff_ids
                    .iter()
                    .map(|d| store.layer_record(d).map(|l| l.size).unwrap_or(0))
                    .sum();
                let created = cfg.created.clone().unwrap_or_default();
                js.push(json!({"name": name, "tag": tag, "id": id, "created": created, "size": size, "layers": cfg.rootfs.diff_ids.len()}));
                rows.push(vec![name, tag, short(id).to_string(), created, human(size)]);
            }
            if json {
                print_json(&json!(js))?;
            } else {
                table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows);
            }
        }
        Cmd::Layers { json } => {
            let mut uses = std::collections::BTreeMap::<String, usize>::new();
            for id in store.image_ids()? {
                for d in store.read_image(&id)?.rootfs.diff_ids {
                    *uses.entry(d).or_default() += 1;
                }
            }
            let mut rows = Vec::new();
            let mut js = Vec::new();
            for l in store.layer_ids()? {
                let size = store.layer_record(&l)?.size;
                let n = uses.get(&l).copied().unwrap_or(0);
                js.push(json!({"diff_id": l, "size": size, "images": n}));
                rows.push(vec![l.clone(), human(size), n.to_string()]);
            }
            if json {
                print_json(&json!(js))?;
            } else {
                table(&["DIFF ID", "SIZE", "IMAGES"], rows);
            }
        }
        Cmd::Inspect { what } => {
            if let Ok(c) = container::find(&store, &what) {
                let mut v = serde_json::to_value(&c).map_err(|e| err!("encoding JSON: {e}"))?;
                v["state"] = json!(container::state(&c));
                v["upper_dir"] = json!(container::upper_dir(&store, &c.name));
                print_json(&json!({"container": v}))?;
            } else {
                let id = store.resolve_image(&what).map_err(|_| err!("no such image or container: {what} (see `layerctl images` and `layerctl ps`)"))?;
                let cfg = store.read_image(&id)?;
                let names: Vec<String> = store
                    .refs()?
                    .into_iter()
                    .filter(|(_, v)| *v == id)
                    .map(|(k, _)| k)
                    .collect();
                print_json(&json!({"image": {"id": id, "names": names, "config": cfg}}))?;
            }
        }
        Cmd::History { image, json } => {
            let id = store.resolve_image(&image)?;
            let cfg = store.read_image(&id)?;
            let mut rows = Vec::new();
            let mut js = Vec::new();
            for (h, layer) in cfg.layered_history().into_iter().rev() {
                let size = layer
                    .as_ref()
                    .map(|d| store.layer_record(d).map(|r| r.size).unwrap_or(0))
                    .unwrap_or(0);
                js.push(json!({"layer": layer, "created": h.created, "created_by": h.created_by, "comment": h.comment, "empty_layer": h.empty_layer, "size": size}));
                rows.push(vec![
                    layer
                        .as_deref()
                        .map(|l| short(l).to_string())
                        .unwrap_or_else(|| "<empty>".to_string()),
                    h.created.unwrap_or_default(),
                    h.created_by.unwrap_or_default(),
                    human(size),
                    h.comment.unwrap_or_default(),
                ]);
            }
            if json {
                print_json(&json!(js))?;
            } else {
                table(&["LAYER", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows);
            }
        }
        Cmd::Mount {
            image,
            target,
            name,
            read_only,
        } => {
            let n = container::mount(&store, &image, &target, name.as_deref(), read_only)?;
            out(n);
        }
        Cmd::Run(a) => {
            let runtime = a.runtime.as_deref().map(run::Runtime::parse).transpose()?;
            let opts = run::RunOptions {
                name: a.name.as_deref(),
                commit: a.commit.as_deref(),
                commit_on_failure: a.commit_on_failure,
                runtime,
                remove: a.rm,
                env: &a.env,
                env_files: &a.env_file,
                volumes: &a.volume,
                workdir: a.workdir.as_deref(),
                user: a.user.as_deref(),
                entrypoint: a.entrypoint.as_deref(),
                tty: a.tty,
                interactive: a.interactive,
                network: run::Network::parse(&a.network)?,
                read_only: a.read_only,
                userns: run::UserNs::parse(a.userns.as_deref().unwrap_or(""))?,
            };
            return run::run(&store, &a.image, &a.command, &opts);
        }
        Cmd::Umount { what } => {
            out(container::umount(&store, &what)?);
        }
        Cmd::Ps { size, json } => {
            let mut rows = Vec::new();
            let mut js = Vec::new();
            for n in store.container_names()? {
                let c = match store.read_container(&n) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("layerctl: {e}");
                        continue;
                    }
                };
                let st = container::state(&c);
                let mp = c
                    .mountpoint
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let mut row = vec![
                    c.name.clone(),
                    c.image_ref.clone(),
                    short(&c.image_id).to_string(),
                    c.created.clone(),
                    st.clone(),
                    mp.clone(),
                ];
                let mut j = json!({"name": c.name, "image": c.image_ref, "image_id": c.image_id, "created": c.created, "state": st, "mountpoint": c.mountpoint});
                if size {
                    let rw = container::tree_size(&container::upper_dir(&store, &c.name));
                    let base: u64 = c
                        .image_config
                        .rootfs
                        .diff_ids
                        .iter()
                        .map(|d| store.layer_record(d).map(|r| r.size).unwrap_or(0))
                        .sum();
                    row.push(format!("{} (virtual {})", human(rw), human(rw + base)));
                    j["size_rw"] = json!(rw);
                    j["size_virtual"] = json!(rw + base);
                }
                rows.push(row);
                js.push(j);
            }
            if json {
                print_json(&json!(js))?;
            } else if size {
                table(
                    &[
                        "NAME",
                        "IMAGE",
                        "IMAGE ID",
                        "CREATED",
                        "STATE",
                        "MOUNTPOINT",
                        "SIZE",
                    ],
                    rows,
                );
            } else {
                table(
                    &[
                        "NAME",
                        "IMAGE",
                        "IMAGE ID",
                        "CREATED",
                        "STATE",
                        "MOUNTPOINT",
                    ],
                    rows,
                );
            }
        }
        Cmd::Rm { name, force } => {
            container::rm(&store, &name, force)?;
            out(name);
        }
        Cmd::Diff { name, json } => {
            let changes = container::diff(&store, &name)?;
            if json {
                let v: Vec<_> = changes
                    .iter()
                    .map(|c| json!({"kind": c.kind.to_string(), "path": c.path}))
                    .collect();
                print_json(&json!(v))?;
            } else {
                for c in changes {
                    out(format!("{} {}", c.kind, c.path));
                }
            }
        }
        Cmd::Commit {
            name,
            image,
            message,
            created_by,
            change,
            no_pause,
        } => {
            let opts = CommitOptions {
                message: message.as_deref(),
                created_by: created_by.as_deref(),
                changes: &change,
            };
            let (r, id, diff_id, fresh) =
                container::commit_paused(&store, &name, &image, &opts, !no_pause)?;
            eprintln!(
                "committed {name} as {r} (layer {}{})",
                short(&diff_id),
                if fresh { "" } else { ", already stored" }
            );
            out(id);
        }
        Cmd::Rmi { image, force } => {
            for l in images::rmi(&store, &image, force)? {
                out(l);
            }
        }
        Cmd::Gc => {
            for l in images::gc(&store)? {
                out(l);
            }
        }
        Cmd::Fsck => {
            let (bad, notes) = images::fsck(&store)?;
            for n in notes {
                out(n);
            }
            for b in &bad {
                eprintln!("layerctl: fsck: {b}");
            }
            if !bad.is_empty() {
                return Ok(1);
            }
            out("store is clean");
        }
        Cmd::Save {
            images,
            output,
            format,
            compress,
        } => {
            use std::io::IsTerminal;
            let (target, format) =
                crate::save::target(output.as_deref(), format, std::io::stdout().is_terminal())?;
            let lines = crate::save::save(&store, &images, &target, format, compress)?;
            match &target {
                crate::save::Target::Path(p) => {
                    eprintln!("saved {} image(s) to {}", lines.len(), p.display());
                    for l in lines {
                        out(l);
                    }
                }
                // stdout carries the archive: the summary goes to stderr.
                crate::save::Target::Stdout => {
                    for l in lines {
                        eprintln!("saved {l}");
                    }
                }
            }
        }
        Cmd::Load {
            path,
            image,
            input,
            max_size,
        } => {
            use std::io::IsTerminal;
            let max = crate::load::parse_size(&max_size)?;
            // With -i the only positional argument is the name.
            let (path, image) = match input {
                Some(i) => {
                    if image.is_some() {
                        return Err(err!(
                            "give the archive once: `layerctl load -i PATH [NAME]` or `layerctl load PATH [NAME]`"
                        ));
                    }
                    (Some(i), path.map(|p| p.to_string_lossy().into_owned()))
                }
                None => (path, image),
            };
            let loaded = match path {
                Some(p) if p != std::path::Path::new("-") => {
                    crate::load::load(&store, &p, image.as_deref(), max)?
                }
                None if std::io::stdin().is_terminal() => {
                    return Err(err!(
                        "no archive given and stdin is a terminal: `layerctl load -i img.tar`, or pipe one in (`layerctl load < img.tar`)"
                    ))
                }
                _ => crate::load::load_stdin(&store, image.as_deref(), max)?,
            };
            for (r, id) in loaded {
                eprintln!("loaded {r}");
                out(format!("{r} {id}"));
            }
        }
        Cmd::LayerTar { diff_id, output } => {
            store::hex_of(&diff_id)?;
            if !store.has_layer(&diff_id) {
                return Err(err!("no such layer: {diff_id} (see `layerctl layers`)"));
            }
            let dir = store.layer_dir(&diff_id)?;
            match output {
                Some(p) => {
                    let f =
                        std::fs::File::create(&p).ctx(|| format!("creating {}", p.display()))?;
                    tarfile::write_tar(&dir, std::io::BufWriter::new(f), &|| {})?;
                }
                None => {
                    tarfile::write_tar(&dir, std::io::stdout().lock(), &|| {})?;
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::docker_style_run;

    fn dsr(args: &[&str]) -> Vec<String> {
        docker_style_run(args.iter().map(|a| a.into()).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn run_options_end_at_the_image() {
        assert_eq!(
            dsr(&["l", "run", "--rm", "-e", "A=1", "-it", "img", "ls", "--rm"]),
            ["l", "run", "--rm", "-e", "A=1", "-it", "img", "--", "ls", "--rm"]
        );
        assert_eq!(
            dsr(&["l", "--root", "/s", "run", "-eA", "--name=x", "-v", "/a:/b", "img", "--x"]),
            ["l", "--root", "/s", "run", "-eA", "--name=x", "-v", "/a:/b", "img", "--", "--x"]
        );
        assert_eq!(
            dsr(&["l", "run", "img", "--", "a"]),
            ["l", "run", "img", "--", "a"]
        );
        assert_eq!(dsr(&["l", "run", "img"]), ["l", "run", "img"]);
        assert_eq!(dsr(&["l", "images", "x", "y"]), ["l", "images", "x", "y"]);
    }
}
