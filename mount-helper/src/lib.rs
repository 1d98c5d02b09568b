//! layerctl: a content-addressed layer store for layerfs. Imports root filesystems as
//! layers, mounts an image's layer chain with the layerfs daemon, and commits a
//! container's upper directory back as a new layer and image.

pub mod error;

pub mod build;
pub mod changeset;
pub mod cli;
pub mod cmd;
pub mod container;
pub mod copytree;
pub mod encoding;
pub mod explore;
pub mod extract;
pub mod image;
pub mod images;
pub mod interrupt;
pub mod load;
pub mod lowerview;
pub mod mount;
pub mod oci;
pub mod output;
pub mod pause;
pub mod progress;
pub mod registry;
pub mod run;
pub mod runtime;
pub mod save;
pub mod store;
pub mod sys;
pub mod tarfile;
