//! A soak's machine faults, started from the host: a pause or link-down done with QMP,
//! held for its `for` and always undone; a reboot (QMP `system_reset`) that takes the
//! machine whole until it is back and set up again; a clock jump.

use super::execute::Ended;
use super::hold::Held;
use crate::runner::attempt::Named;
use crate::soak::Fault;
use serde_json::json;
use std::time::{Duration, Instant};

/// What a fault needs beyond its machine.
pub(super) struct Terms<'a> {
    /// The test has a private network (each machine has a second NIC).
    pub private: bool,
    /// How long a rebooted machine may take to come back.
    pub boot_timeout: Duration,
    pub cancel: &'a crate::signal::Cancel,
    /// The journal's start marker, written again after a reboot (the guest log the check
    /// reads starts there).
    pub mark: &'a str,
}

/// A QMP command and its arguments.
type QmpCommand = (&'static str, serde_json::Value);

/// How long one QMP command of a fault may take.
const QMP_LIMIT: Duration = Duration::from_secs(10);

/// Fault `fault` on machine `held`.
pub(super) async fn fault(held: &Held<'_, Named>, fault: Fault, terms: &Terms<'_>) -> Ended {
    match fault {
        Fault::Reboot => reboot(held, terms).await,
        // Held to its end, even when a reboot wants the machine: a fault is never left
        // half done.
        _ => {
            let asked = Instant::now();
            let mut hold = held.hold().await;
            let waited = asked.elapsed();
            let t = Instant::now();
            let m = hold.parts().0;
            let mut ended = match fault {
                Fault::ClockJump { by } => clock_jump(m, by).await,
                _ => qmp_fault(m, fault, terms.private).await,
            };
            (ended.took, ended.waited) = (t.elapsed(), waited);
            ended
        }
    }
}

/// A pause or link-down on `m`: done, held for its duration, undone (the undoing is
/// retried: a machine is never left paused or cut off by a soak).
async fn qmp_fault(m: &Named, fault: Fault, private: bool) -> Ended {
    let nics: &[&str] = if private && m.ip.is_some() {
        &["n0", "n1"]
    } else {
        &["n0"]
    };
    let (on, off): (Vec<QmpCommand>, Vec<QmpCommand>) = match fault {
        Fault::Pause { .. } => (vec![("stop", json!({}))], vec![("cont", json!({}))]),
        _ => (
            nics.iter()
                .map(|n| ("set_link", json!({ "name": n, "up": false })))
                .collect(),
            nics.iter()
                .map(|n| ("set_link", json!({ "name": n, "up": true })))
                .collect(),
        ),
    };
    let mut problem = None;
    for (command, args) in on {
        if let Err(e) = m.machine.qmp(command, args, QMP_LIMIT).await {
            problem = Some(format!("{} {}: {e}", fault.word(), m.name));
            break;
        }
    }
    if problem.is_none() {
        tokio::time::sleep(fault.duration()).await;
    }
    for (command, args) in off {
        let mut tries = 0;
        while let Err(e) = m.machine.qmp(command, args.clone(), QMP_LIMIT).await {
            tries += 1;
            if tries == 3 {
                problem.get_or_insert(format!("undoing {} on {}: {e}", fault.word(), m.name));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    match problem {
        None => Ended::passed(),
        Some(p) => Ended::failed(p, String::new()),
    }
}

/// A hard reset of `held`'s machine: everything running on it is told to stop first, and
/// nothing else runs on it until it is back (ready, a new boot id), has its name and
/// address again and the journal's marker.
async fn reboot(held: &Held<'_, Named>, terms: &Terms<'_>) -> Ended {
    let asked = Instant::now();
    let mut whole = held.reboot().await;
    let waited = asked.elapsed();
    let t = Instant::now();
    let m = whole.machine();
    // qemu runs with -no-reboot (a reset the guest did ends it, so that a boot loop is
    // seen); this reset is the host's, done in place, and -no-reboot holds again after it.
    let problem = match reset(m).await {
        Err(e) => Some(format!("reboot {}: {e}", m.name)),
        Ok(()) => back(m, terms).await.err(),
    };
    let again = m
        .machine
        .qmp("set-action", json!({ "reboot": "shutdown" }), QMP_LIMIT)
        .await;
    let problem = problem.or_else(|| {
        again
            .err()
            .map(|e| format!("{}: setting -no-reboot again: {e}", m.name))
    });
    let mut ended = match problem {
        None => Ended::passed(),
        Some(p) => Ended::failed(p, String::new()),
    };
    (ended.took, ended.waited) = (t.elapsed(), waited);
    ended
}

/// A hard reset of `m`, in the same qemu.
async fn reset(m: &Named) -> Result<(), String> {
    m.machine
        .qmp("set-action", json!({ "reboot": "reset" }), QMP_LIMIT)
        .await?;
    m.machine.qmp("system_reset", json!({}), QMP_LIMIT).await?;
    Ok(())
}

/// `m` back from a reset: booted (a new boot id), named, addressed and marked.
async fn back(m: &mut Named, terms: &Terms<'_>) -> Result<(), String> {
    m.machine
        .wait_reboot(terms.boot_timeout, terms.cancel)
        .await
        .map_err(|e| format!("{} did not come back from its reboot: {e}", m.name))?;
    crate::runner::fresh::set_up(m)
        .await
        .map_err(|e| e.to_string())?;
    let _ = m
        .machine
        .shell()
        .execute(terms.mark, Duration::from_secs(30))
        .await;
    Ok(())
}

/// The guest's wall clock moved by `by` seconds. QEMU cannot set a running guest's clock
/// (the RTC is read at boot only), so it is set through the machine's root channel: one
/// command computes the new time from the guest's own, so the jump is exactly `by`.
async fn clock_jump(m: &Named, by: i64) -> Ended {
    let cmd = format!("date -s \"@$(( $(date +%s) + ({by}) ))\" >/dev/null && date +%s");
    match m.machine.shell().execute(&cmd, QMP_LIMIT).await {
        Ok(done) if done.status.success() => Ended::passed(),
        Ok(done) => Ended::failed(
            format!("clock-jump {}: date -s failed ({})", m.name, done.status),
            super::execute::tail(&done.output.stdout, &done.output.stderr),
        ),
        Err(e) => Ended::failed(format!("clock-jump {}: {e}", m.name), String::new()),
    }
}
