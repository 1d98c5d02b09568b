//! `layerctl ps`: the containers, their state and mount point, and with -s their size.

use serde_json::json;

use crate::container;
use crate::error::Result;
use crate::output::human;
use crate::output::{print_json, short, table};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Show the size of the writable layer and the virtual size
    #[arg(short, long)]
    size: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for n in store.container_names()? {
        let c = match store.read_container(&n) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("layerctl: {e}");
                continue;
            }
        };
        let st = container::state(&c);
        let mp = c
            .mountpoint
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut row = vec![
            c.name.clone(),
            c.image_ref.clone(),
            short(&c.image_id).to_string(),
            c.created.clone(),
            st.clone(),
            mp,
        ];
        let mut j = json!({"name": c.name, "image": c.image_ref, "image_id": c.image_id, "created": c.created, "state": st, "mountpoint": c.mountpoint});
        if a.size {
            let rw = container::tree_size(&container::upper_dir(store, &c.name));
            let base: u64 = c
                .image_config
                .rootfs
                .diff_ids
                .iter()
                .map(|d| store.layer_record(d).map(|r| r.size).unwrap_or(0))
                .sum();
            row.push(format!("{} (virtual {})", human(rw), human(rw + base)));
            j["size_rw"] = json!(rw);
            j["size_virtual"] = json!(rw + base);
        }
        rows.push(row);
        js.push(j);
    }
    let mut head = vec![
        "NAME",
        "IMAGE",
        "IMAGE ID",
        "CREATED",
        "STATE",
        "MOUNTPOINT",
    ];
    if a.size {
        head.push("SIZE");
    }
    if a.json {
        print_json(&json!(js))?;
    } else {
        table(&head, rows);
    }
    Ok(0)
}
