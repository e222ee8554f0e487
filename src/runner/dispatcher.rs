//! The scheduling loop. One task owns all run state: the queues, the capacity ledger, the
//! global machines, every test's attempt history and the statistics; it alone emits events.
//! Boots and attempts run as tasks that report back with plain messages, and the loop only
//! wakes on those (or a signal): no sleeps, no polling.
//!
//! Nondestructive tests run one at a time on each long-lived global machine, in name order
//! (ascending or descending by a hash of TEST_OS, as Cockpit does, to expose order
//! dependence). A global machine that timed out or failed is replaced with the same
//! configuration. Destructive tests get fresh machines, admitted against the ledger.

use super::attempt::{
    AttemptContext, AttemptDone, AttemptRequest, Health, LiveOutput, Machines, run_attempt,
};
use super::ledger::{Cost, Ledger};
use crate::checkfile::TestDef;
use crate::events::{AttemptOutcome, AttemptReport, Event, Placement, RunStats, TestInfo, Verdict};
use crate::machine::Machine;
use crate::machine::error::MachineError;
use crate::machine::qemu::QEMU_OVERHEAD_MIB;
use crate::machine::remote::RemoteMachine;
use crate::machine::ssh::SshTarget;
use crate::machine::vm::{MachineSpec, VirtualMachine};
use crate::plan::TestPlan;
use crate::policy::{self, Decision, PolicyOptions, TestFacts};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How to run a plan.
pub struct RunConfig {
    pub jobs: usize,
    pub capacity: Cost,
    /// Memory and CPUs of global machines (memory: the image's default when `None`).
    pub nd_memory_mib: Option<u32>,
    pub nd_cpus: u32,
    /// Existing hosts to run nondestructive tests on (`--machine`); no VMs are booted then.
    pub remote: Vec<SshTarget>,
    pub policy: PolicyOptions,
    /// Check files affected by the change under test (`--base`).
    pub affected: crate::affected::Affected,
}

/// What a global machine slot is doing.
enum SlotState {
    Booting,
    Idle(Machine),
    Busy,
    /// Killed because no nondestructive work is left.
    Retired,
    /// Could not be booted (or reached) repeatedly.
    Dead,
}

struct Slot {
    label: String,
    state: SlotState,
    failures: u32,
    cost: Cost,
    remote: Option<SshTarget>,
}

/// Boot failures after which a global machine slot is given up.
const SLOT_FAILURES: u32 = 3;

struct TestState {
    info: TestInfo,
    def: Arc<TestDef>,
    cost: Cost,
    history: Vec<AttemptOutcome>,
    reports: Vec<AttemptReport>,
    placement: Placement,
    finished: bool,
    /// Affected by the change under test: must pass 3 times.
    affected: bool,
}

enum Msg {
    Booted {
        slot: usize,
        result: Result<Machine, MachineError>,
        took: Duration,
    },
    Output {
        id: usize,
        attempt: u32,
        data: Vec<u8>,
    },
    Done {
        test: usize,
        slot: Option<usize>,
        done: AttemptDone,
    },
}

enum Task {
    Boot(usize),
    Attempt { test: usize, slot: Option<usize> },
}

pub struct Dispatcher<'r> {
    ctx: Arc<AttemptContext>,
    cfg: RunConfig,
    tests: Vec<TestState>,
    nd_queue: VecDeque<usize>,
    d_queue: VecDeque<usize>,
    nd_running: usize,
    slots: Vec<Slot>,
    ledger: Ledger,
    stats: RunStats,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    tasks: tokio::task::JoinSet<()>,
    task_kinds: HashMap<tokio::task::Id, Task>,
    /// Boots and attempts whose result message has not been handled yet. The loop ends
    /// only when this is 0: a task can end before its message is read.
    in_flight: usize,
    /// Machines being killed; awaited before the run ends.
    kills: tokio::task::JoinSet<()>,
    /// Tests skipped by the plan (skip/only by TEST_OS), with the reason.
    skips: Vec<(usize, String)>,
    report: &'r mut dyn FnMut(&Event),
}

/// The cost of a destructive test: its machines' RAM (plus qemu's) and CPUs.
pub fn test_cost(def: &TestDef, ctx: &AttemptContext) -> Cost {
    def.provision.iter().fold(Cost::default(), |acc, m| {
        let image = m.image.as_deref().unwrap_or(&ctx.test_os);
        let mem = m
            .memory_mib
            .or_else(|| ctx.images.get(image).map(|i| i.manifest.boot.memory_mib))
            .unwrap_or(512);
        acc.plus(Cost {
            ram_mib: u64::from(mem) + QEMU_OVERHEAD_MIB,
            cpus: m.cpus,
        })
    })
}

impl<'r> Dispatcher<'r> {
    pub fn new(
        plan: TestPlan,
        cfg: RunConfig,
        ctx: Arc<AttemptContext>,
        report: &'r mut dyn FnMut(&Event),
    ) -> Dispatcher<'r> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ledger = Ledger::new(cfg.capacity, cfg.jobs);
        let tests = plan
            .tests
            .iter()
            .map(|t| {
                let cost = test_cost(&t.def, &ctx);
                TestState {
                    info: TestInfo {
                        id: t.id,
                        name: t.def.name(),
                        file: t.def.file.clone(),
                        nondestructive: t.def.nondestructive,
                        ram_mib: cost.ram_mib,
                    },
                    def: t.def.clone(),
                    cost,
                    history: Vec::new(),
                    reports: Vec::new(),
                    placement: Placement::None,
                    finished: false,
                    affected: !t.def.no_retry_when_changed
                        && !cfg.affected.reasons(&t.def.file).is_empty(),
                }
            })
            .collect();
        let mut d = Dispatcher {
            ctx,
            cfg,
            tests,
            nd_queue: VecDeque::new(),
            d_queue: VecDeque::new(),
            nd_running: 0,
            slots: Vec::new(),
            ledger,
            stats: RunStats::default(),
            tx,
            rx,
            tasks: tokio::task::JoinSet::new(),
            task_kinds: HashMap::new(),
            in_flight: 0,
            kills: tokio::task::JoinSet::new(),
            skips: Vec::new(),
            report,
        };
        d.stats.planned = plan.tests.len();
        let mut nd: Vec<usize> = Vec::new();
        for (i, t) in plan.tests.iter().enumerate() {
            if t.def.nondestructive {
                d.stats.nondestructive += 1;
            } else {
                d.stats.destructive += 1;
            }
            if let Some(reason) = &t.skip_reason {
                d.skips.push((i, reason.clone()));
                continue;
            }
            if t.def.nondestructive {
                nd.push(i);
            } else {
                d.d_queue.push_back(i);
            }
        }
        nd.sort_by(|a, b| d.tests[*a].info.name.cmp(&d.tests[*b].info.name));
        if crate::plan::nondestructive_descending(&d.ctx.test_os) {
            nd.reverse();
        }
        d.nd_queue = nd.into();
        d
    }

    fn emit(&mut self, event: Event) {
        (self.report)(&event);
    }

    /// Run the plan to the end (or until cancelled) and return the statistics.
    pub async fn run(mut self) -> RunStats {
        let started = Instant::now();
        let tests = self.tests.iter().map(|t| t.info.clone()).collect();
        self.emit(Event::RunStarted {
            test_os: self.ctx.test_os.clone(),
            jobs: self.cfg.jobs,
            tests,
        });
        for (i, reason) in std::mem::take(&mut self.skips) {
            self.finish(i, Verdict::Skipped { reason });
        }
        self.start_globals();
        loop {
            self.schedule();
            if self.nd_queue.is_empty() && self.d_queue.is_empty() && self.in_flight == 0 {
                break;
            }
            tokio::select! {
                Some(msg) = self.rx.recv() => self.handle(msg),
                Some(joined) = self.tasks.join_next_with_id() => self.reap(joined),
                _ = self.ctx.cancel.cancelled() => {
                    self.cancel().await;
                    break;
                }
            }
        }
        // Messages that arrived with the last task's end.
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
        for i in 0..self.slots.len() {
            if let SlotState::Idle(m) =
                std::mem::replace(&mut self.slots[i].state, SlotState::Retired)
            {
                m.kill().await;
            }
        }
        let stats = self.stats.clone();
        let matched: std::collections::BTreeSet<u64> = self
            .tests
            .iter()
            .flat_map(|t| t.reports.iter().flat_map(|r| r.known.own.iter().copied()))
            .collect();
        let unmatched_known = self
            .ctx
            .naughty
            .for_os(&self.ctx.test_os)
            .into_iter()
            .filter(|n| !matched.contains(&n.issue))
            .map(|n| format!("#{} {}", n.issue, self.shown(&n.path).display()))
            .collect();
        self.emit(Event::RunFinished {
            stats: stats.clone(),
            wall: started.elapsed(),
            unmatched_known,
        });
        stats
    }

    fn start_globals(&mut self) {
        if self.nd_queue.is_empty() {
            return;
        }
        if !self.cfg.remote.is_empty() {
            for (k, target) in self.cfg.remote.clone().into_iter().enumerate() {
                self.slots.push(Slot {
                    label: format!("{}:{}", target.host, target.port),
                    state: SlotState::Booting,
                    failures: 0,
                    cost: Cost::default(),
                    remote: Some(target),
                });
                self.spawn_boot(k);
            }
            return;
        }
        let image = self.ctx.images.get(&self.ctx.test_os);
        let mem = self
            .cfg
            .nd_memory_mib
            .or(image.map(|i| i.manifest.boot.memory_mib))
            .unwrap_or(512);
        let cost = Cost {
            ram_mib: u64::from(mem) + QEMU_OVERHEAD_MIB,
            cpus: self.cfg.nd_cpus,
        };
        let wanted = self.nd_queue.len().min(self.cfg.jobs);
        for k in 0..wanted {
            if !self.ledger.admits(cost) {
                break;
            }
            self.ledger.reserve(cost);
            self.slots.push(Slot {
                label: format!("nd{}", k + 1),
                state: SlotState::Booting,
                failures: 0,
                cost,
                remote: None,
            });
            self.spawn_boot(k);
        }
    }

    fn spawn_boot(&mut self, slot: usize) {
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        let remote = self.slots[slot].remote.clone();
        let label = self.slots[slot].label.clone();
        let (mem, cpus) = (self.cfg.nd_memory_mib, self.cfg.nd_cpus);
        self.slots[slot].state = SlotState::Booting;
        self.in_flight += 1;
        let handle = self.tasks.spawn(async move {
            let started = Instant::now();
            let result = match remote {
                Some(target) => {
                    RemoteMachine::connect(&label, target, ctx.boot_timeout, &ctx.cancel)
                        .await
                        .map(|m| Machine::Remote(Box::new(m)))
                }
                None => boot_global(&ctx, &label, mem, cpus)
                    .await
                    .map(|vm| Machine::Virtual(Box::new(vm))),
            };
            let _ = tx.send(Msg::Booted {
                slot,
                result,
                took: started.elapsed(),
            });
        });
        self.task_kinds.insert(handle.id(), Task::Boot(slot));
    }

    /// Start whatever can start now.
    fn schedule(&mut self) {
        for k in 0..self.slots.len() {
            if !matches!(self.slots[k].state, SlotState::Idle(_)) {
                continue;
            }
            if let Some(i) = self.nd_queue.pop_front() {
                let SlotState::Idle(machine) =
                    std::mem::replace(&mut self.slots[k].state, SlotState::Busy)
                else {
                    unreachable!()
                };
                self.nd_running += 1;
                self.spawn_attempt(i, Some(k), Machines::Global { machine });
            } else if self.nd_running == 0 {
                // No nondestructive work left: free the machine and its capacity.
                if let SlotState::Idle(m) =
                    std::mem::replace(&mut self.slots[k].state, SlotState::Retired)
                {
                    self.kills.spawn(m.kill());
                }
                if self.slots[k].remote.is_none() {
                    self.ledger.release(self.slots[k].cost);
                }
            }
        }
        let usable = self.slots.iter().any(|s| {
            matches!(
                s.state,
                SlotState::Booting | SlotState::Idle(_) | SlotState::Busy
            )
        });
        if !usable {
            while let Some(i) = self.nd_queue.pop_front() {
                self.finish(
                    i,
                    Verdict::Error {
                        message: "no machine for nondestructive tests could be started".into(),
                    },
                );
            }
        }
        while let Some(&i) = self.d_queue.front() {
            let cost = self.tests[i].cost;
            if !self.ledger.admits(cost) {
                break;
            }
            self.d_queue.pop_front();
            self.ledger.reserve(cost);
            self.spawn_attempt(i, None, Machines::Fresh);
        }
    }

    fn spawn_attempt(&mut self, i: usize, slot: Option<usize>, machines: Machines) {
        let attempt = self.tests[i].history.len() as u32 + 1;
        let placement = match slot {
            Some(k) => Placement::Global(k + 1),
            None => Placement::Own,
        };
        self.tests[i].placement = placement.clone();
        let test = self.tests[i].info.clone();
        self.emit(Event::TestStarted {
            test,
            attempt,
            placement,
        });
        let max_attempts = if self.cfg.policy.no_retry_fail {
            1
        } else {
            1 + policy::FAILURE_RETRIES as u32
        };
        let req = AttemptRequest {
            test: self.tests[i].def.clone(),
            id: self.tests[i].info.id,
            attempt,
            max_attempts,
            machines,
        };
        let (ctx, tx) = (self.ctx.clone(), self.tx.clone());
        let id = req.id;
        let out = tx.clone();
        let live: LiveOutput = Arc::new(move |data: &[u8]| {
            let _ = out.send(Msg::Output {
                id,
                attempt,
                data: data.to_vec(),
            });
        });
        self.in_flight += 1;
        let handle = self.tasks.spawn(async move {
            let done = run_attempt(ctx, req, live).await;
            let _ = tx.send(Msg::Done {
                test: i,
                slot,
                done,
            });
        });
        self.task_kinds
            .insert(handle.id(), Task::Attempt { test: i, slot });
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Output { id, attempt, data } => self.emit(Event::TestOutput { id, attempt, data }),
            Msg::Booted { slot, result, took } => {
                self.in_flight -= 1;
                self.booted(slot, result, took)
            }
            Msg::Done { test, slot, done } => {
                self.in_flight -= 1;
                self.attempt_done(test, slot, done)
            }
        }
    }

    fn booted(&mut self, slot: usize, result: Result<Machine, MachineError>, took: Duration) {
        match result {
            Ok(machine) => {
                let image = match &machine {
                    Machine::Virtual(vm) => vm.image.short_id(),
                    Machine::Remote(_) => super::EXISTING_HOST.into(),
                };
                self.emit(Event::MachineReady {
                    label: self.slots[slot].label.clone(),
                    image,
                    boot: took,
                });
                self.slots[slot].state = SlotState::Idle(machine);
            }
            Err(e) => {
                self.slots[slot].failures += 1;
                self.emit(Event::MachineFailed {
                    label: self.slots[slot].label.clone(),
                    message: e.to_string(),
                });
                if self.slots[slot].failures < SLOT_FAILURES && !self.ctx.cancel.is_cancelled() {
                    self.spawn_boot(slot);
                } else {
                    self.slots[slot].state = SlotState::Dead;
                    if self.slots[slot].remote.is_none() {
                        self.ledger.release(self.slots[slot].cost);
                    }
                }
            }
        }
    }

    fn attempt_done(&mut self, test: usize, slot: Option<usize>, done: AttemptDone) {
        match slot {
            Some(k) => {
                self.nd_running -= 1;
                match done.global {
                    Some((m, Health::Good)) => self.slots[k].state = SlotState::Idle(m),
                    Some((m, Health::Broken(reason))) => {
                        self.emit(Event::MachineReset {
                            label: self.slots[k].label.clone(),
                            reason,
                        });
                        self.kills.spawn(m.kill());
                        self.spawn_boot(k);
                    }
                    None => self.spawn_boot(k),
                }
            }
            None => self.ledger.release(self.tests[test].cost),
        }
        self.settle(test, done.report);
    }

    /// A task ended. Attempts and boots report through messages first; a task that ended
    /// without reporting panicked, which counts as a harness failure.
    fn reap(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match &joined {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let kind = self.task_kinds.remove(&id);
        let Err(e) = joined else { return };
        if e.is_cancelled() {
            return;
        }
        match kind {
            Some(Task::Boot(slot)) => self.handle(Msg::Booted {
                slot,
                result: Err(MachineError::Failed {
                    label: self.slots[slot].label.clone(),
                    message: format!("boot task panicked: {e}"),
                }),
                took: Duration::ZERO,
            }),
            Some(Task::Attempt { test, slot }) => {
                let attempt = self.tests[test].history.len() as u32 + 1;
                let report = AttemptReport {
                    attempt,
                    outcome: AttemptOutcome::Harness {
                        message: format!("vmcheck panicked while running the test: {e}"),
                    },
                    output: String::new(),
                    duration: Duration::ZERO,
                    machines: Vec::new(),
                    artifacts: None,
                    known: Default::default(),
                };
                self.handle(Msg::Done {
                    test,
                    slot,
                    done: AttemptDone {
                        report,
                        global: None,
                    },
                });
            }
            None => {}
        }
    }

    /// Apply policy to a finished attempt: retry or finish the test.
    fn settle(&mut self, i: usize, report: AttemptReport) {
        let t = &mut self.tests[i];
        t.history.push(report.outcome.clone());
        t.reports.push(report.clone());
        let facts = TestFacts {
            todo: t.def.todo.clone(),
            affected: t.affected,
        };
        match policy::decide(&t.history, &report.known, &facts, &self.cfg.policy) {
            Decision::Retry { reason } => {
                self.stats.retries += 1;
                let (test, placement) = (t.info.clone(), t.placement.clone());
                let retry = t.history.len() as u32;
                if t.def.nondestructive {
                    self.nd_queue.push_front(i);
                } else {
                    self.d_queue.push_front(i);
                }
                self.emit(Event::AttemptRetry {
                    test,
                    placement,
                    report,
                    retry,
                    reason,
                });
            }
            Decision::Final(verdict) => self.finish(i, verdict),
        }
    }

    /// A path as users see it: relative to the project when inside it.
    fn shown<'p>(&self, path: &'p std::path::Path) -> &'p std::path::Path {
        path.strip_prefix(&self.ctx.workdir).unwrap_or(path)
    }

    fn finish(&mut self, i: usize, verdict: Verdict) {
        self.stats.count(&verdict);
        self.tests[i].finished = true;
        if matches!(verdict, Verdict::Passed | Verdict::Flaky) {
            // A pattern that names a passing test (as tracebacks do) may be stale.
            let t = &self.tests[i];
            let method = t.def.method.clone();
            let stale: Vec<(u64, std::path::PathBuf)> = self
                .ctx
                .naughty
                .for_os(&self.ctx.test_os)
                .into_iter()
                .filter(|n| {
                    n.pattern.contains(&t.info.name) || n.pattern.contains(&format!("in {method}"))
                })
                .map(|n| (n.issue, self.shown(&n.path).to_path_buf()))
                .collect();
            for (issue, path) in stale {
                let test = self.tests[i].info.clone();
                self.emit(Event::KnownIssuePassed { test, issue, path });
            }
        }
        let t = &self.tests[i];
        let event = Event::TestFinished {
            test: t.info.clone(),
            placement: t.placement.clone(),
            verdict,
            attempts: t.reports.clone(),
        };
        self.emit(event);
    }

    async fn cancel(&mut self) {
        let reason = match self.ctx.cancel.signal() {
            Some(s) => format!(
                "interrupted by {}",
                nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("a signal")
            ),
            None => "cancelled".into(),
        };
        // Dropping the tasks' machines kills qemu and removes their files.
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Every planned test gets its line, so the TAP plan holds.
        for i in 0..self.tests.len() {
            if !self.tests[i].finished {
                self.finish(
                    i,
                    Verdict::Error {
                        message: reason.clone(),
                    },
                );
            }
        }
        self.emit(Event::RunCancelled { reason });
        self.nd_queue.clear();
        self.d_queue.clear();
    }
}

async fn boot_global(
    ctx: &AttemptContext,
    label: &str,
    memory: Option<u32>,
    cpus: u32,
) -> Result<VirtualMachine, MachineError> {
    let host = ctx.host.as_ref().ok_or_else(|| MachineError::Failed {
        label: label.to_string(),
        message: "no qemu host".into(),
    })?;
    let image = ctx
        .images
        .get(&ctx.test_os)
        .cloned()
        .ok_or_else(|| MachineError::Failed {
            label: label.to_string(),
            message: format!("image {} was not prepared", ctx.test_os),
        })?;
    let spec = MachineSpec {
        label: label.to_string(),
        image,
        memory_mib: memory,
        cpus,
        private_net: None,
    };
    let mut vm = VirtualMachine::start(host, spec).await?;
    vm.wait_boot(ctx.boot_timeout, &ctx.cancel).await?;
    vm.shell()
        .execute(&format!("hostname {label}"), Duration::from_secs(30))
        .await?;
    Ok(vm)
}
