//! `--sit`: after a failed attempt, keep its machines, say how to reach them, and wait for
//! Enter. A machine that is gone (its qemu has exited) is named with the cause, never
//! offered as an `ssh` line; when none is left there is nothing to wait for.

use super::attempt::{AttemptContext, Named};
use crate::events::AttemptOutcome;
use crate::machine::Machine;
use std::time::Duration;

/// How long, after a machine failure, qemu may take to exit before the machine counts as
/// alive.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Sit on `machines` of the failed attempt of `test`, which ended with `outcome`.
pub(super) async fn sit(
    ctx: &AttemptContext,
    test: &str,
    outcome: &AttemptOutcome,
    machines: &[Named],
) {
    let mut input = ctx.sit_input.lock().await;
    if matches!(outcome, AttemptOutcome::Harness { .. }) {
        // The connection can be lost a moment before qemu exits (a guest powering off).
        let end = tokio::time::Instant::now() + EXIT_GRACE;
        while machines.iter().any(|m| alive(&m.machine)) && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let gone: Vec<&Named> = machines.iter().filter(|m| !alive(&m.machine)).collect();
    let cause = match outcome {
        AttemptOutcome::Harness { message, .. } => format!(" ({message})"),
        _ => String::new(),
    };
    if gone.len() == machines.len() {
        let names: Vec<&str> = gone.iter().map(|m| m.name.as_str()).collect();
        crate::say_raw!(
            "\nvmcheck: {test} failed{cause}; {} gone (qemu has exited): nothing to sit on (--sit)\n",
            match names.as_slice() {
                [one] => format!("its machine {one} is"),
                many => format!("its machines {} are", many.join(", ")),
            }
        );
        return;
    }
    crate::say_raw!("{}", prompt(test, &cause, machines));
    let lines = input.get_or_insert_with(|| {
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()))
    });
    // Enter (or end of input); a read interrupted by a signal is not Enter.
    let enter = async {
        while let Err(e) = lines.next_line().await {
            if e.kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
    };
    tokio::select! {
        _ = enter => {}
        _ = ctx.cancel.cancelled() => {}
    }
}

/// The prompt: an `ssh` line and the console log for each live machine, the gone ones named.
fn prompt(test: &str, cause: &str, machines: &[Named]) -> String {
    let mut text = format!("\nvmcheck: {test} failed{cause}; its machines are kept (--sit):\n");
    for m in machines {
        if !alive(&m.machine) {
            text.push_str(&format!("  {}: gone (qemu has exited)\n", m.name));
            continue;
        }
        text.push_str(&format!("  {}: {}\n", m.name, m.machine.ssh_command()));
        for (guest, host) in m.machine.forwards() {
            text.push_str(&format!(
                "  {}  port {guest}: 127.0.0.1:{host} (http://127.0.0.1:{host}/)\n",
                " ".repeat(m.name.len())
            ));
        }
        if let Some(console) = m.machine.console_log() {
            text.push_str(&format!(
                "  {}  console: {}\n",
                " ".repeat(m.name.len()),
                console.display()
            ));
        }
    }
    text.push_str("Press Enter to continue (the machines are then cleaned up) ...\n");
    text
}

/// Whether a machine can still be reached: its qemu runs (an existing host is assumed up).
fn alive(machine: &Machine) -> bool {
    match machine {
        Machine::Virtual(vm) => vm.pid().is_some_and(process_runs),
        Machine::Remote(_) => true,
    }
}

/// Whether `pid` runs (exists and is not a zombie waiting to be reaped).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with(['Z', 'X'])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_or_zombie_process_does_not_run() {
        assert!(process_runs(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Until waited for, an exited child is a zombie.
        assert!(crate::runner::sit::tests::eventually(|| !process_runs(pid)));
        child.wait().unwrap();
        assert!(!process_runs(pid));
    }

    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if cond() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }
}
