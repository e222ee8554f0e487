//! vmcheck's engine: everything that is not command-line parsing.
//!
//! The flow is one-way: images and machines (this crate's foundation) are driven by the
//! runner; the CLI in `src/cli/` only turns arguments into calls on these modules.

/// A line on stderr, as `eprintln!` writes it, except that a closed or full stderr (a
/// reader that went away) is not a reason to panic: vmcheck's messages there are for
/// people, and its exit code still says how it ended.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `say!` without the line end (as `eprint!`).
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod autopkgtest;
pub mod builtin;
pub mod checkfile;
pub mod events;
pub mod exit_codes;
pub mod image;
pub mod machine;
pub mod naughty;
pub mod planning;
pub mod policy;
pub mod private;
pub mod project;
pub mod reporter;
pub mod results;
pub mod runner;
pub mod shell;
pub mod signal;
pub mod soak;
pub mod testlib;
