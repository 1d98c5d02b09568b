//! The image's efficiency, computed as dive computes it (wagoodman/dive,
//! `dive/filetree/efficiency.go` and `dive/image/analysis.go`), from the sightings
//! `model::analyze` collects.
//!
//! dive's definition, which this follows:
//! - a **sighting** is a leaf of one layer's own tree (an entry with nothing below it in
//!   that layer: a file, a symlink, an empty directory, a whiteout); a directory that holds
//!   entries in the layer is not one;
//! - its size is the tar header's size (regular files; 0 for directories, symlinks, hard
//!   links), except a **whiteout**: 0 when it deletes a file, and the summed size of
//!   everything under it in the layers below when it deletes a directory;
//! - per path: `cumulative` = the sum of its sightings' sizes, `min` = the smallest;
//! - **score** = sum over all paths of `min` / sum over all paths of `cumulative` (1 when
//!   that sum is 0);
//! - a path sighted in two or more layers is **inefficient**, and **wasted bytes** = the
//!   sum of those paths' `cumulative` sizes (every copy, the first included: dive's
//!   number, which its `highestWastedBytes` rule checks);
//! - **user wasted percent** = wasted bytes / the size of every layer but the first.
//!
//! So deleting a file wastes its size; overwriting it wastes both copies; deleting a whole
//! directory wastes nothing but adds its size to both sums (dive records it under the
//! directory's path only). One place differs from dive: dive skips `.wh..wh..opq`
//! markers (it never sees an opaque directory hide anything), so here an opaque directory
//! `D` is counted as its whiteout encoding would be, `.wh.D` next to `D` in one layer (as
//! the OCI spec allows): one more sighting of `D` sized like the whiteout of a directory.
//! The same image then scores the same in either encoding.

use super::model::{NodeId, Sighting};

/// One path seen in more than one layer.
#[derive(Clone, Debug)]
pub struct Inefficiency {
    pub node: NodeId,
    /// Sum of its sizes over its sightings: what dive lists as wasted space.
    pub cumulative: u64,
    /// Its smallest size: what a rebuild that wrote it once would keep.
    pub min: u64,
    /// The layer of each sighting, oldest first (a layer twice when it both deletes and
    /// re-creates the path).
    pub layers: Vec<u32>,
    pub sizes: Vec<u64>,
}

pub struct Efficiency {
    pub score: f64,
    pub wasted_bytes: u64,
    pub min_total: u64,
    pub cumulative_total: u64,
    /// Largest cumulative size first (dive lists them so).
    pub inefficient: Vec<Inefficiency>,
}

pub fn compute(mut sightings: Vec<Sighting>) -> Efficiency {
    sightings.sort_by_key(|s| (s.node, s.layer));
    let mut min_total = 0u64;
    let mut cumulative_total = 0u64;
    let mut inefficient = Vec::new();
    let mut i = 0;
    while i < sightings.len() {
        let node = sightings[i].node;
        let mut j = i;
        let mut cum = 0u64;
        let mut min = u64::MAX;
        while j < sightings.len() && sightings[j].node == node {
            cum = cum.saturating_add(sightings[j].size);
            min = min.min(sightings[j].size);
            j += 1;
        }
        min_total = min_total.saturating_add(min);
        cumulative_total = cumulative_total.saturating_add(cum);
        if j - i >= 2 {
            inefficient.push(Inefficiency {
                node,
                cumulative: cum,
                min,
                layers: sightings[i..j].iter().map(|s| s.layer).collect(),
                sizes: sightings[i..j].iter().map(|s| s.size).collect(),
            });
        }
        i = j;
    }
    let score = if cumulative_total == 0 {
        1.0
    } else {
        min_total as f64 / cumulative_total as f64
    };
    let wasted_bytes = inefficient
        .iter()
        .fold(0u64, |a, x| a.saturating_add(x.cumulative));
    inefficient.sort_by_key(|x| std::cmp::Reverse(x.cumulative));
    Efficiency {
        score,
        wasted_bytes,
        min_total,
        cumulative_total,
        inefficient,
    }
}

/// dive's `WastedUserPercent`: wasted bytes over the bytes of every layer but the first
/// (`None` when there are none, where dive divides by zero).
pub fn user_wasted_fraction(wasted: u64, layer_sizes: &[u64]) -> Option<f64> {
    let user: u64 = layer_sizes.iter().skip(1).sum();
    (user > 0).then(|| wasted as f64 / user as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(node: NodeId, layer: u32, size: u64) -> Sighting {
        Sighting { node, layer, size }
    }

    /// dive's own test case (efficiency_test.go): nginx.conf 2000 then 5000, public 3000,
    /// athing 10000, and a whiteout of /etc/nginx whose lower node dive's test builds
    /// without a directory flag, so it counts 0.
    #[test]
    fn dive_reference_case() {
        let e = compute(vec![
            s(1, 0, 2000),
            s(2, 0, 3000),
            s(1, 1, 5000),
            s(3, 1, 10000),
            s(4, 2, 0),
        ]);
        assert_eq!(e.score, 0.75);
        assert_eq!(e.inefficient.len(), 1);
        assert_eq!(e.inefficient[0].node, 1);
        assert_eq!(e.inefficient[0].cumulative, 7000);
        assert_eq!(e.inefficient[0].layers, vec![0, 1]);
        assert_eq!(e.wasted_bytes, 7000);
    }

    #[test]
    fn empty_image_scores_one() {
        let e = compute(vec![s(1, 0, 0)]);
        assert_eq!(e.score, 1.0);
        assert!(e.inefficient.is_empty());
        assert_eq!(user_wasted_fraction(0, &[5]), None);
    }
}
