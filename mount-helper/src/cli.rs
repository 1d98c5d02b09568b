//! Command line: the clap definitions of the commands and dispatch, nothing else. Each
//! command's arguments and its run live in `crate::cmd::<verb>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::error::Result;
use crate::store::{self, Store};

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
    Import(cmd::import::Args),
    /// List images
    Images(cmd::images::Args),
    /// List layers with their size and how many images use them
    Layers(cmd::layers::Args),
    /// Show an image's or a container's record as JSON
    Inspect(cmd::inspect::Args),
    /// Show the history of an image, newest first
    History(cmd::history::Args),
    /// Create a container from IMAGE (or take an existing unmounted container) and mount it on TARGET; prints the container name
    Mount(cmd::mount::Args),
    /// Run a command in a new container of IMAGE (its Entrypoint + Cmd by default) on a layerfs mount, then unmount; exits with the command's status
    #[command(after_help = crate::run::RUNTIME_HELP)]
    Run(Box<cmd::run::Args>),
    /// Build an image from a Containerfile, step by step with docker's build cache
    Build(Box<cmd::build::Args>),
    /// Unmount a container (by name or mount point); its changes are kept
    Umount(cmd::umount::Args),
    /// List containers
    Ps(cmd::ps::Args),
    /// Remove a container and its changes
    Rm(cmd::rm::Args),
    /// List a container's changes (A added, C changed, D deleted)
    Diff(cmd::diff::Args),
    /// Commit a container's changes as a new layer and image
    Commit(cmd::commit::Args),
    /// Explore an image's layers: what each added, changed and removed, and the space wasted (a terminal UI; --ci for a report)
    Explore(cmd::explore::Args),
    /// Remove an image name (and the image once unnamed); an id with several names needs --force
    Rmi(cmd::rmi::Args),
    /// Remove images and layers nothing references
    Gc(cmd::gc::Args),
    /// Re-hash every layer and check every reference (exit 1 on damage)
    Fsck(cmd::fsck::Args),
    /// Save images to a docker archive (default), an OCI layout (dir or tar) or a dir-transport directory; to stdout without -o
    Save(cmd::save::Args),
    /// Load images from a docker archive, an OCI layout (dir or tar) or a dir-transport directory; from stdin without a path
    Load(cmd::load::Args),
    /// Pull an image from a registry (resumable, layers in parallel)
    Pull(cmd::pull::Args),
    /// Push an image to a registry (layers the registry has are not sent)
    Push(cmd::push::Args),
    /// Log in to a registry (credentials go to podman's auth.json)
    Login(cmd::login::Args),
    /// Remove a registry's credentials from auth.json
    Logout(cmd::logout::Args),
    /// Write a layer's canonical changeset tar (its sha256 is the diff_id)
    #[command(hide = true)]
    LayerTar(cmd::layer_tar::Args),
}

pub fn main() -> i32 {
    crate::interrupt::install();
    let args = cmd::run::docker_style_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layerctl: {e}");
            1
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    let store = Store::open(cli.root.unwrap_or_else(store::default_root))?;
    // This process's temp entries (store tmp/ and half-written records) go if it is
    // interrupted; those of a killed process are cleared by the next writer's lock.
    let pid = std::process::id();
    let _tmp = crate::interrupt::register_prefixed(&store.root.join("tmp"), &format!("{pid}-"));
    let _rec =
        crate::interrupt::register_prefixed(&store.root.join("images"), &format!(".tmp-{pid}-"));
    let _top = crate::interrupt::register_prefixed(&store.root, &format!(".tmp-{pid}-"));
    let s = &store;
    match cli.cmd {
        Cmd::Import(a) => cmd::import::run(s, a),
        Cmd::Images(a) => cmd::images::run(s, a),
        Cmd::Layers(a) => cmd::layers::run(s, a),
        Cmd::Inspect(a) => cmd::inspect::run(s, a),
        Cmd::History(a) => cmd::history::run(s, a),
        Cmd::Mount(a) => cmd::mount::run(s, a),
        Cmd::Run(a) => cmd::run::run(s, *a),
        Cmd::Build(a) => cmd::build::run(s, *a),
        Cmd::Umount(a) => cmd::umount::run(s, a),
        Cmd::Ps(a) => cmd::ps::run(s, a),
        Cmd::Rm(a) => cmd::rm::run(s, a),
        Cmd::Diff(a) => cmd::diff::run(s, a),
        Cmd::Commit(a) => cmd::commit::run(s, a),
        Cmd::Explore(a) => cmd::explore::run(s, a),
        Cmd::Rmi(a) => cmd::rmi::run(s, a),
        Cmd::Gc(a) => cmd::gc::run(s, a),
        Cmd::Fsck(a) => cmd::fsck::run(s, a),
        Cmd::Save(a) => cmd::save::run(s, a),
        Cmd::Load(a) => cmd::load::run(s, a),
        Cmd::Pull(a) => cmd::pull::run(s, a),
        Cmd::Push(a) => cmd::push::run(s, a),
        Cmd::Login(a) => cmd::login::run(s, a),
        Cmd::Logout(a) => cmd::logout::run(s, a),
        Cmd::LayerTar(a) => cmd::layer_tar::run(s, a),
    }
}
