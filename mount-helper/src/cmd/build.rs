//! `layerctl build [OPTIONS] CONTEXT`: a Containerfile into an image, with docker's
//! classic builder output and build cache; the work is in `crate::build`.

use std::path::PathBuf;

use crate::build::{self, BuildOptions};
use crate::err;
use crate::error::Result;
use crate::run::{Network, Runtime};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The Containerfile [default: CONTEXT/Containerfile, else CONTEXT/Dockerfile]; - reads stdin
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name the result NAME[:TAG] (repeatable)
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tag: Vec<String>,
    /// Set a build argument (NAME=VALUE, or NAME for the caller's value)
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_arg: Vec<String>,
    /// Build up to this stage (FROM ... AS STAGE)
    #[arg(long)]
    target: Option<String>,
    /// Rebuild every step (the cache is not read; it is still written)
    #[arg(long)]
    no_cache: bool,
    /// never (the only policy: layerctl never pulls; images come from import or load)
    #[arg(long, value_name = "never", default_value = "never", num_args = 0..=1, default_missing_value = "never")]
    pull: String,
    /// Clamp every created time and file time in new layers to SECONDS since the epoch
    /// (reproducible builds) [default: $SOURCE_DATE_EPOCH when set]
    #[arg(long, value_name = "SECONDS")]
    timestamp: Option<i64>,
    /// Print only the final image id
    #[arg(short, long)]
    quiet: bool,
    /// RUN steps' network: none (default: loopback only) or host
    #[arg(long, default_value = "none")]
    network: String,
    /// Keep the container of a failed RUN (for `layerctl diff`)
    #[arg(long)]
    keep_failed: bool,
    /// crun or bwrap [default: crun when installed, else bwrap]
    #[arg(long)]
    runtime: Option<String>,
    /// The build context directory
    context: PathBuf,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    if a.pull != "never" && a.pull != "false" {
        return Err(err!(
            "--pull={}: layerctl never pulls; give --pull=never and import or load the base image",
            a.pull
        ));
    }
    let timestamp = match a.timestamp {
        Some(t) => Some(t),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => Some(v.trim().parse::<i64>().map_err(|_| {
                err!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since the epoch")
            })?),
            _ => None,
        },
    };
    if timestamp.is_some_and(|t| t < 0) {
        return Err(err!(
            "--timestamp must be 0 or more seconds since the epoch"
        ));
    }
    let opts = BuildOptions {
        context: a.context,
        file: a.file,
        tags: a.tag,
        build_args: a.build_arg,
        target: a.target,
        no_cache: a.no_cache,
        timestamp,
        quiet: a.quiet,
        network: Network::parse(&a.network)?,
        keep_failed: a.keep_failed,
        runtime: a.runtime.as_deref().map(Runtime::parse).transpose()?,
    };
    build::build(store, &opts)?;
    Ok(0)
}
