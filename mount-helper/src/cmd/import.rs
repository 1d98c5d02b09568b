//! `layerctl import SOURCE IMAGE`: a rootfs directory or tar(.gz) as a one-layer image.

use std::path::PathBuf;

use crate::error::Result;
use crate::images;
use crate::output::{out, short};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The root file system: a directory, or a tar (plain or gzip)
    source: PathBuf,
    /// Name for the new image (NAME[:TAG])
    image: String,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let (r, id, diff_id) = images::import(store, &a.source, &a.image)?;
    eprintln!(
        "imported {} as {r} (layer {})",
        a.source.display(),
        short(&diff_id)
    );
    out(id);
    Ok(0)
}
