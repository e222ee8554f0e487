//! The scheduling loop. One task owns all run state: the queues, the capacity ledger, the
//! global machines, every test's attempt history and the statistics; it alone emits events.
//! Boots and attempts run as tasks that report back with plain messages, and the loop only
//! wakes on those (or a signal): no sleeps, no polling.
//!
//! Nondestructive tests run one at a time on each long-lived global machine, in name order
//! (ascending or descending by a hash of TEST_OS, as Cockpit does, to expose order
//! dependence). A global machine that timed out or failed is replaced with the same
//! configuration. Destructive tests get fresh machines, admitted against the ledger,
//! longest first by estimated duration. Nondestructive and destructive work run side by
//! side: the global machines get the share of the job slots that the waiting
//! nondestructive work is of all waiting work ([`order`](super::order)); they are booted
//! as that share asks and retired when no nondestructive test waits.

use super::attempt::{
    AttemptContext, AttemptDone, AttemptRequest, Health, LiveOutput, Machines, Progress,
    run_attempt,
};
use super::ledger::{Cost, Ledger};
use super::order::{self, Holding, Waiting, Weight};
use crate::checkfile::TestDef;
use crate::estimate::Estimates;
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
    /// Estimated durations (from the duration history): the order of destructive tests
    /// and the number of global machines.
    pub estimates: Estimates,
    /// The shard this run is of a split suite (`--shard`), for the run-started event.
    pub shard: Option<crate::events::ShardInfo>,
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
    weight: Weight,
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
    Running {
        id: usize,
        attempt: u32,
        machines: Vec<String>,
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
    /// Estimated duration of the tests in each queue.
    nd_work: Duration,
    d_work: Duration,
    nd_running: usize,
    /// Destructive tests running, and when their attempt started.
    d_running: HashMap<usize, Instant>,
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
                let weight = Weight {
                    estimate: cfg.estimates.duration(&t.def.name()),
                    timeout: t.def.timeout,
                    machines: t.def.provision.len(),
                };
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
                    weight,
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
            nd_work: Duration::ZERO,
            d_work: Duration::ZERO,
            nd_running: 0,
            d_running: HashMap::new(),
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
        let (mut nd, mut destructive) = (Vec::new(), Vec::new());
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
                destructive.push(i);
            }
        }
        nd.sort_by(|a, b| d.tests[*a].info.name.cmp(&d.tests[*b].info.name));
        if crate::plan::nondestructive_descending(&d.ctx.test_os) {
            nd.reverse();
        }
        let weights: Vec<Weight> = d.tests.iter().map(|t| t.weight).collect();
        order::longest_first(&mut destructive, &weights);
        for i in nd.into_iter().chain(destructive) {
            d.enqueue(i, false);
        }
        d
    }

    /// Queue test `i` for an attempt: at the back, or at the front (a retry).
    fn enqueue(&mut self, i: usize, front: bool) {
        let estimate = self.tests[i].weight.estimate;
        let (queue, work) = if self.tests[i].def.nondestructive {
            (&mut self.nd_queue, &mut self.nd_work)
        } else {
            (&mut self.d_queue, &mut self.d_work)
        };
        *work += estimate;
        if front {
            queue.push_front(i);
        } else {
            queue.push_back(i);
        }
    }

    /// Take the next nondestructive (or destructive) test off its queue.
    fn dequeue(&mut self, nondestructive: bool) -> Option<usize> {
        self.dequeue_at(nondestructive, 0)
    }

    /// Take the test at position `at` off its queue.
    fn dequeue_at(&mut self, nondestructive: bool, at: usize) -> Option<usize> {
        let (queue, work) = if nondestructive {
            (&mut self.nd_queue, &mut self.nd_work)
        } else {
            (&mut self.d_queue, &mut self.d_work)
        };
        let i = queue.remove(at)?;
        *work = work.saturating_sub(self.tests[i].weight.estimate);
        Some(i)
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
            shard: self.cfg.shard.clone(),
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
        // Retired machines still being killed: their files go before the run ends.
        while self.kills.join_next().await.is_some() {}
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

    /// Connect to the existing hosts (`--machine`), which serve every nondestructive test.
    /// Global machines that vmcheck boots are started by [`Self::grow_globals`] instead.
    fn start_globals(&mut self) {
        if self.nd_queue.is_empty() {
            return;
        }
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
    }

    /// The ledger cost of one global machine.
    fn global_cost(&self) -> Cost {
        let image = self.ctx.images.get(&self.ctx.test_os);
        let mem = self
            .cfg
            .nd_memory_mib
            .or(image.map(|i| i.manifest.boot.memory_mib))
            .unwrap_or(512);
        Cost {
            ram_mib: u64::from(mem) + QEMU_OVERHEAD_MIB,
            cpus: self.cfg.nd_cpus,
        }
    }

    fn usable(slot: &Slot) -> bool {
        matches!(
            slot.state,
            SlotState::Booting | SlotState::Idle(_) | SlotState::Busy
        )
    }

    /// Start global machines while fewer are alive than the waiting nondestructive work is
    /// worth ([`order::wanted_globals`]) and the ledger admits them: a retired slot is
    /// booted again, else (unless a slot died, which says the image does not boot) a new
    /// one is added. Existing hosts are only reconnected.
    fn grow_globals(&mut self) {
        let want = order::wanted_globals(&Waiting {
            slots: self.cfg.jobs,
            nd_tests: self.nd_queue.len(),
            nd_work: self.nd_work,
            d_work: self.d_work,
            boot: self.cfg.estimates.boot,
        });
        let mut alive = self.slots.iter().filter(|s| Self::usable(s)).count();
        while alive < want {
            let retired = self
                .slots
                .iter()
                .position(|s| matches!(s.state, SlotState::Retired));
            let remote = !self.cfg.remote.is_empty();
            let dead = self
                .slots
                .iter()
                .any(|s| matches!(s.state, SlotState::Dead));
            let k = match retired {
                Some(k) => k,
                None if remote || dead => return,
                None => self.slots.len(),
            };
            let cost = if remote {
                Cost::default()
            } else {
                self.global_cost()
            };
            if !remote {
                if !self.ledger.admits(cost) {
                    return;
                }
                self.ledger.reserve(cost);
            }
            if k == self.slots.len() {
                self.slots.push(Slot {
                    label: crate::events::global_label(k + 1),
                    state: SlotState::Booting,
                    failures: 0,
                    cost,
                    remote: None,
                });
            }
            self.spawn_boot(k);
            alive += 1;
        }
    }

    /// Whether a global machine can still be had for nondestructive tests.
    fn globals_possible(&self) -> bool {
        let (mut retired, mut dead) = (false, false);
        for s in &self.slots {
            match s.state {
                SlotState::Booting | SlotState::Idle(_) | SlotState::Busy => return true,
                SlotState::Retired => retired = true,
                SlotState::Dead => dead = true,
            }
        }
        retired || (!dead && self.cfg.remote.is_empty())
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
            let (result, took) = match remote {
                Some(target) => {
                    let started = Instant::now();
                    let m = RemoteMachine::connect(&label, target, ctx.boot_timeout, &ctx.cancel)
                        .await
                        .map(|m| Machine::Remote(Box::new(m)));
                    (m, started.elapsed())
                }
                None => {
                    let _booting = ctx.boots.enter(cpus).await;
                    let started = Instant::now();
                    let m = boot_global(&ctx, &label, mem, cpus)
                        .await
                        .map(|vm| Machine::Virtual(Box::new(vm)));
                    (m, started.elapsed())
                }
            };
            let _ = tx.send(Msg::Booted { slot, result, took });
        });
        self.task_kinds.insert(handle.id(), Task::Boot(slot));
    }

    /// Start whatever can start now: nondestructive tests on idle global machines (idle
    /// ones retire when none waits and the capacity can serve destructive tests, or nothing
    /// else could come back to them), more global machines if the work asks for them, then
    /// destructive tests, longest first, as the ledger admits them.
    fn schedule(&mut self) {
        for k in 0..self.slots.len() {
            if !matches!(self.slots[k].state, SlotState::Idle(_)) {
                continue;
            }
            if let Some(i) = self.dequeue(true) {
                let SlotState::Idle(machine) =
                    std::mem::replace(&mut self.slots[k].state, SlotState::Busy)
                else {
                    unreachable!()
                };
                self.nd_running += 1;
                self.spawn_attempt(i, Some(k), Machines::Global { machine });
            } else if self.nd_running == 0 || !self.d_queue.is_empty() {
                // No nondestructive work waits: free the machine and its capacity. (A
                // retry of a running test would boot one again.)
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
        self.grow_globals();
        if !self.globals_possible() {
            while let Some(i) = self.dequeue(true) {
                self.finish(
                    i,
                    Verdict::Error {
                        message: "no machine for nondestructive tests could be started".into(),
                    },
                );
            }
        }
        while let Some(at) = self.next_destructive() {
            let i = self.dequeue_at(false, at).expect("in the queue");
            self.ledger.reserve(self.tests[i].cost);
            self.d_running.insert(i, Instant::now());
            self.spawn_attempt(i, None, Machines::Fresh);
        }
    }

    /// The position in the destructive queue of the test to start now, if any: the first
    /// if the ledger admits it; else the first later one that the ledger admits and that
    /// is expected to end before the first would be admitted anyway.
    fn next_destructive(&self) -> Option<usize> {
        let &head = self.d_queue.front()?;
        if self.ledger.admits(self.tests[head].cost) {
            return Some(0);
        }
        let horizon = order::admitted_in(&self.ledger, &self.holdings(), self.tests[head].cost);
        self.d_queue.iter().position(|&i| {
            self.tests[i].weight.estimate <= horizon && self.ledger.admits(self.tests[i].cost)
        })
    }

    /// What holds capacity in the ledger now, and for how long it is expected to: running
    /// destructive tests until their estimated end, global machines until the waiting
    /// nondestructive work is done.
    fn holdings(&self) -> Vec<Holding> {
        let globals: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.remote.is_none() && Self::usable(s))
            .collect();
        let nd_left = self.nd_work / globals.len().max(1) as u32;
        let globals = globals.into_iter().map(|s| Holding {
            cost: s.cost,
            left: nd_left,
        });
        let tests = self.d_running.iter().map(|(&i, started)| Holding {
            cost: self.tests[i].cost,
            left: self.tests[i]
                .weight
                .estimate
                .saturating_sub(started.elapsed()),
        });
        globals.chain(tests).collect()
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
        let live: LiveOutput = Arc::new(move |progress: Progress<'_>| {
            let _ = out.send(match progress {
                Progress::Output(data) => Msg::Output {
                    id,
                    attempt,
                    data: data.to_vec(),
                },
                Progress::Running(machines) => Msg::Running {
                    id,
                    attempt,
                    machines: machines.to_vec(),
                },
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
            Msg::Running {
                id,
                attempt,
                machines,
            } => self.emit(Event::TestRunning {
                id,
                attempt,
                machines,
            }),
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
            None => {
                self.d_running.remove(&test);
                self.ledger.release(self.tests[test].cost)
            }
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
                self.enqueue(i, true);
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
        let reason = self.ctx.cancel.describe();
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
        (self.nd_work, self.d_work) = (Duration::ZERO, Duration::ZERO);
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
        cold_boot: ctx.cold_boot,
    };
    let mut vm = VirtualMachine::start(host, spec).await?;
    vm.wait_boot(ctx.boot_timeout, &ctx.cancel).await?;
    vm.shell()
        .execute(&format!("hostname {label}"), Duration::from_secs(30))
        .await?;
    Ok(vm)
}
