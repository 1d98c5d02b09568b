//! `layerctl run IMAGE [COMMAND...]`: a command in a new container on a layerfs mount, as
//! `docker run`; the container work itself is in `crate::run`.

use std::path::PathBuf;

use crate::error::Result;
use crate::run::{self, Network, RunOptions, Runtime, UserNs};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
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
    /// The image (NAME[:TAG] or id)
    image: String,
    /// The command and its arguments [default: the image's Entrypoint + Cmd]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let runtime = a.runtime.as_deref().map(Runtime::parse).transpose()?;
    let opts = RunOptions {
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
        network: Network::parse(&a.network)?,
        read_only: a.read_only,
        userns: UserNs::parse(a.userns.as_deref().unwrap_or(""))?,
        ..RunOptions::default()
    };
    run::run(store, &a.image, &a.command, &opts)
}

/// `run`'s options end at IMAGE, as in `docker run`: everything after it is the command,
/// even words that look like layerctl options (`layerctl run img ls --rm`). clap would
/// still take a known option right after IMAGE, so a `--` is put there.
pub fn docker_style_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
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

#[cfg(test)]
mod tests {
    use super::docker_style_args;

    fn dsr(args: &[&str]) -> Vec<String> {
        docker_style_args(args.iter().map(|a| a.into()).collect())
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
