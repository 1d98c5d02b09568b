//! `layerctl rmi IMAGE`: remove an image name, and the image once nothing names it.

use crate::error::Result;
use crate::images;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The image (NAME[:TAG] or id)
    image: String,
    /// Remove even while containers use it, and every name of an image given by id
    #[arg(short, long)]
    force: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    for l in images::rmi(store, &a.image, a.force)? {
        out(l);
    }
    Ok(0)
}
