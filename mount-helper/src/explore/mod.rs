//! `layerctl explore`: what each layer of an image added, changed and removed, the merged
//! tree up to any layer, and how much space the layering wastes, scored as dive scores it.
//! `model` holds the data, `read` and `source` fill it from the store or an archive,
//! `efficiency` scores it, `report` prints it for CI and scripts, `tui` shows it.

pub mod efficiency;
pub mod model;
pub mod read;
pub mod report;
pub mod source;
pub mod tui;
