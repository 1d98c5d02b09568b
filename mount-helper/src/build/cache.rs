//! The build cache index: `ROOT/build-cache/HEX`, one small file per step key (HEX = the
//! sha256 of the key, the content the id of the step's image). Written under the store
//! lock; an entry whose image is gone is a miss, and `gc` removes it.

use std::fs;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::store::{atomic_write, hex_of, Store};

pub fn dir(store: &Store) -> PathBuf {
    store.root.join("build-cache")
}

fn entry(store: &Store, key: &str) -> PathBuf {
    dir(store).join(format!("{:x}", Sha256::digest(key.as_bytes())))
}

/// The image a step with `key` made before, if it is still in the store.
pub fn lookup(store: &Store, key: &str) -> Option<String> {
    let text = fs::read_to_string(entry(store, key)).ok()?;
    let id = text.trim();
    (hex_of(id).is_ok() && store.has_image(id)).then(|| id.to_string())
}

/// Records that the step with `key` made image `id` (the caller holds the store lock).
pub fn record(store: &Store, key: &str, id: &str) -> Result<()> {
    let d = dir(store);
    fs::create_dir_all(&d).map_err(|e| crate::err!("creating {}: {e}", d.display()))?;
    atomic_write(&entry(store, key), id.as_bytes())
}

/// Removes the entries whose image is gone (for gc, under the lock). Returns how many.
pub fn prune(store: &Store) -> Result<usize> {
    let Ok(rd) = fs::read_dir(dir(store)) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let alive = fs::read_to_string(e.path())
            .ok()
            .map(|t| t.trim().to_string())
            .is_some_and(|id| hex_of(&id).is_ok() && store.has_image(&id));
        if !alive {
            fs::remove_file(e.path())
                .map_err(|err| crate::err!("removing {}: {err}", e.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}
