//! The `vmcheck` binary: a thin command line over the engine in the library crate.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
