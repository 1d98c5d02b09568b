//! `layerctl layers`: every stored layer, its size and how many images use it.

use serde_json::json;

use crate::error::Result;
use crate::output::human;
use crate::output::{print_json, table};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let mut uses = std::collections::BTreeMap::<String, usize>::new();
    for id in store.image_ids()? {
        for d in store.read_image(&id)?.rootfs.diff_ids {
            *uses.entry(d).or_default() += 1;
        }
    }
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for l in store.layer_ids()? {
        let size = store.layer_record(&l)?.size;
        let n = uses.get(&l).copied().unwrap_or(0);
        js.push(json!({"diff_id": l, "size": size, "images": n}));
        rows.push(vec![l.clone(), human(size), n.to_string()]);
    }
    if a.json {
        print_json(&json!(js))?;
    } else {
        table(&["DIFF ID", "SIZE", "IMAGES"], rows);
    }
    Ok(0)
}
