//! Boot deadlines that measure a machine's progress, not the wall time of a loaded host.
//!
//! A boot under TCG is CPU work: on a host busy with other machines qemu's threads wait for
//! a CPU, and the same boot takes several times as long. The kernel counts that wait per
//! thread (`/proc/PID/task/TID/schedstat`, second field: nanoseconds runnable but not
//! running), so a [`BootClock`] charges a boot only for the time its qemu was not starved
//! (wall time minus the longest wait of any of its threads). A hung guest still runs out
//! of time (idle or spinning, it is not waiting for a CPU), and [`HARD_FACTOR`] bounds
//! every wait whatever the load.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// No boot waits longer than this many times its timeout, however starved.
pub const HARD_FACTOR: u32 = 4;

/// The time a boot has used, for one machine across its qemu relaunches.
#[derive(Debug)]
pub struct BootClock {
    start: Instant,
    limit: Duration,
    pid: u32,
    /// Each thread's runqueue wait when this clock started watching it.
    base: HashMap<u32, u64>,
    /// Starvation of earlier qemus of this boot (relaunches).
    carried: Duration,
    /// The current qemu's starvation at the last look.
    current: Duration,
}

impl BootClock {
    pub fn new(limit: Duration, pid: u32) -> BootClock {
        let mut clock = BootClock {
            start: Instant::now(),
            limit,
            pid,
            base: HashMap::new(),
            carried: Duration::ZERO,
            current: Duration::ZERO,
        };
        clock.base = waits(pid);
        clock
    }

    /// Look at qemu `pid` (a new one after a relaunch) and update the starvation.
    pub fn observe(&mut self, pid: u32) {
        if pid != self.pid {
            self.carried += self.current;
            self.current = Duration::ZERO;
            self.pid = pid;
            self.base.clear();
        }
        let now = waits(pid);
        let longest = now
            .iter()
            .map(|(tid, w)| w.saturating_sub(*self.base.entry(*tid).or_insert(0)))
            .max()
            .unwrap_or(0);
        // A thread that ended takes its wait along: never count less than before.
        self.current = self.current.max(Duration::from_nanos(longest));
    }

    /// Time the host kept qemu from running since the start.
    pub fn starved(&self) -> Duration {
        self.carried + self.current
    }

    /// When the boot runs out of time, as known now: the timeout, pushed back by the
    /// starvation so far, and never past the hard bound.
    pub fn deadline(&self) -> Instant {
        let hard = self.start + self.limit * HARD_FACTOR;
        (self.start + self.limit + self.starved()).min(hard)
    }

    /// Wait until the boot ran out of time, looking at qemu `pid` every half second.
    pub async fn expired(&mut self, pid: u32) {
        loop {
            self.observe(pid);
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return;
            }
            let step = Instant::now() + Duration::from_millis(500);
            tokio::time::sleep_until(deadline.min(step).into()).await;
        }
    }
}

/// Runqueue wait in nanoseconds of each thread of `pid` (empty if unreadable).
fn waits(pid: u32) -> HashMap<u32, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((tid, stat.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starved_process_gets_its_wait_back_and_an_idle_one_does_not() {
        use std::os::unix::process::CommandExt;
        // Two spinning processes on one CPU: each waits about half the time.
        let mut spin = std::process::Command::new("taskset")
            .args([
                "-c",
                "0",
                "sh",
                "-c",
                "while :; do :; done & while :; do :; done",
            ])
            .process_group(0)
            .spawn()
            .unwrap();
        let mut idle = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let limit = Duration::from_secs(10);
        let mut starved = BootClock::new(limit, spin.id());
        let mut rested = BootClock::new(limit, idle.id());
        std::thread::sleep(Duration::from_millis(2000));
        starved.observe(spin.id());
        rested.observe(idle.id());
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(spin.id() as i32),
            nix::sys::signal::SIGKILL,
        );
        let _ = idle.kill();
        let _ = (spin.wait(), idle.wait());
        assert!(
            starved.starved() > Duration::from_millis(400),
            "a spinner sharing one CPU waited {:?}",
            starved.starved()
        );
        assert!(starved.deadline() > starved.start + limit);
        assert!(starved.deadline() <= starved.start + limit * HARD_FACTOR);
        assert!(
            rested.starved() < Duration::from_millis(100),
            "{:?}",
            rested.starved()
        );
    }
}
