//! `layerctl rm NAME`: remove a container and its changes.

use crate::container;
use crate::error::Result;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The container's name
    name: String,
    /// Unmount it first if mounted
    #[arg(short, long)]
    force: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    container::rm(store, &a.name, a.force)?;
    out(a.name);
    Ok(0)
}
