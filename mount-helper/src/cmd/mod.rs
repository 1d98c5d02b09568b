//! One module per command: each declares its arguments (`Args`, a clap derive) and runs
//! them against the store (`run`), printing through `crate::output`. The work itself lives
//! in the modules named after each job (images, container, store, save, load, run, ...).

pub mod build;
pub mod commit;
pub mod diff;
pub mod explore;
pub mod fsck;
pub mod gc;
pub mod history;
pub mod images;
pub mod import;
pub mod inspect;
pub mod layer_tar;
pub mod layers;
pub mod load;
pub mod login;
pub mod logout;
pub mod mount;
pub mod ps;
pub mod pull;
pub mod push;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod save;
pub mod umount;
