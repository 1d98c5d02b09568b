//! `layerctl push IMAGE [DEST]`: an image from the store to a registry.

use crate::error::Result;
use crate::registry::client::Options;
use crate::registry::push;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The image (NAME[:TAG] or id)
    image: String,
    /// Where to push it, [HOST[:PORT]/]NAME[:TAG] [default: IMAGE's own name]
    dest: Option<String>,
    /// Layer compression (deterministic: pushing the same image again gives the same digests)
    #[arg(long, value_enum, default_value = "gzip")]
    compression: push::Compression,
    #[command(flatten)]
    reg: Options,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let o = push::Opts {
        compression: a.compression,
        reg: a.reg,
    };
    push::push(store, &a.image, a.dest.as_deref(), &o)?;
    Ok(0)
}
