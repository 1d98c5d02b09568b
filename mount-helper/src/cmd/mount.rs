//! `layerctl mount IMAGE TARGET`: a new (or an existing, unmounted) container mounted.

use std::path::PathBuf;

use crate::container;
use crate::error::Result;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The image (NAME[:TAG] or id), or an unmounted container's name
    image: String,
    /// The mount point (an existing directory)
    target: PathBuf,
    /// Name of the new container [default: IMAGE-N]
    #[arg(long)]
    name: Option<String>,
    /// Mount without a writable layer
    #[arg(long)]
    read_only: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let n = container::mount(store, &a.image, &a.target, a.name.as_deref(), a.read_only)?;
    out(n);
    Ok(0)
}
