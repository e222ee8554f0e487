//! The scheduler's decisions, as a state machine without I/O: [`DispatcherState`] owns the
//! queues, the global machine slots, the capacity ledger, every test's attempt history and
//! the statistics. It takes [`Msg`]s (a boot ended, an attempt ended, a task panicked, a
//! cancel was asked for, ...) and answers with [`Action`]s (boot slot k, run attempt n of
//! test i, kill this machine, abort this unit, emit this event, the run is over) that the
//! driver in [`dispatcher`](super::dispatcher) carries out, feeding their results back. The
//! shape follows cargo-nextest's `DispatcherContext::handle_event`.
//!
//! Every boot and attempt is a *unit* with an id; a unit ends exactly once (its result, a
//! panic or an abort), and a message of a unit that already ended is dropped, so a late or
//! repeated message can neither finish a test twice nor start work. Once the run is
//! cancelled or its work is done, nothing new starts: the remaining units are aborted,
//! machines that come back are killed, and the run ends when the last unit is gone. The
//! state is generic over the machine type `M`, so unit tests drive it with plain numbers.

use super::attempt::Health;
use super::ledger::{Cost, Ledger};
use super::order::{self, Holding, Waiting, Weight};
use crate::events::{
    AttemptOutcome, AttemptReport, BootOrigin, Event, KnownIssues, Placement, RunStats, ShardInfo,
    TestInfo, Verdict, global_label,
};
use crate::policy::{self, Decision, PolicyOptions, TestFacts};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A boot or an attempt the driver runs for the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub u64);

/// Which attempt of a test a unit is, and how many a failing test gets: decided here once
/// and carried by the attempt (as nextest's `RetryData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryData {
    /// 1-based.
    pub attempt: u32,
    pub total_attempts: u32,
}

/// Why the run stops early, weakest first: a stronger reason replaces a weaker one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CancelReason {
    /// Code asked for it (no signal).
    Requested,
    /// Code stopped the run for a reason it gave (a report that cannot be written).
    Stopped(String),
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
}

impl CancelReason {
    /// What unfinished tests are told (`interrupted by SIGINT`).
    pub fn message(&self) -> String {
        match self {
            CancelReason::Requested => "cancelled".into(),
            CancelReason::Stopped(why) => why.clone(),
            CancelReason::Signal(s) => format!(
                "interrupted by {}",
                nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("a signal")
            ),
        }
    }
}

/// What the state needs to know of a planned test.
#[derive(Debug, Clone)]
pub struct TestSpec {
    pub info: TestInfo,
    /// `testMethod`, for known-issue patterns that name it.
    pub method: String,
    /// RAM and CPUs of its own machines (destructive tests).
    pub cost: Cost,
    /// What it takes on the host beside its shared machine while it runs (a
    /// nondestructive test's browser).
    pub beside: Cost,
    pub weight: Weight,
    pub todo: Option<String>,
    /// Affected by the change under test: must pass 3 times.
    pub affected: bool,
    /// Skipped by the plan (skip/only by TEST_OS), with the reason.
    pub skip: Option<String>,
    /// The kind of global machine a nondestructive test runs on: an index into
    /// [`StateConfig::pools`] (0: the run's usual one).
    pub pool: usize,
    /// For a run of a repeated test (`--repeat`): the test's own name, shared by its runs.
    pub series: Option<String>,
    /// Its own failures are not retried (a soak).
    pub no_retry_fail: bool,
}

/// What a running soak tells.
#[derive(Debug, Clone)]
pub enum SoakMsg {
    Started {
        duration: Duration,
        seed: u64,
        events: Vec<String>,
    },
    Run(crate::events::SoakRun),
}

/// A known issue of one of the run's OSes, as far as scheduling is concerned.
#[derive(Debug, Clone)]
pub struct KnownIssue {
    /// The TEST_OS it is known on.
    pub os: String,
    pub issue: u64,
    /// The pattern file, as shown to users.
    pub path: PathBuf,
    pub pattern: String,
}

impl KnownIssue {
    /// Whether the pattern names the test (its `TestClass.testMethod`, without any matrix
    /// case, or `in testMethod` as a traceback does) on the test's OS (`run_os`: the run's,
    /// for a test without one of its own).
    fn names(&self, spec: &TestSpec, run_os: &str) -> bool {
        let name = spec.info.name.split('[').next().unwrap_or_default();
        spec.info.os.as_deref().unwrap_or(run_os) == self.os
            && (self.pattern.contains(name)
                || self.pattern.contains(&format!("in {}", spec.method)))
    }
}

/// How to run a plan, as plain data.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub test_os: String,
    pub jobs: usize,
    pub capacity: Cost,
    /// The kinds of global machine that vmcheck boots (*pools*), as the ledger cost of one
    /// machine of each: `[0]` is the run's usual machine, the others are machines with
    /// something more, e.g. an autopkgtest's dependencies, for the tests that name them.
    pub pools: Vec<Cost>,
    /// Labels of the existing hosts (`--machine`); global machines are only these then.
    pub remote: Vec<String>,
    pub policy: PolicyOptions,
    /// The estimated boot of a global machine.
    pub boot: Duration,
    /// Nondestructive tests in descending name order (see `plan::nondestructive_descending`).
    pub descending: bool,
    pub known: Vec<KnownIssue>,
    pub shard: Option<ShardInfo>,
    /// The plan is the whole suite (no filter, exclusion, shard or -n): every known issue
    /// that matched nothing is worth listing, not only those naming a test that ran.
    pub whole_suite: bool,
    /// For `run-started`: the command that re-runs tests by name.
    pub rerun: Vec<String>,
    /// Where and from what the run came (in `run-started`).
    pub run: Option<crate::events::RunMeta>,
}

/// A machine that is up.
#[derive(Debug)]
pub struct Booted<M> {
    pub machine: M,
    /// The image's short id, or [`EXISTING_HOST`](super::EXISTING_HOST).
    pub image: String,
    pub origin: BootOrigin,
    pub took: Duration,
}

/// What the driver tells the state.
#[derive(Debug)]
pub enum Msg<M> {
    Booted {
        unit: UnitId,
        result: Result<Booted<M>, String>,
    },
    /// The attempt's machines are ready and its body starts.
    Running {
        unit: UnitId,
        machines: Vec<String>,
    },
    Output {
        unit: UnitId,
        data: Vec<u8>,
    },
    /// A soak of a running attempt started, or one execution of its event ended.
    Soak {
        unit: UnitId,
        soak: SoakMsg,
    },
    AttemptDone {
        unit: UnitId,
        report: AttemptReport,
        /// The global machine it ran on, back, and whether it can serve another test.
        machine: Option<(M, Health)>,
    },
    /// The unit's task ended without a result.
    Panicked {
        unit: UnitId,
        message: String,
    },
    /// The unit's task was aborted as asked ([`Action::Abort`]); its machines are gone.
    Aborted {
        unit: UnitId,
    },
    Cancel(CancelReason),
}

/// What the state asks the driver to do, in order.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived: carried out as soon as returned
pub enum Action<M> {
    Emit(Event),
    /// Boot global machine `slot`, of kind `pool` (connect to existing host `slot`, if
    /// there are any), and answer with [`Msg::Booted`].
    Boot {
        unit: UnitId,
        slot: usize,
        label: String,
        pool: usize,
    },
    /// Run an attempt of test `test` (an index into the plan): on `machine` (global
    /// machine `slot`) or on machines of its own; answer with [`Msg::AttemptDone`].
    Attempt {
        unit: UnitId,
        test: usize,
        retry: RetryData,
        slot: Option<usize>,
        machine: Option<M>,
    },
    Kill(M),
    /// Stop the unit's task (dropping its machines) and answer with [`Msg::Aborted`].
    Abort(UnitId),
    /// The run is over: wait for the machines being killed, carry out the actions that
    /// follow (its last events) and return.
    Finish(RunStats),
}

enum SlotState<M> {
    Booting,
    Idle(M),
    Busy,
    /// Not wanted any more (or the run is ending).
    Retired,
    /// Could not be booted (or reached).
    Dead,
}

struct Slot<M> {
    label: String,
    /// The kind of machine it holds (see [`StateConfig::pools`]).
    pool: usize,
    state: SlotState<M>,
    failures: u32,
    /// What it holds in the ledger while alive (nothing for an existing host).
    cost: Cost,
    remote: bool,
}

impl<M> Slot<M> {
    fn usable(&self) -> bool {
        matches!(
            self.state,
            SlotState::Booting | SlotState::Idle(_) | SlotState::Busy
        )
    }
}

/// Boot failures after which a global machine slot is given up. An existing host is given
/// up at once: connecting already waited for it as long as a boot may take, or it refused.
pub const SLOT_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum Unit {
    Boot {
        slot: usize,
    },
    Attempt {
        test: usize,
        slot: Option<usize>,
        retry: RetryData,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    /// No work is left: the remaining boots are being aborted.
    Ending,
    Cancelled(CancelReason),
    Finished,
}

struct TestState {
    spec: TestSpec,
    history: Vec<AttemptOutcome>,
    reports: Vec<AttemptReport>,
    placement: Placement,
    finished: bool,
}

pub struct DispatcherState<M> {
    cfg: StateConfig,
    tests: Vec<TestState>,
    nd_queue: VecDeque<usize>,
    d_queue: VecDeque<usize>,
    /// Estimated duration of the tests in each queue.
    nd_work: Duration,
    d_work: Duration,
    nd_running: usize,
    /// Nondestructive tests running that take something beside their machine.
    beside_running: usize,
    /// Destructive tests running, and when their attempt started.
    d_running: BTreeMap<usize, Instant>,
    slots: Vec<Slot<M>>,
    ledger: Ledger,
    stats: RunStats,
    units: BTreeMap<UnitId, Unit>,
    next_unit: u64,
    phase: Phase,
    started: Option<Instant>,
    /// The test last told to be waiting, and why.
    waiting: Option<(usize, String)>,
}

impl<M> DispatcherState<M> {
    pub fn new(mut tests: Vec<TestSpec>, cfg: StateConfig) -> DispatcherState<M> {
        if !cfg.remote.is_empty() {
            // Existing hosts are what they are: they serve every nondestructive test.
            for t in &mut tests {
                t.pool = 0;
            }
        }
        let mut stats = RunStats {
            planned: tests.len(),
            ..RunStats::default()
        };
        for t in &tests {
            if t.info.nondestructive {
                stats.nondestructive += 1;
            } else {
                stats.destructive += 1;
            }
        }
        DispatcherState {
            ledger: Ledger::new(cfg.capacity, cfg.jobs),
            cfg,
            tests: tests
                .into_iter()
                .map(|spec| TestState {
                    spec,
                    history: Vec::new(),
                    reports: Vec::new(),
                    placement: Placement::None,
                    finished: false,
                })
                .collect(),
            nd_queue: VecDeque::new(),
            d_queue: VecDeque::new(),
            nd_work: Duration::ZERO,
            d_work: Duration::ZERO,
            nd_running: 0,
            beside_running: 0,
            d_running: BTreeMap::new(),
            slots: Vec::new(),
            stats,
            units: BTreeMap::new(),
            next_unit: 0,
            phase: Phase::Running,
            started: None,
            waiting: None,
        }
    }

    /// Whether the run is over ([`Action::Finish`] was returned).
    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Start the run: `run-started`, the plan's skips, existing hosts, the first work.
    pub fn start(&mut self, now: Instant) -> Vec<Action<M>> {
        let mut out = Vec::new();
        self.started = Some(now);
        out.push(Action::Emit(Event::RunStarted {
            test_os: self.cfg.test_os.clone(),
            jobs: self.cfg.jobs,
            tests: self.tests.iter().map(|t| t.spec.info.clone()).collect(),
            shard: self.cfg.shard.clone(),
            rerun: self.cfg.rerun.clone(),
            run: self.cfg.run.clone(),
        }));
        let (mut nd, mut destructive) = (Vec::new(), Vec::new());
        for i in 0..self.tests.len() {
            if let Some(reason) = self.tests[i].spec.skip.clone() {
                self.finish(i, Verdict::Skipped { reason }, &mut out);
            } else if self.tests[i].spec.info.nondestructive {
                nd.push(i);
            } else {
                destructive.push(i);
            }
        }
        nd.sort_by(|&a, &b| {
            self.tests[a]
                .spec
                .info
                .name
                .cmp(&self.tests[b].spec.info.name)
        });
        if self.cfg.descending {
            nd.reverse();
        }
        let weights: Vec<Weight> = self.tests.iter().map(|t| t.spec.weight).collect();
        order::longest_first(&mut destructive, &weights);
        for i in nd.into_iter().chain(destructive) {
            self.enqueue(i, false);
        }
        if !self.nd_queue.is_empty() {
            for label in self.cfg.remote.clone() {
                self.slots.push(Slot {
                    label,
                    pool: 0,
                    state: SlotState::Retired,
                    failures: 0,
                    cost: Cost::default(),
                    remote: true,
                });
                self.spawn_boot(self.slots.len() - 1, &mut out);
            }
        }
        self.schedule(now, &mut out);
        out
    }

    /// Take one message; answer with what to do.
    pub fn handle(&mut self, now: Instant, msg: Msg<M>) -> Vec<Action<M>> {
        let mut out = Vec::new();
        if self.phase == Phase::Finished {
            // Nothing is alive any more; a machine that still turns up is killed.
            match msg {
                Msg::Booted { result: Ok(b), .. } => out.push(Action::Kill(b.machine)),
                Msg::AttemptDone {
                    machine: Some((m, _)),
                    ..
                } => out.push(Action::Kill(m)),
                _ => {}
            }
            return out;
        }
        match msg {
            Msg::Output { unit, data } => {
                if let Some((id, attempt)) = self.live_attempt(unit) {
                    out.push(Action::Emit(Event::TestOutput { id, attempt, data }));
                }
            }
            Msg::Soak { unit, soak } => {
                if let Some((id, attempt)) = self.live_attempt(unit) {
                    out.push(Action::Emit(match soak {
                        SoakMsg::Started {
                            duration,
                            seed,
                            events,
                        } => Event::SoakStarted {
                            id,
                            attempt,
                            duration,
                            seed,
                            events,
                        },
                        SoakMsg::Run(run) => Event::SoakEvent { id, attempt, run },
                    }));
                }
            }
            Msg::Running { unit, machines } => {
                if let Some((id, attempt)) = self.live_attempt(unit) {
                    out.push(Action::Emit(Event::TestRunning {
                        id,
                        attempt,
                        machines,
                    }));
                }
            }
            Msg::Booted { unit, result } => self.booted(unit, result, &mut out),
            Msg::AttemptDone {
                unit,
                report,
                machine,
            } => self.attempt_done(unit, report, machine, &mut out),
            Msg::Panicked { unit, message } => self.panicked(unit, message, &mut out),
            Msg::Aborted { unit } => {
                if self.phase == Phase::Running {
                    // Nobody asked: as good as a panic.
                    self.panicked(unit, "the task was aborted".into(), &mut out);
                } else {
                    self.aborted(unit);
                }
            }
            Msg::Cancel(reason) => self.cancel(reason, &mut out),
        }
        self.schedule(now, &mut out);
        out
    }

    /// The test id and attempt of a running attempt unit whose test is not finished.
    fn live_attempt(&self, unit: UnitId) -> Option<(usize, u32)> {
        match self.units.get(&unit)? {
            Unit::Attempt { test, retry, .. } if !self.tests[*test].finished => {
                Some((self.tests[*test].spec.info.id, retry.attempt))
            }
            _ => None,
        }
    }

    fn new_unit(&mut self, unit: Unit) -> UnitId {
        let id = UnitId(self.next_unit);
        self.next_unit += 1;
        self.units.insert(id, unit);
        id
    }

    /// Queue test `i` for an attempt: at the back, or at the front (a retry).
    fn enqueue(&mut self, i: usize, front: bool) {
        let estimate = self.tests[i].spec.weight.estimate;
        let (queue, work) = if self.tests[i].spec.info.nondestructive {
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

    /// Take the test at position `at` off the nondestructive (or destructive) queue.
    fn dequeue_at(&mut self, nondestructive: bool, at: usize) -> Option<usize> {
        let (queue, work) = if nondestructive {
            (&mut self.nd_queue, &mut self.nd_work)
        } else {
            (&mut self.d_queue, &mut self.d_work)
        };
        let i = queue.remove(at)?;
        *work = work.saturating_sub(self.tests[i].spec.weight.estimate);
        Some(i)
    }

    fn spawn_boot(&mut self, slot: usize, out: &mut Vec<Action<M>>) {
        assert_eq!(self.phase, Phase::Running, "a boot after the run's work");
        let unit = self.new_unit(Unit::Boot { slot });
        self.slots[slot].state = SlotState::Booting;
        out.push(Action::Boot {
            unit,
            slot,
            label: self.slots[slot].label.clone(),
            pool: self.slots[slot].pool,
        });
    }

    fn spawn_attempt(
        &mut self,
        i: usize,
        slot: Option<usize>,
        machine: Option<M>,
        now: Instant,
        out: &mut Vec<Action<M>>,
    ) {
        assert_eq!(
            self.phase,
            Phase::Running,
            "an attempt after the run's work"
        );
        let t = &mut self.tests[i];
        let retry = RetryData {
            attempt: t.history.len() as u32 + 1,
            total_attempts: if self.cfg.policy.no_retry_fail || t.spec.no_retry_fail {
                1
            } else {
                1 + policy::FAILURE_RETRIES as u32
            },
        };
        t.placement = match slot {
            Some(k) => Placement::Global(k + 1),
            None => Placement::Own,
        };
        out.push(Action::Emit(Event::TestStarted {
            test: t.spec.info.clone(),
            attempt: retry.attempt,
            placement: t.placement.clone(),
        }));
        if slot.is_none() {
            self.ledger.reserve(t.spec.cost);
            self.d_running.insert(i, now);
        } else {
            self.nd_running += 1;
            if t.spec.beside != Cost::default() {
                self.ledger.take(t.spec.beside);
                self.beside_running += 1;
            }
        }
        let unit = self.new_unit(Unit::Attempt {
            test: i,
            slot,
            retry,
        });
        out.push(Action::Attempt {
            unit,
            test: i,
            retry,
            slot,
            machine,
        });
    }

    /// Start whatever can start now: nondestructive tests on idle global machines of their
    /// pool (idle ones retire when none of theirs waits and the capacity can serve other
    /// work, or nothing else could come back to them), more global machines if the work
    /// asks for them, then
    /// destructive tests, longest first, as the ledger admits them. Then end the run if its
    /// work is done.
    fn schedule(&mut self, now: Instant, out: &mut Vec<Action<M>>) {
        if self.phase != Phase::Running {
            self.end_if_idle(now, out);
            return;
        }
        for k in 0..self.slots.len() {
            if !matches!(self.slots[k].state, SlotState::Idle(_)) {
                continue;
            }
            let pool = self.slots[k].pool;
            // A test that takes something beside its machine (a browser) waits for room,
            // unless nothing of the kind runs (so that one always can).
            let fits = |i: usize| {
                let beside = self.tests[i].spec.beside;
                beside == Cost::default() || self.beside_running == 0 || self.ledger.fits(beside)
            };
            let of_pool = |i: &usize| self.tests[*i].spec.pool == pool;
            let mine = self.nd_queue.iter().position(|i| of_pool(i) && fits(*i));
            let waiting = self.nd_queue.iter().any(of_pool);
            if let Some(at) = mine {
                let i = self.dequeue_at(true, at).expect("in the queue");
                let SlotState::Idle(m) =
                    std::mem::replace(&mut self.slots[k].state, SlotState::Retired)
                else {
                    unreachable!()
                };
                self.slots[k].state = SlotState::Busy;
                self.spawn_attempt(i, Some(k), Some(m), now, out);
            } else if waiting {
                // Its pool's next test waits for room beside it: the machine waits too.
            } else if self.nd_running == 0 || !self.d_queue.is_empty() || !self.nd_queue.is_empty()
            {
                // No nondestructive work of its pool waits: free the machine and its
                // capacity for other work. (A retry of a running test would boot one again.)
                self.retire(k, out);
            }
        }
        self.grow_globals(out);
        // Tests of a pool whose machines cannot be had any more (e.g. its layer does not
        // install) end; the other pools go on.
        let hopeless: Vec<usize> = (0..self.nd_queue.len())
            .filter(|&at| !self.globals_possible(self.tests[self.nd_queue[at]].spec.pool))
            .collect();
        for at in hopeless.into_iter().rev() {
            let i = self.dequeue_at(true, at).expect("in the queue");
            self.finish(
                i,
                Verdict::Error {
                    message: "no machine for nondestructive tests could be started".into(),
                },
                out,
            );
        }
        while let Some(at) = self.next_destructive(now) {
            let i = self.dequeue_at(false, at).expect("in the queue");
            self.spawn_attempt(i, None, None, now, out);
        }
        self.tell_waiting(out);
        let attempts = self.nd_running + self.d_running.len();
        if self.nd_queue.is_empty() && self.d_queue.is_empty() && attempts == 0 {
            // The work is done: a machine still booting (or a host not answering) must not
            // hold the run.
            self.phase = Phase::Ending;
            self.stop_all(out);
            self.end_if_idle(now, out);
        }
    }

    /// Kill a slot's idle machine (and give back its capacity).
    fn retire(&mut self, k: usize, out: &mut Vec<Action<M>>) {
        if let SlotState::Idle(m) = std::mem::replace(&mut self.slots[k].state, SlotState::Retired)
        {
            out.push(Action::Kill(m));
        }
        self.release_slot(k);
    }

    /// Slot `k` no longer holds a machine (it was retired or died): give back what it
    /// reserved. Existing hosts reserve nothing.
    fn release_slot(&mut self, k: usize) {
        if !self.slots[k].remote {
            self.ledger.release(self.slots[k].cost);
        }
    }

    /// Abort every unit and kill every idle machine.
    fn stop_all(&mut self, out: &mut Vec<Action<M>>) {
        for k in 0..self.slots.len() {
            if matches!(self.slots[k].state, SlotState::Idle(_)) {
                self.retire(k, out);
            }
        }
        out.extend(self.units.keys().map(|&u| Action::Abort(u)));
    }

    /// Once nothing runs any more after the work ended or a cancel: `run-finished`.
    fn end_if_idle(&mut self, now: Instant, out: &mut Vec<Action<M>>) {
        if self.phase == Phase::Running || self.phase == Phase::Finished || !self.units.is_empty() {
            return;
        }
        self.phase = Phase::Finished;
        let matched: BTreeSet<u64> = self
            .tests
            .iter()
            .flat_map(|t| t.reports.iter().flat_map(|r| r.known.own.iter().copied()))
            .collect();
        // A run of part of the suite lists only the known issues that name one of its tests:
        // the others could not have matched.
        let relevant = |n: &KnownIssue| {
            self.cfg.whole_suite
                || self
                    .tests
                    .iter()
                    .any(|t| t.spec.skip.is_none() && n.names(&t.spec, &self.cfg.test_os))
        };
        let mut unmatched_known: Vec<String> = self
            .cfg
            .known
            .iter()
            .filter(|n| !matched.contains(&n.issue) && relevant(n))
            .map(|n| format!("#{} {}", n.issue, n.path.display()))
            .collect();
        // OSes of a run that share their known issues (an alias) list each once.
        let mut seen = BTreeSet::new();
        unmatched_known.retain(|line| seen.insert(line.clone()));
        let wall = self.started.map(|s| now - s).unwrap_or_default();
        out.push(Action::Finish(self.stats.clone()));
        out.push(Action::Emit(Event::RunFinished {
            stats: self.stats.clone(),
            wall,
            unmatched_known,
        }));
    }

    /// Start global machines while fewer are alive than the waiting nondestructive work is
    /// worth ([`order::wanted_globals`]) and the ledger admits them: a retired slot is
    /// booted again, else (unless a slot died, which says the image does not boot) a new
    /// one is added. Existing hosts are only reconnected. Every pool with waiting tests is
    /// counted on its own, first come first served.
    fn grow_globals(&mut self, out: &mut Vec<Action<M>>) {
        // Each pool with waiting tests, in queue order, is worth machines of its own.
        let mut pools: Vec<(usize, usize, Duration)> = Vec::new();
        for &i in &self.nd_queue {
            let (pool, estimate) = (self.tests[i].spec.pool, self.tests[i].spec.weight.estimate);
            match pools.iter_mut().find(|(p, ..)| *p == pool) {
                Some((_, tests, work)) => (*tests, *work) = (*tests + 1, *work + estimate),
                None => pools.push((pool, 1, estimate)),
            }
        }
        let remote = !self.cfg.remote.is_empty();
        for (pool, tests, work) in pools {
            let want = order::wanted_globals(&Waiting {
                slots: self.cfg.jobs,
                nd_tests: tests,
                nd_work: work,
                d_work: self.d_work,
                boot: self.cfg.boot,
            });
            let mut alive = self
                .slots
                .iter()
                .filter(|s| s.usable() && s.pool == pool)
                .count();
            while alive < want {
                let retired = self
                    .slots
                    .iter()
                    .position(|s| matches!(s.state, SlotState::Retired));
                let dead = self
                    .slots
                    .iter()
                    .any(|s| s.pool == pool && matches!(s.state, SlotState::Dead));
                let k = match retired {
                    Some(k) => k,
                    None if remote || dead => break,
                    None => self.slots.len(),
                };
                let cost = if remote {
                    Cost::default()
                } else {
                    self.cfg.pools[pool]
                };
                if !remote {
                    if !self.ledger.admits(cost) {
                        return;
                    }
                    self.ledger.reserve(cost);
                }
                if k == self.slots.len() {
                    self.slots.push(Slot {
                        label: global_label(k + 1),
                        pool,
                        state: SlotState::Retired,
                        failures: 0,
                        cost,
                        remote: false,
                    });
                }
                if !remote {
                    (self.slots[k].pool, self.slots[k].cost) = (pool, cost);
                }
                self.spawn_boot(k, out);
                alive += 1;
            }
        }
    }

    /// Whether a global machine of `pool` can still be had for nondestructive tests: one is
    /// up (or booting), a retired slot can be booted again, or a new one can be added (no
    /// machine of the pool died, which says it does not boot).
    fn globals_possible(&self, pool: usize) -> bool {
        let (mut retired, mut dead) = (false, false);
        for s in &self.slots {
            match s.state {
                SlotState::Booting | SlotState::Idle(_) | SlotState::Busy if s.pool == pool => {
                    return true;
                }
                SlotState::Retired => retired = true,
                SlotState::Dead if s.pool == pool => dead = true,
                _ => {}
            }
        }
        retired || (!dead && self.cfg.remote.is_empty())
    }

    /// Tell why the first destructive test in line waits, when that changed (Trafficlight's
    /// "waiting" state, with its reason).
    fn tell_waiting(&mut self, out: &mut Vec<Action<M>>) {
        let Some(&head) = self.d_queue.front() else {
            return;
        };
        let Some(reason) = self.ledger.wait_reason(self.tests[head].spec.cost) else {
            return;
        };
        if self.waiting.as_ref() == Some(&(head, reason.clone())) {
            return;
        }
        self.waiting = Some((head, reason.clone()));
        out.push(Action::Emit(Event::TestWaiting {
            id: self.tests[head].spec.info.id,
            name: self.tests[head].spec.info.name.clone(),
            reason,
        }));
    }

    /// The position in the destructive queue of the test to start now, if any: the first
    /// if the ledger admits it; else the first later one that the ledger admits and that
    /// is expected to end before the first would be admitted anyway.
    fn next_destructive(&self, now: Instant) -> Option<usize> {
        let &head = self.d_queue.front()?;
        if self.ledger.admits(self.tests[head].spec.cost) {
            return Some(0);
        }
        let horizon = order::admitted_in(
            &self.ledger,
            &self.holdings(now),
            self.tests[head].spec.cost,
        );
        self.d_queue.iter().position(|&i| {
            self.tests[i].spec.weight.estimate <= horizon
                && self.ledger.admits(self.tests[i].spec.cost)
        })
    }

    /// What holds capacity in the ledger now, and for how long it is expected to: running
    /// destructive tests until their estimated end, global machines until the waiting
    /// nondestructive work is done.
    fn holdings(&self, now: Instant) -> Vec<Holding> {
        let globals: Vec<&Slot<M>> = self
            .slots
            .iter()
            .filter(|s| !s.remote && s.usable())
            .collect();
        let nd_left = self.nd_work / globals.len().max(1) as u32;
        let globals = globals.into_iter().map(|s| Holding {
            cost: s.cost,
            left: nd_left,
        });
        let tests = self.d_running.iter().map(|(&i, &started)| Holding {
            cost: self.tests[i].spec.cost,
            left: self.tests[i]
                .spec
                .weight
                .estimate
                .saturating_sub(now.saturating_duration_since(started)),
        });
        globals.chain(tests).collect()
    }

    fn booted(
        &mut self,
        unit: UnitId,
        result: Result<Booted<M>, String>,
        out: &mut Vec<Action<M>>,
    ) {
        let Some(Unit::Boot { slot }) = self.units.remove(&unit) else {
            // Not a boot of this run that is still waited for.
            if let Ok(b) = result {
                out.push(Action::Kill(b.machine));
            }
            return;
        };
        let label = self.slots[slot].label.clone();
        match result {
            Ok(b) if self.phase == Phase::Running => {
                out.push(Action::Emit(Event::MachineReady {
                    label,
                    image: b.image,
                    boot: b.took,
                    origin: Some(b.origin),
                }));
                self.slots[slot].state = SlotState::Idle(b.machine);
            }
            Ok(b) => {
                out.push(Action::Kill(b.machine));
                self.slots[slot].state = SlotState::Retired;
                self.release_slot(slot);
            }
            Err(message) => {
                let s = &mut self.slots[slot];
                s.failures += 1;
                let again = self.phase == Phase::Running && !s.remote && s.failures < SLOT_FAILURES;
                if !matches!(self.phase, Phase::Cancelled(_)) {
                    out.push(Action::Emit(Event::MachineFailed { label, message }));
                }
                if again {
                    self.spawn_boot(slot, out);
                } else {
                    self.slots[slot].state = SlotState::Dead;
                    self.release_slot(slot);
                }
            }
        }
    }

    fn attempt_done(
        &mut self,
        unit: UnitId,
        mut report: AttemptReport,
        machine: Option<(M, Health)>,
        out: &mut Vec<Action<M>>,
    ) {
        let Some(Unit::Attempt { test, slot, retry }) = self.units.remove(&unit) else {
            // A repeated or late result: its test was settled already.
            if let Some((m, _)) = machine {
                out.push(Action::Kill(m));
            }
            return;
        };
        let running = self.phase == Phase::Running;
        match slot {
            Some(k) => {
                self.nd_running -= 1;
                self.give_back_beside(test);
                match machine {
                    Some((m, Health::Good)) if running => self.slots[k].state = SlotState::Idle(m),
                    Some((m, health)) => {
                        if let (Health::Broken(reason), true) = (health, running) {
                            out.push(Action::Emit(Event::MachineReset {
                                label: self.slots[k].label.clone(),
                                reason,
                            }));
                        }
                        out.push(Action::Kill(m));
                        self.replace(k, out);
                    }
                    None => self.replace(k, out),
                }
            }
            None => {
                self.d_running.remove(&test);
                self.ledger.release(self.tests[test].spec.cost);
            }
        }
        if running {
            report.attempt = retry.attempt;
            self.settle(test, report, out);
        }
    }

    /// Global machine `k` is gone: boot its replacement, or, once the run's work is over,
    /// give back its capacity.
    fn replace(&mut self, k: usize, out: &mut Vec<Action<M>>) {
        if self.phase == Phase::Running {
            self.spawn_boot(k, out);
        } else {
            self.slots[k].state = SlotState::Retired;
            self.release_slot(k);
        }
    }

    fn panicked(&mut self, unit: UnitId, message: String, out: &mut Vec<Action<M>>) {
        match self.units.get(&unit) {
            Some(Unit::Boot { .. }) => {
                self.booted(unit, Err(format!("the boot task panicked: {message}")), out)
            }
            Some(&Unit::Attempt { retry, .. }) => {
                let report = AttemptReport {
                    attempt: retry.attempt,
                    outcome: AttemptOutcome::Harness {
                        message: format!("vmcheck panicked while running the test: {message}"),
                        host_fault: false,
                    },
                    output: String::new(),
                    duration: Duration::ZERO,
                    machines: Vec::new(),
                    artifacts: None,
                    known: KnownIssues::default(),
                    start_ms: None,
                    boot: None,
                };
                self.attempt_done(unit, report, None, out);
            }
            None => {}
        }
    }

    /// A nondestructive test ended: what it took beside its machine is free again.
    fn give_back_beside(&mut self, test: usize) {
        let beside = self.tests[test].spec.beside;
        if beside != Cost::default() {
            self.ledger.give_back(beside);
            self.beside_running -= 1;
        }
    }

    /// A unit ended as asked, after the work ended or a cancel: its machines are gone.
    fn aborted(&mut self, unit: UnitId) {
        match self.units.remove(&unit) {
            Some(Unit::Boot { slot }) => {
                self.slots[slot].state = SlotState::Retired;
                self.release_slot(slot);
            }
            Some(Unit::Attempt { test, slot, .. }) => match slot {
                Some(k) => {
                    self.nd_running -= 1;
                    self.give_back_beside(test);
                    self.slots[k].state = SlotState::Retired;
                    self.release_slot(k);
                }
                None => {
                    self.d_running.remove(&test);
                    self.ledger.release(self.tests[test].spec.cost);
                }
            },
            None => {}
        }
    }

    /// Stop the run: every unit is aborted, every unfinished test gets its verdict (so the
    /// reports hold every planned test), nothing starts any more. A stronger reason than
    /// the one already acted on is told to every unit still alive.
    fn cancel(&mut self, reason: CancelReason, out: &mut Vec<Action<M>>) {
        match &self.phase {
            Phase::Cancelled(old) if *old >= reason => return,
            Phase::Cancelled(_) => {
                self.phase = Phase::Cancelled(reason);
                self.stop_all(out);
                return;
            }
            _ => {}
        }
        self.phase = Phase::Cancelled(reason.clone());
        self.stop_all(out);
        let message = reason.message();
        for i in 0..self.tests.len() {
            if !self.tests[i].finished {
                self.finish(
                    i,
                    Verdict::Error {
                        message: message.clone(),
                    },
                    out,
                );
            }
        }
        out.push(Action::Emit(Event::RunCancelled { reason: message }));
        self.nd_queue.clear();
        self.d_queue.clear();
        (self.nd_work, self.d_work) = (Duration::ZERO, Duration::ZERO);
    }

    /// Apply policy to a finished attempt: retry or finish the test.
    fn settle(&mut self, i: usize, report: AttemptReport, out: &mut Vec<Action<M>>) {
        let t = &mut self.tests[i];
        if t.finished {
            return;
        }
        t.history.push(report.outcome.clone());
        t.reports.push(report.clone());
        let facts = TestFacts {
            todo: t.spec.todo.clone(),
            affected: t.spec.affected,
            no_retry_fail: t.spec.no_retry_fail,
        };
        match policy::decide(&t.history, &report.known, &facts, &self.cfg.policy) {
            Decision::Retry { reason } => {
                self.stats.retries += 1;
                let event = Event::AttemptRetry {
                    test: t.spec.info.clone(),
                    placement: t.placement.clone(),
                    report,
                    retry: t.history.len() as u32,
                    reason,
                };
                self.enqueue(i, true);
                out.push(Action::Emit(event));
            }
            Decision::Final(verdict) => self.finish(i, verdict, out),
        }
    }

    /// Give test `i` its verdict: its one `test-finished` event.
    fn finish(&mut self, i: usize, verdict: Verdict, out: &mut Vec<Action<M>>) {
        let t = &mut self.tests[i];
        if t.finished {
            return;
        }
        t.finished = true;
        let stop = match (&t.spec.series, &verdict) {
            (
                Some(series),
                Verdict::Failed | Verdict::KnownIssue { .. } | Verdict::KnownElsewhere { .. },
            ) if self.cfg.policy.until_fail => Some((
                series.clone(),
                format!("stopped: {} failed", t.spec.info.name),
            )),
            _ => None,
        };
        self.stats.count(&verdict);
        if matches!(verdict, Verdict::Passed | Verdict::Flaky) {
            // A pattern that names a passing test (as tracebacks do) may be stale.
            for n in &self.cfg.known {
                if n.names(&t.spec, &self.cfg.test_os) {
                    out.push(Action::Emit(Event::KnownIssuePassed {
                        test: t.spec.info.clone(),
                        issue: n.issue,
                        path: n.path.clone(),
                    }));
                }
            }
        }
        out.push(Action::Emit(Event::TestFinished {
            test: t.spec.info.clone(),
            placement: t.placement.clone(),
            verdict,
            attempts: t.reports.clone(),
        }));
        if let Some((series, reason)) = stop {
            self.skip_series(&series, &reason, out);
        }
    }

    /// The runs of a repeated test that have not started are skipped (`--until-fail`); those
    /// running finish.
    fn skip_series(&mut self, series: &str, reason: &str, out: &mut Vec<Action<M>>) {
        for nondestructive in [true, false] {
            let queue = if nondestructive {
                &self.nd_queue
            } else {
                &self.d_queue
            };
            let waiting: Vec<usize> = (0..queue.len())
                .filter(|&at| self.tests[queue[at]].spec.series.as_deref() == Some(series))
                .collect();
            for at in waiting.into_iter().rev() {
                let i = self.dequeue_at(nondestructive, at).expect("in the queue");
                let reason = reason.to_string();
                self.finish(i, Verdict::Skipped { reason }, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
