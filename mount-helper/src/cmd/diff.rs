//! `layerctl diff NAME`: a container's changes, as `docker diff` lists them.

use serde_json::json;

use crate::container;
use crate::error::Result;
use crate::output::{out, print_json};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The container's name
    name: String,
    /// Print JSON instead of lines
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let changes = container::diff(store, &a.name)?;
    if a.json {
        let v: Vec<_> = changes
            .iter()
            .map(|c| json!({"kind": c.kind.to_string(), "path": c.path}))
            .collect();
        print_json(&json!(v))?;
    } else {
        for c in changes {
            out(format!("{} {}", c.kind, c.path));
        }
    }
    Ok(0)
}
