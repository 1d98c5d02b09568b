//! `layerctl pull REF`: an image from a registry into the store, under the name `images`
//! then shows (`debian:12`, `localhost:5000/x:1`).

use crate::error::Result;
use crate::registry::client::Options;
use crate::registry::pull;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// NAME[:TAG] or NAME@sha256:DIGEST; a name without a registry host is docker.io's (library/ for one component)
    reference: String,
    /// The platform to pick from a multi-platform image, OS/ARCH[/VARIANT] [default: this host's]
    #[arg(long)]
    platform: Option<String>,
    /// Layers downloaded at once
    #[arg(long, short = 'j', default_value_t = 4)]
    jobs: usize,
    /// Refuse layers whose uncompressed tar is larger than this (bytes, or K/M/G/T)
    #[arg(long, default_value = "64G")]
    max_size: String,
    #[command(flatten)]
    reg: Options,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let o = pull::Opts {
        platform: a.platform,
        jobs: a.jobs,
        reg: a.reg,
        max: crate::load::parse_size(&a.max_size)?,
    };
    pull::pull(store, &a.reference, &o)?;
    Ok(0)
}
