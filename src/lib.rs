//! vmcheck's engine: everything that is not command-line parsing.
//!
//! The flow is one-way: images and machines (this crate's foundation) are driven by the
//! runner; the CLI in `src/cli/` only turns arguments into calls on these modules.

pub mod exit_codes;
pub mod image;
pub mod machine;
pub mod project;
pub mod shell;
pub mod signal;
