//! Machines by hand: `vmcheck vm-run` (an image's machine booted, a command run in it or its
//! SSH access printed until Enter) and `vmcheck sit` (a kept failed machine brought back).

use super::args::{SitArgs, VmRunArgs};
use super::errors::CliError;
use super::image::resolve;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmcheck::exit_codes;
use vmcheck::image::{Catalog, ImageStore};
use vmcheck::machine::host::Host;
use vmcheck::machine::ssh::{ExitStatus, Stream};
use vmcheck::machine::vm::{Exec, MachineSpec, VirtualMachine};
use vmcheck::signal::Cancel;

pub(super) async fn vm_run(
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
pub(super) async fn sit(args: &SitArgs, cancel: &Cancel) -> Result<i32, CliError> {
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
