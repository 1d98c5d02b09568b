//! `layerctl images`: the named images, with their size (the sum of their layers).

use serde_json::json;

use crate::error::Result;
use crate::output::human;
use crate::output::{print_json, short, table};
use crate::store::{self, Store};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Also list unnamed images (a build's intermediate steps) as <none>
    #[arg(short, long)]
    all: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let refs = store.refs()?;
    let mut rows = Vec::new();
    let mut js = Vec::new();
    let mut listed: Vec<(String, String)> =
        refs.iter().map(|(r, id)| (r.clone(), id.clone())).collect();
    if a.all {
        for id in store.image_ids()? {
            if !refs.values().any(|v| *v == id) {
                listed.push(("<none>:<none>".to_string(), id));
            }
        }
    }
    for (r, id) in &listed {
        let (name, tag) = store::split_ref(r);
        let cfg = store.read_image(id)?;
        let size: u64 = cfg
            .rootfs
            .diff_ids
            .iter()
            .map(|d| store.layer_record(d).map(|l| l.size).unwrap_or(0))
            .sum();
        let created = cfg.created.clone().unwrap_or_default();
        js.push(json!({"name": name, "tag": tag, "id": id, "created": created, "size": size, "layers": cfg.rootfs.diff_ids.len()}));
        rows.push(vec![name, tag, short(id).to_string(), created, human(size)]);
    }
    if a.json {
        print_json(&json!(js))?;
    } else {
        table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows);
    }
    Ok(0)
}
