//! The capacity ledger: RAM and CPUs reserved by running work, and the admission rule.
//!
//! A unit of work (a global machine while it lives, a destructive test while it runs)
//! reserves its [`Cost`]. Work is admitted while fewer than `jobs` units run and its cost
//! fits the remaining capacity — or when nothing runs at all, so a test bigger than the
//! whole host runs alone instead of starving or crashing the runner (Cockpit §10.2.3).

/// What a unit of work holds: the RAM of its machines (guest + qemu overhead) and their
/// virtual CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub ram_mib: u64,
    pub cpus: u32,
}

impl Cost {
    pub fn plus(self, other: Cost) -> Cost {
        Cost {
            ram_mib: self.ram_mib + other.ram_mib,
            cpus: self.cpus + other.cpus,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ledger {
    capacity: Cost,
    jobs: usize,
    used: Cost,
    running: usize,
}

impl Ledger {
    pub fn new(capacity: Cost, jobs: usize) -> Ledger {
        Ledger {
            capacity,
            jobs: jobs.max(1),
            used: Cost::default(),
            running: 0,
        }
    }

    pub fn admits(&self, cost: Cost) -> bool {
        if self.running == 0 {
            return true;
        }
        let after = self.used.plus(cost);
        self.running < self.jobs
            && after.ram_mib <= self.capacity.ram_mib
            && after.cpus <= self.capacity.cpus
    }

    pub fn reserve(&mut self, cost: Cost) {
        self.used = self.used.plus(cost);
        self.running += 1;
    }

    /// Take `cost` beside the running units (a browser on the host next to a shared
    /// machine): counted against the capacity, not as a job.
    pub fn take(&mut self, cost: Cost) {
        self.used = self.used.plus(cost);
    }

    /// Give back what [`Ledger::take`] took.
    pub fn give_back(&mut self, cost: Cost) {
        self.used.ram_mib = self.used.ram_mib.saturating_sub(cost.ram_mib);
        self.used.cpus = self.used.cpus.saturating_sub(cost.cpus);
    }

    /// Whether `cost` more fits the capacity now (no job is counted).
    pub fn fits(&self, cost: Cost) -> bool {
        let after = self.used.plus(cost);
        after.ram_mib <= self.capacity.ram_mib && after.cpus <= self.capacity.cpus
    }

    pub fn release(&mut self, cost: Cost) {
        self.used.ram_mib = self.used.ram_mib.saturating_sub(cost.ram_mib);
        self.used.cpus = self.used.cpus.saturating_sub(cost.cpus);
        self.running = self.running.saturating_sub(1);
    }

    pub fn running(&self) -> usize {
        self.running
    }

    /// Why work of `cost` is not admitted now, if it is not.
    pub fn wait_reason(&self, cost: Cost) -> Option<String> {
        if self.admits(cost) {
            return None;
        }
        let gib = |mib: u64| format!("{:.1} GiB", mib as f64 / 1024.0);
        let free = |cap: u64, used: u64| cap.saturating_sub(used);
        Some(if self.running >= self.jobs {
            format!("{} of {} jobs (-j) are running", self.running, self.jobs)
        } else if self.used.ram_mib + cost.ram_mib > self.capacity.ram_mib {
            format!(
                "needs {} of RAM, {} free",
                gib(cost.ram_mib),
                gib(free(self.capacity.ram_mib, self.used.ram_mib))
            )
        } else {
            format!(
                "needs {} CPUs, {} free",
                cost.cpus,
                free(u64::from(self.capacity.cpus), u64::from(self.used.cpus))
            )
        })
    }
}

/// What the host can give to machines: its CPUs (under TCG each busy vCPU takes a core),
/// and its available memory less a 1 GiB reserve. The job count (`-j`) limits how many
/// units run, never how many CPUs they may take.
pub fn host_capacity(cpus: usize, available_mib: u64) -> Cost {
    Cost {
        ram_mib: available_mib.saturating_sub(1024),
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX).max(1),
    }
}

/// The default number of jobs: one per host CPU (under TCG each busy vCPU takes a core),
/// limited by how many machines of `machine_mib` fit in `available_mib` (less a 1 GiB
/// reserve for the host), and never 0.
pub fn default_jobs(cpus: usize, available_mib: u64, machine_mib: u64) -> usize {
    let by_ram = available_mib.saturating_sub(1024) / machine_mib.max(1);
    (by_ram as usize).min(cpus).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ram: u64, cpus: u32) -> Cost {
        Cost { ram_mib: ram, cpus }
    }

    #[test]
    fn admits_within_jobs_and_capacity() {
        let mut l = Ledger::new(c(1000, 2), 2);
        assert!(l.admits(c(400, 1)));
        l.reserve(c(400, 1));
        assert!(l.admits(c(400, 1)));
        assert!(!l.admits(c(700, 1)), "over RAM");
        assert!(!l.admits(c(100, 2)), "over CPUs");
        l.reserve(c(400, 1));
        assert!(!l.admits(c(1, 0)), "over jobs");
        l.release(c(400, 1));
        assert!(l.admits(c(400, 1)));
    }

    #[test]
    fn oversized_work_runs_alone() {
        let mut l = Ledger::new(c(1000, 2), 2);
        assert!(l.admits(c(99_000, 8)));
        l.reserve(c(99_000, 8));
        assert!(!l.admits(c(1, 1)));
        l.release(c(99_000, 8));
        assert_eq!(l.running(), 0);
        assert!(l.admits(c(1, 1)));
    }

    #[test]
    fn never_over_budget_when_more_than_one_runs() {
        // Admit a fixed stream of costs greedily: whenever two or more units run, the
        // reservation stays within capacity.
        let costs = [
            c(300, 1),
            c(900, 1),
            c(200, 2),
            c(600, 1),
            c(50, 1),
            c(2000, 3),
        ];
        let mut l = Ledger::new(c(1000, 3), 3);
        let mut held = Vec::new();
        for (i, cost) in costs.iter().cycle().take(60).enumerate() {
            if l.admits(*cost) {
                l.reserve(*cost);
                held.push(*cost);
            }
            if l.running() > 1 {
                assert!(
                    l.used.ram_mib <= 1000 && l.used.cpus <= 3,
                    "step {i}: {:?}",
                    l.used
                );
            }
            if i % 2 == 1 && !held.is_empty() {
                l.release(held.remove(0));
            }
        }
    }

    #[test]
    fn cpus_are_the_hosts_whatever_the_job_count() {
        let machine = c(600, 1);
        // -j 4 on a 2-CPU host: two 1-CPU machines, not four.
        let mut l = Ledger::new(host_capacity(2, 24_000), 4);
        l.reserve(machine);
        assert!(l.admits(machine));
        l.reserve(machine);
        assert!(!l.admits(machine), "over the host's CPUs");
        // -j 2 on an 8-CPU host admits a 4-CPU test beside a 1-CPU machine.
        let mut l = Ledger::new(host_capacity(8, 24_000), 2);
        l.reserve(machine);
        assert!(l.admits(c(2000, 4)), "CPUs are not capped at the job count");
        assert_eq!(host_capacity(0, 500), c(0, 1));
    }

    #[test]
    fn default_jobs_is_never_zero() {
        assert_eq!(default_jobs(2, 24_000, 384), 2);
        assert_eq!(default_jobs(8, 2_000, 1_000), 1);
        assert_eq!(default_jobs(8, 100, 1_000), 1);
        assert_eq!(default_jobs(0, 0, 0), 1);
    }

    #[test]
    fn the_reason_work_waits() {
        let mut l = Ledger::new(c(2048, 2), 2);
        assert_eq!(l.wait_reason(c(4096, 8)), None, "nothing runs: admitted");
        l.reserve(c(1024, 1));
        assert_eq!(
            l.wait_reason(c(1536, 1)).as_deref(),
            Some("needs 1.5 GiB of RAM, 1.0 GiB free")
        );
        assert_eq!(
            l.wait_reason(c(512, 2)).as_deref(),
            Some("needs 2 CPUs, 1 free")
        );
        assert_eq!(l.wait_reason(c(512, 1)), None);
        l.reserve(c(512, 1));
        assert_eq!(
            l.wait_reason(c(1, 0)).as_deref(),
            Some("2 of 2 jobs (-j) are running")
        );
    }
}
