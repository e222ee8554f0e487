//! The command line: argument definitions (`args`), the one user-facing error type and its
//! exit codes (`errors`), and the dispatch from commands to the engine (`dispatch`).

/// `println!` for what a command prints on stdout: when the reader has gone away
/// (`vmcheck run -l | head`), the command ends quietly, as other Unix tools do, instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

mod args;
mod dispatch;
mod errors;
mod helpers;
mod hunt;
mod image;
mod naughty;
mod replay;
mod results;
mod run;
mod vm;

pub use dispatch::main;

/// Stdout could not be written: a closed pipe ends the process with success (the reader
/// took what it wanted); anything else is an error.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(vmcheck::exit_codes::OK);
    }
    vmcheck::say!("vmcheck: error: writing to stdout: {e}");
    std::process::exit(vmcheck::exit_codes::INFRASTRUCTURE);
}
