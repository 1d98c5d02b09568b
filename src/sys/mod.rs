//! Raw syscalls. Every `unsafe` block of the crate lives under this module,
//! each with a `// SAFETY:` line.

pub mod process;
