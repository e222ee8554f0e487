//! The command line: argument definitions (`args`), the one user-facing error type and its
//! exit codes (`errors`), and the dispatch from commands to the engine (`dispatch`).

mod args;
mod dispatch;
mod errors;
mod run;

pub use dispatch::main;
