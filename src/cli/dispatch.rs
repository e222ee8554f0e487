//! Runs a parsed command line: builds the engine objects it needs and maps the result to an
//! exit code. The only place that reads the process environment or calls `process::exit`
//! (through `main`'s return value).

use super::args::{Cli, Command, GlobalArgs, ImageCommand, NaughtyCommand, SitArgs, VmRunArgs};
use super::errors::CliError;
use clap::Parser;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmcheck::exit_codes;
use vmcheck::image::{Catalog, Image, ImageStatus, ImageStore};
use vmcheck::machine::host::Host;
use vmcheck::machine::ssh::{ExitStatus, Stream};
use vmcheck::machine::vm::{Exec, MachineSpec, VirtualMachine};
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
        Command::VmCtl { args } => return Ok(vm_ctl(args)),
        Command::Python { args } => return python(args),
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
        Command::Sit(args) => return sit(args, &cancel).await,
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
        Command::Naughty(cmd) => naughty(&catalog.project, cmd),
        Command::Image(ImageCommand::List) => image_list(&catalog),
        Command::Image(ImageCommand::Build { names }) => {
            image_build(catalog, names, cli.global.verbose, &cancel).await
        }
        Command::VmRun(args) => vm_run(catalog, args, cli.global.verbose, &cancel).await,
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

fn image_list(catalog: &Catalog) -> Result<i32, CliError> {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<16} {:<9} {:<22} {:>9}  PATH",
        "NAME", "STATE", "ID", "SIZE"
    );
    for row in catalog.list() {
        let (state, id, size, path) = match &row.status {
            ImageStatus::Current(i) => (
                "built",
                i.short_id(),
                size_of(i),
                i.dir.display().to_string(),
            ),
            ImageStatus::Stale(i) => (
                "stale",
                i.short_id(),
                size_of(i),
                i.dir.display().to_string(),
            ),
            ImageStatus::Missing if row.has_recipe => {
                ("not built", "-".into(), "-".into(), "-".into())
            }
            ImageStatus::Missing => ("missing", "-".into(), "-".into(), "-".into()),
            ImageStatus::Broken(e) => ("broken", "-".into(), "-".into(), e.to_string()),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:<22} {:>9}  {}",
            row.name, state, id, size, path
        );
    }
    let snapshots = vmcheck::machine::snapshot::list(&catalog.store.dir);
    if !snapshots.is_empty() {
        let _ = writeln!(out, "\n{:<49} {:>9}  PATH", "BOOTED SNAPSHOT", "SIZE");
        for (name, dir, bytes) in snapshots {
            let _ = writeln!(
                out,
                "{name:<49} {:>9}  {}",
                human_size(bytes),
                dir.display()
            );
        }
    }
    Ok(exit_codes::OK)
}

fn size_of(image: &Image) -> String {
    let bytes: u64 = image
        .manifest
        .files
        .keys()
        .filter_map(|f| std::fs::metadata(image.file(f)).ok())
        .map(|m| m.len())
        .sum();
    human_size(bytes)
}

fn human_size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn image_build(
    catalog: Arc<Catalog>,
    names: Vec<String>,
    verbose: bool,
    cancel: &Cancel,
) -> Result<i32, CliError> {
    let names = if names.is_empty() {
        catalog.recipes()
    } else {
        names
    };
    for name in names {
        vmcheck::say!("vmcheck: building image {name} ...");
        let (catalog, cancel) = (catalog.clone(), cancel.clone());
        let image = tokio::task::spawn_blocking(move || catalog.build(&name, &cancel, verbose))
            .await
            .expect("image build panicked")?;
        out!("{} {}", image.name, image.dir.display());
    }
    Ok(exit_codes::OK)
}

/// Resolve an image (building it if needed) without blocking the async runtime.
async fn resolve(
    catalog: &Arc<Catalog>,
    name: &str,
    verbose: bool,
    cancel: &Cancel,
) -> Result<Image, CliError> {
    let (catalog, cancel, name) = (catalog.clone(), cancel.clone(), name.to_string());
    let image = tokio::task::spawn_blocking(move || catalog.resolve(&name, &cancel, verbose))
        .await
        .expect("image resolution panicked")?;
    Ok(image)
}

async fn vm_run(
    catalog: Arc<Catalog>,
    args: VmRunArgs,
    verbose: bool,
    cancel: &Cancel,
) -> Result<i32, CliError> {
    let image = resolve(&catalog, &args.image, verbose, cancel).await?;
    let host = Host::detect(&image.kernel(), &catalog.store.dir.join(".cache")).await?;
    let started = Instant::now();
    let spec = MachineSpec {
        label: format!("{}-1", image.name),
        image,
        memory_mib: args.memory,
        cpus: args.cpus,
        private_net: None,
        isolated: false,
        cold_boot: args.cold_boot,
        layer: None,
        revive: None,
        forward: Vec::new(),
    };
    if verbose {
        vmcheck::say!(
            "vmcheck: booting {} ({}, {} CPU) ...",
            spec.image.short_id(),
            host.accel.as_str(),
            spec.cpus
        );
    }
    let mut machine = VirtualMachine::start(&host, spec).await?;
    machine
        .wait_boot(Duration::from_secs(args.boot_timeout), cancel)
        .await?;
    let boot_time = started.elapsed();
    if verbose {
        let steps: Vec<String> = machine
            .phases()
            .iter()
            .map(|(step, at)| format!("{step} {:.2}s", at.as_secs_f64()))
            .collect();
        vmcheck::say!(
            "vmcheck: {} {} in {:.2}s: {}",
            machine.label,
            if machine.restored() {
                "restored"
            } else {
                "booted"
            },
            boot_time.as_secs_f64(),
            steps.join(", ")
        );
    }

    if let Some(command) = &args.execute {
        let result = execute(machine.shell(), command, args.timeout, cancel).await;
        machine.kill().await;
        return result;
    }

    out!(
        "vmcheck: machine {} is ready ({:.1}s to boot, {}, {} MiB)",
        machine.label,
        boot_time.as_secs_f64(),
        host.accel.as_str(),
        machine.memory_mib
    );
    out!("  ssh:      {}", machine.ssh_command());
    out!("  address:  127.0.0.1:{}", machine.ssh_port());
    out!("  identity: {}", machine.image.client_key().display());
    out!("  known hosts: {}", machine.known_hosts().display());
    out!("  console:  {}", machine.console_log().display());
    out!(
        "  run tests: vmcheck run --machine 127.0.0.1:{} --identity {} --known-hosts {}",
        machine.ssh_port(),
        machine.image.client_key().display(),
        machine.known_hosts().display()
    );
    out!("Press Enter or Ctrl-C to stop the machine.");
    let outcome = until_enter(cancel).await;
    machine.kill().await;
    after_machines(outcome, cancel)
}

/// Run `command` as root in a machine, its output on ours; its exit status.
async fn execute(
    shell: &vmcheck::machine::shell::Shell,
    command: &str,
    timeout: u64,
    cancel: &Cancel,
) -> Result<i32, CliError> {
    let mut sink = |stream: Stream, data: &[u8]| {
        let _ = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(data),
            Stream::Stderr => std::io::stderr().lock().write_all(data),
        };
    };
    let req = Exec {
        sink: Some(&mut sink),
        ..Exec::new(command, Duration::from_secs(timeout))
    };
    let result = tokio::select! {
        r = shell.run(req) => r,
        _ = cancel.cancelled() => return Err(CliError::Interrupted),
    };
    let _ = std::io::stdout().flush();
    Ok(command_exit_code(&result?.status))
}

/// Wait for Enter (or the end of input), or a signal.
async fn until_enter(cancel: &Cancel) -> Result<i32, CliError> {
    let _ = std::io::stdout().flush();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    // Enter (or end of input); a read interrupted by a signal is not Enter.
    let enter = async {
        while let Err(e) = tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line).await {
            if e.kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
    };
    tokio::select! {
        _ = enter => Ok(exit_codes::OK),
        _ = cancel.cancelled() => Err(CliError::Interrupted),
    }
}

/// How waiting for Enter ended, once the machines are gone: a signal wins even if stdin
/// also ended at the same moment (the signal may be seen only while they were stopped).
fn after_machines(outcome: Result<i32, CliError>, cancel: &Cancel) -> Result<i32, CliError> {
    if cancel.is_cancelled() {
        return Err(CliError::Interrupted);
    }
    outcome
}

/// `vmcheck sit DIR`: a failed test's kept machines, back as they were.
async fn sit(args: &SitArgs, cancel: &Cancel) -> Result<i32, CliError> {
    use vmcheck::runner::kept;
    let found = kept::find(&args.dir).map_err(CliError::Usage)?;
    if let Some(name) = &args.machine
        && !found.iter().any(|(_, i)| &i.name == name)
    {
        let names: Vec<&str> = found.iter().map(|(_, i)| i.name.as_str()).collect();
        return Err(CliError::Usage(format!(
            "--machine {name}: the kept machines are {}",
            names.join(", ")
        )));
    }
    let test = found[0].1.test.clone();
    let started = Instant::now();
    let revived = kept::revive(
        &ImageStore::from_env(),
        found,
        Duration::from_secs(args.boot_timeout),
        cancel,
    )
    .await
    .map_err(CliError::Usage)?;
    if let Some(command) = &args.execute {
        let name = args.machine.as_deref();
        let (_, m) = revived
            .machines
            .iter()
            .find(|(i, _)| name.is_none_or(|n| i.name == n))
            .expect("checked");
        let result = execute(m.machine.shell(), command, args.timeout, cancel).await;
        revived.kill().await;
        return result;
    }
    out!(
        "vmcheck: {test}'s machines are back as it failed ({:.1}s):",
        started.elapsed().as_secs_f64()
    );
    for (info, m) in &revived.machines {
        out!("  {}: {}", info.name, m.machine.ssh_command());
        if let Some(ip) = &info.private_ip {
            out!("  {}  private address: {ip}", " ".repeat(info.name.len()));
        }
    }
    out!("Press Enter or Ctrl-C to stop them (what was kept stays as it is).");
    let outcome = until_enter(cancel).await;
    revived.kill().await;
    after_machines(outcome, cancel)
}

fn naughty(project: &Project, cmd: NaughtyCommand) -> Result<i32, CliError> {
    use std::io::Read;
    use vmcheck::naughty::{NAUGHTY_DIR, NaughtyDb};
    let (dir, os) = match cmd {
        NaughtyCommand::Check { dir } => (dir, None),
        NaughtyCommand::Match { os, dir } => (dir, Some(os)),
        NaughtyCommand::Stale {
            days,
            runs,
            dir,
            results_db,
        } => {
            let dir = dir.unwrap_or_else(|| project.root.join(NAUGHTY_DIR));
            let db = NaughtyDb::load(&dir).map_err(CliError::Naughty)?;
            return super::results::naughty_stale(project, &db, days, runs, results_db);
        }
    };
    let dir = dir.unwrap_or_else(|| project.root.join(NAUGHTY_DIR));
    let db = NaughtyDb::load(&dir).map_err(CliError::Naughty)?;
    let Some(os) = os else {
        out!("{}: {} patterns, all valid", dir.display(), db.len());
        for (alias, target) in db.aliases() {
            out!("  {alias} -> {target}");
        }
        return Ok(exit_codes::OK);
    };
    let mut output = String::new();
    std::io::stdin()
        .read_to_string(&mut output)
        .map_err(|e| CliError::Usage(format!("cannot read the output from stdin: {e}")))?;
    let m = db.matches(&os, &output);
    let shown = |p: &std::path::Path| {
        p.strip_prefix(&project.root)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    for n in &m.own {
        out!("#{} {}", n.issue, shown(&n.path));
    }
    for n in &m.other {
        out!("#{} {} (in {})", n.issue, shown(&n.path), n.os);
    }
    Ok(if m.own.is_empty() { 1 } else { exit_codes::OK })
}

/// The `vm` helper of host scripts: one request to the runner, its answer printed.
/// `vmcheck python ARGS…`: becomes `python3 ARGS…` with the testlib on `PYTHONPATH` and
/// the caller's umask; returns only if that cannot be done.
fn python(args: &[std::ffi::OsString]) -> Result<i32, CliError> {
    use std::os::unix::process::CommandExt;
    let path = vmcheck::testlib::python_path_env()
        .map_err(|e| CliError::Usage(format!("cannot write vmcheck's Python testlib: {e}")))?;
    let mut cmd = std::process::Command::new("python3");
    cmd.args(args).env("PYTHONPATH", path);
    vmcheck::private::give_caller_umask(&mut cmd);
    let e = cmd.exec();
    Err(CliError::Usage(format!("cannot run python3: {e}")))
}

fn vm_ctl(args: &[String]) -> i32 {
    use vmcheck::runner::control;
    let request = match control::parse_args(args) {
        Ok(r) => r,
        Err(usage) => {
            vmcheck::say!("vm: {usage}");
            return exit_codes::INPUT_ERROR;
        }
    };
    let Some(socket) = std::env::var_os("VMCHECK_CONTROL") else {
        vmcheck::say!("vm: VMCHECK_CONTROL is not set: vm works only inside a test's host script");
        return exit_codes::INPUT_ERROR;
    };
    match control::call(std::path::Path::new(&socket), &request) {
        Ok(r) => {
            let written = std::io::stdout()
                .write_all(r.stdout.as_bytes())
                .and_then(|()| std::io::stdout().flush());
            vmcheck::say_raw!("{}", r.stderr);
            match written {
                // A reader that stopped early (`vm exec m cat log | head`): as a command
                // killed by SIGPIPE exits in a shell.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 128 + 13,
                _ => r.exit,
            }
        }
        Err(e) => {
            vmcheck::say!("vm: cannot reach the runner: {e}");
            255
        }
    }
}

/// `vm-run -e` exits like ssh: with the command's code, 128 + N for signal N.
fn command_exit_code(status: &ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(c) => (*c).min(255) as i32,
        ExitStatus::Signal(name) => format!("SIG{name}")
            .parse::<nix::sys::signal::Signal>()
            .map(|s| 128 + s as i32)
            .unwrap_or(255),
        ExitStatus::Unknown => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_codes() {
        assert_eq!(command_exit_code(&ExitStatus::Code(0)), 0);
        assert_eq!(command_exit_code(&ExitStatus::Code(3)), 3);
        assert_eq!(command_exit_code(&ExitStatus::Signal("KILL".into())), 137);
        assert_eq!(command_exit_code(&ExitStatus::Unknown), 255);
    }
}
