//! `layerctl load [PATH] [NAME]`: images from a docker archive, an OCI layout or a
//! dir-transport directory, or from stdin.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::err;
use crate::error::Result;
use crate::load;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let max = load::parse_size(&a.max_size)?;
    // With -i the only positional argument is the name.
    let (path, image) = match a.input {
        Some(i) => {
            if a.image.is_some() {
                return Err(err!(
                    "give the archive once: `layerctl load -i PATH [NAME]` or `layerctl load PATH [NAME]`"
                ));
            }
            (Some(i), a.path.map(|p| p.to_string_lossy().into_owned()))
        }
        None => (a.path, a.image),
    };
    let loaded = match path {
        Some(p) if p != Path::new("-") => load::load(store, &p, image.as_deref(), max)?,
        None if std::io::stdin().is_terminal() => {
            return Err(err!(
                "no archive given and stdin is a terminal: `layerctl load -i img.tar`, or pipe one in (`layerctl load < img.tar`)"
            ))
        }
        _ => load::load_stdin(store, image.as_deref(), max)?,
    };
    for (r, id) in loaded {
        eprintln!("loaded {r}");
        out(format!("{r} {id}"));
    }
    Ok(0)
}
