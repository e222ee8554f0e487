//! The `vmcheck` binary: a thin command line over the engine in the library crate.

mod cli;

fn main() {
    // Run directories, sockets, logs, reports: private to the user whatever the umask.
    vmcheck::private::restrict_umask();
    std::process::exit(cli::main());
}
