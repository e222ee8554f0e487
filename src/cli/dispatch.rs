//! Runs a parsed command line: finds the project and the image store, hands the command to
//! the file that carries it out (`run/`, `replay.rs`, `image.rs`, `vm.rs`, `naughty.rs`,
//! `results.rs`, `hunt.rs`, `helpers.rs`) and maps the result to an exit code, which `main`
//! returns for the process to exit with.

use super::args::{Cli, Command, GlobalArgs, ImageCommand};
use super::errors::CliError;
use clap::Parser;
use std::sync::Arc;
use vmcheck::exit_codes;
use vmcheck::image::{Catalog, ImageStore};
use vmcheck::project::Project;
use vmcheck::signal::{self, Cancel};

/// Parse arguments, run, and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit_codes::INPUT_ERROR
            } else {
                exit_codes::OK
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            vmcheck::say!("vmcheck: cannot start the async runtime: {e}");
            return exit_codes::INFRASTRUCTURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for a blocking read of stdin that may still be pending.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e @ (CliError::CheckFiles(_) | CliError::Naughty(_))) => {
            // One `path:line: message` per problem, as compilers print them.
            vmcheck::say!("{e}");
            e.process_exit_code()
        }
        Err(e) => {
            vmcheck::say!("vmcheck: error: {e}");
            e.process_exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<i32, CliError> {
    let cancel = Cancel::new();
    signal::install(&cancel)
        .map_err(|e| CliError::Usage(format!("cannot install signal handlers: {e}")))?;
    match &cli.command {
        Command::VmCtl { args } => return Ok(super::helpers::vm_ctl(args)),
        Command::Python { args } => return super::helpers::python(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "vmcheck", &mut std::io::stdout());
            return Ok(exit_codes::OK);
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                // A reader that stopped early (`| head`) is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(CliError::Usage(format!("cannot write the man page: {e}")))
                }
                _ => Ok(exit_codes::OK),
            };
        }
        Command::Merge(args) => return super::replay::merge(args),
        Command::Report(args) => return super::replay::report(args),
        Command::Sit(args) => return super::vm::sit(args, &cancel).await,
        Command::Stats(args) => return super::results::stats(args),
        Command::Results(cmd) => return super::results::results(cmd),
        _ => {}
    }
    let catalog = Arc::new(catalog(&cli.global, &cli.command)?);
    match cli.command {
        Command::Run(args) => {
            super::run::run(
                catalog,
                args,
                super::run::Suite::Dir,
                cli.global.verbose,
                &cancel,
            )
            .await
        }
        Command::Autopkgtest(args) => {
            let suite = super::run::Suite::Autopkgtest {
                summary_file: args.summary_file,
                needs_internet: args.needs_internet,
            };
            super::run::run(catalog, args.run, suite, cli.global.verbose, &cancel).await
        }
        Command::Exec { file, run } => {
            let suite = super::run::Suite::File(file);
            super::run::run(catalog, run, suite, cli.global.verbose, &cancel).await
        }
        Command::VmCtl { .. }
        | Command::Python { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Merge(_)
        | Command::Report(_)
        | Command::Sit(_)
        | Command::Stats(_)
        | Command::Results(_) => {
            unreachable!("handled above")
        }
        Command::Naughty(cmd) => super::naughty::naughty(&catalog.project, cmd),
        Command::Image(ImageCommand::List) => super::image::image_list(&catalog),
        Command::Image(ImageCommand::Build { names }) => {
            super::image::image_build(catalog, names, cli.global.verbose, &cancel).await
        }
        Command::VmRun(args) => super::vm::vm_run(catalog, args, cli.global.verbose, &cancel).await,
        Command::Hunt(args) => {
            let root = catalog.project.root.clone();
            tokio::task::spawn_blocking(move || {
                super::hunt::hunt(
                    &root,
                    &super::hunt::Hunt {
                        range: args.range,
                        test: args.test,
                        runs: args.runs,
                        results_db: args.results_db,
                    },
                )
            })
            .await
            .expect("hunt panicked")
        }
    }
}

fn catalog(global: &GlobalArgs, command: &Command) -> Result<Catalog, CliError> {
    let start = match (&global.project_dir, command) {
        (Some(dir), _) => dir.clone(),
        // A check file run directly belongs to the project it lives in.
        (None, Command::Exec { file, .. }) => std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(|p| p.to_path_buf()))
            .unwrap_or_default(),
        (None, _) => std::env::current_dir()
            .map_err(|e| CliError::Usage(format!("cannot read the current directory: {e}")))?,
    };
    let project = match (Project::discover(&start), command) {
        (Some(project), _) => project,
        // autopkgtest runs from anywhere (a source tree is not a vmcheck project): on the
        // Debian image recipe built into vmcheck.
        (None, Command::Autopkgtest(_)) if global.project_dir.is_none() => {
            let dir = vmcheck::builtin::written(
                &vmcheck::image::cache_home(),
                "recipes",
                vmcheck::builtin::DEBIAN_RECIPES,
            )
            .map_err(|e| CliError::Usage(format!("cannot write vmcheck's image recipes: {e}")))?;
            Project::discover(&dir).ok_or(CliError::NoProject(dir))?
        }
        (None, _) => return Err(CliError::NoProject(start)),
    };
    let store = ImageStore::from_env();
    store.sweep();
    Ok(Catalog::new(project, store))
}
