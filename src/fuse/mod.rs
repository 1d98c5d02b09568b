//! The FUSE side of the daemon: the two transports side by side (`fs`, fuser's session
//! over `/dev/fuse`; `ring`, FUSE over io_uring), both answering with `ops`, which turns a
//! request into calls on the overlay. Passthrough and id mapping live at this boundary.

pub mod dispatch;
pub mod fs;
pub mod idmap;
pub mod ops;
pub mod passthrough;
pub mod ring;
pub mod wire;
