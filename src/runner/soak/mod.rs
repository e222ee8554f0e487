//! Carrying out a soak (`crate::soak`) on a test's machines: its startup events one after
//! the other, then for the soak's duration its events on the schedule drawn from the seed,
//! concurrently with each other and with the test's own body (the workload); then its
//! teardown events. Every execution is recorded (the test's output, a `soak-event` event).
//!
//! Unlike pytest-orchestration, no error is lost (every execution's outcome is kept, and a
//! failure fails the test with that execution's output), and the kill switch acts at once:
//! the first failure (unless `keep_going`) ends the soak as it happens, not at the next
//! tick; running checks are interrupted, faults are undone, teardown events still run.
//! Faults are done from the host with QMP, and always undone, even when the soak ends
//! under them.

pub(super) mod execute;
pub(super) mod fault;
pub(super) mod hold;

use super::attempt::{AttemptContext, AttemptRequest, Named};
use super::output::{Log, Progress};
use crate::events::{AttemptOutcome, SoakRun};
use crate::shell::quote;
use crate::soak::schedule::{Why, schedule};
use crate::soak::{Action, Overlap, Soak};
use execute::Ended;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hold::Held;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The attempt a soak runs in: what its host scripts run with.
pub(super) struct Attempt<'a> {
    pub ctx: &'a AttemptContext,
    pub req: &'a AttemptRequest,
    /// The test's environment (`VMCHECK_TEST`, …, its `env`).
    pub env: &'a [(String, String)],
    /// The machines' private network, for `vm net`.
    pub net: Option<&'a super::net::Network>,
    /// The attempt's directory: each host execution's output goes to `soak/`.
    pub dir: &'a Path,
    /// The journal's start marker command.
    pub mark: &'a str,
}

/// What a soak runs with.
pub(super) struct SoakTask<'a> {
    /// Scaled already.
    pub soak: &'a Soak,
    pub attempt: Attempt<'a>,
    /// What the soak may take beyond its duration (the test's `timeout`).
    pub grace: Duration,
}

/// An execution that was started.
#[derive(Clone)]
struct Started {
    event: usize,
    run: u32,
    why: &'static str,
    due: Duration,
    started: Duration,
}

type Execution<'a> = Pin<Box<dyn Future<Output = (Started, Ended)> + Send + 'a>>;

/// The test's own script, run for the duration (its guest script, its host script).
type Workload<'a> = Pin<Box<dyn Future<Output = (Load, Ended)> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Guest,
    Host,
}

/// Run the soak on `machines`; the attempt's outcome. Journal messages that its host
/// scripts allowed go to `allowed`.
pub(super) async fn run_soak(
    machines: &mut [Named],
    log: &Log,
    task: SoakTask<'_>,
    allowed: &mut Vec<String>,
) -> AttemptOutcome {
    let soak = task.soak;
    let seed = task.attempt.ctx.seed;
    let names: Vec<String> = soak.events.iter().map(|e| e.name.clone()).collect();
    (log.live)(Progress::SoakStarted(soak.duration, seed, &names));
    log.note(&format!(
        "vmcheck: soak for {:.1}s, {} events, seed {seed} (--seed {seed} replays this schedule)",
        soak.duration.as_secs_f64(),
        names.len(),
    ));
    let private = machines.iter().any(|m| m.ip.is_some());
    let held: Vec<Held<'_, Named>> = machines
        .iter_mut()
        .map(|m| Held::new(&m.name.clone(), m))
        .collect();
    let exports: String = task
        .attempt
        .env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", quote(v)))
        .collect();
    let terms = fault::Terms {
        private,
        boot_timeout: task.attempt.ctx.boot_timeout,
        cancel: &task.attempt.ctx.cancel,
        mark: task.attempt.mark,
    };
    let shared = Shared {
        soak,
        machines: &held,
        attempt: &task.attempt,
        exports: &exports,
        terms: &terms,
        allowed: Mutex::new(Vec::new()),
    };
    let limit = soak.duration + task.grace;
    let mut state = State::new(&shared, log);
    let ran = tokio::time::timeout(limit, state.run(seed)).await;
    allowed.extend(shared.allowed.lock().expect("poisoned").drain(..));
    if ran.is_err() {
        log.note(&format!(
            "vmcheck: timed out: the soak took more than its {:.0}s and {}s beyond \
             (the test's timeout)",
            soak.duration.as_secs_f64(),
            task.grace.as_secs()
        ));
        return AttemptOutcome::TimedOut { after: limit };
    }
    state.summary();
    state.verdict()
}

/// What every execution of a soak reads.
struct Shared<'a, 'm> {
    soak: &'a Soak,
    machines: &'a [Held<'m, Named>],
    attempt: &'a Attempt<'a>,
    /// `export K=V` lines of the test's environment, for scripts in machines.
    exports: &'a str,
    terms: &'a fault::Terms<'a>,
    /// Journal messages allowed by host scripts.
    allowed: Mutex<Vec<String>>,
}

impl<'a, 'm> Shared<'a, 'm> {
    fn find(&self, name: &str) -> Option<&'a Held<'m, Named>> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// The test's guest script, in its first machine until the soak ends it (again after
    /// a reboot fault interrupted it).
    fn guest_load(&'a self, script: &'a str) -> Workload<'a> {
        // Past the end, the soak drops this future first: the limit only bounds a soak
        // that would otherwise not end.
        let limit = self.soak.duration + Duration::from_secs(60);
        let m = &self.machines[0];
        Box::pin(async move {
            (
                Load::Guest,
                execute::in_machine(m, self.exports, script, limit).await,
            )
        })
    }

    /// The test's host script, until the soak ends it.
    fn host_load(&'a self, script: &'a str) -> Workload<'a> {
        let limit = self.soak.duration + Duration::from_secs(60);
        let output = self.attempt.dir.join("soak").join("host-workload.txt");
        Box::pin(async move {
            let (ended, allowed) = execute::on_host(execute::OnHost {
                attempt: self.attempt,
                machines: self.machines,
                script,
                timeout: limit,
                output: &output,
            })
            .await;
            self.allowed.lock().expect("poisoned").extend(allowed);
            (Load::Host, ended)
        })
    }
}

/// The soak while it runs: which event runs, what waits, what failed.
struct State<'a, 'm> {
    shared: &'a Shared<'a, 'm>,
    log: &'a Log,
    start: Instant,
    /// Per event: executions started (or skipped), and the one running.
    runs: Vec<u32>,
    running: Vec<Option<Started>>,
    /// Per event: one execution waiting for the running one (`overlap = "queue"`).
    queued: Vec<Option<(Duration, &'static str)>>,
    /// Per event: every recorded execution.
    done: Vec<Vec<SoakRun>>,
    failures: Vec<SoakRun>,
    /// The kill switch: set by the first failure (unless `keep_going`).
    stopped: bool,
    /// The duration is over: only what runs, and the checks owed to faults, finish.
    ending: bool,
}

impl<'a, 'm> State<'a, 'm> {
    fn new(shared: &'a Shared<'a, 'm>, log: &'a Log) -> State<'a, 'm> {
        let n = shared.soak.events.len();
        State {
            shared,
            log,
            start: Instant::now(),
            runs: vec![0; n],
            running: vec![None; n],
            queued: vec![None; n],
            done: vec![Vec::new(); n],
            failures: Vec::new(),
            stopped: false,
            ending: false,
        }
    }

    async fn run(&mut self, seed: u64) {
        let all = schedule(self.shared.soak, seed);
        let (startup, rest): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|d| d.why == Why::Startup);
        let (timed, teardown): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|d| d.why != Why::Teardown);
        // Startup events first, one after the other in the order written (a setup before
        // the checks that need it); the soak's clock starts when they are done.
        self.start = Instant::now();
        for d in startup {
            if self.stopped {
                break;
            }
            let started = self.begin(d.event, Duration::ZERO, "startup");
            let (started, ended) = self.execute(started).await;
            self.record(started, ended);
        }
        self.start = Instant::now();
        let end = self.start + self.shared.soak.duration;
        let mut checks: FuturesUnordered<Execution<'a>> = FuturesUnordered::new();
        let mut faults: FuturesUnordered<Execution<'a>> = FuturesUnordered::new();
        let shared = self.shared;
        let mut loads: FuturesUnordered<Workload<'a>> = FuturesUnordered::new();
        let body = &shared.attempt.req.test.body;
        if let Some(script) = body.guest_script() {
            loads.push(shared.guest_load(script));
        }
        if let crate::checkfile::Body::Scripts {
            host: Some(script), ..
        } = body
        {
            loads.push(shared.host_load(script));
        }
        let mut next = 0;
        while !self.stopped {
            let next_at = timed.get(next).map(|d| self.start + d.at);
            tokio::select! {
                biased;
                Some((started, ended)) = faults.next(), if !faults.is_empty() => {
                    self.fault_ended(started, ended, &mut checks, &mut faults);
                }
                Some((started, ended)) = checks.next(), if !checks.is_empty() => {
                    self.record(started, ended);
                    self.start_queued(&mut checks, &mut faults);
                }
                Some((load, mut ended)) = loads.next(), if !loads.is_empty() => {
                    ended.took = self.start.elapsed();
                    if ended.outcome == "interrupted" && load == Load::Guest {
                        self.log.note(&format!(
                            "vmcheck: soak: the test's own script was interrupted at {:.1}s \
                             ({}); it starts again once the machine is back",
                            ended.took.as_secs_f64(),
                            ended.detail
                        ));
                        loads.push(shared.guest_load(
                            body.guest_script().expect("it ran"),
                        ));
                    } else {
                        self.workload_ended(load, ended);
                    }
                }
                _ = tokio::time::sleep_until(next_at.unwrap_or(end).into()), if next_at.is_some_and(|t| t < end) => {
                    let d = timed[next];
                    next += 1;
                    self.due(d.event, d.at, "periodic", &mut checks, &mut faults);
                }
                _ = tokio::time::sleep_until(end.into()) => break,
            }
        }
        // The workload ran for the duration (or the soak stopped): it ends here.
        drop(loads);
        if self.stopped {
            // Checks are interrupted at once; faults are never left half done.
            drop(checks);
            for (i, r) in self.running.clone().into_iter().enumerate() {
                if let Some(s) = r
                    && !matches!(self.shared.soak.events[i].action, Action::Fault { .. })
                {
                    self.running[i] = None;
                    self.record(s, Ended::not_run("interrupted", "the soak ended first"));
                }
            }
            checks = FuturesUnordered::new();
        }
        // What still runs finishes (within its own timeout); nothing new starts but the
        // checks owed to faults that ended (unless the soak was stopped).
        self.ending = true;
        for q in &mut self.queued {
            if q.is_some_and(|(_, why)| why != "invariant" || self.stopped) {
                *q = None;
            }
        }
        loop {
            tokio::select! {
                Some((started, ended)) = faults.next(), if !faults.is_empty() => {
                    self.fault_ended(started, ended, &mut checks, &mut faults);
                }
                Some((started, ended)) = checks.next(), if !checks.is_empty() => {
                    self.record(started, ended);
                    self.start_queued(&mut checks, &mut faults);
                }
                else => break,
            }
        }
        let mut last: FuturesUnordered<Execution<'a>> = FuturesUnordered::new();
        for d in teardown {
            let started = self.begin(d.event, d.at, "teardown");
            last.push(self.execute(started));
        }
        while let Some((started, ended)) = last.next().await {
            self.record(started, ended);
        }
    }

    /// A fault ended: recorded, and every invariant is checked once no fault runs any more
    /// (an invariant holds of a machine left alone, not of one another fault is under).
    fn fault_ended(
        &mut self,
        started: Started,
        ended: Ended,
        checks: &mut FuturesUnordered<Execution<'a>>,
        faults: &mut FuturesUnordered<Execution<'a>>,
    ) {
        self.record(started, ended);
        if !faults.is_empty() {
            self.start_queued(checks, faults);
            return;
        }
        for i in 0..self.shared.soak.events.len() {
            if self.shared.soak.events[i].invariant && !self.stopped {
                let now = self.start.elapsed();
                self.due(i, now, "invariant", checks, faults);
            }
        }
        self.start_queued(checks, faults);
    }

    /// Event `i` is due (at `due`, for `why`): started, queued or skipped. After the end,
    /// only invariants still run.
    fn due(
        &mut self,
        i: usize,
        due: Duration,
        why: &'static str,
        checks: &mut FuturesUnordered<Execution<'a>>,
        faults: &mut FuturesUnordered<Execution<'a>>,
    ) {
        if self.ending && why != "invariant" {
            return;
        }
        if self.running[i].is_some() {
            match self.shared.soak.events[i].overlap {
                // A check after a fault is never skipped: it runs once the one running (which
                // saw the fault, not what it left) ends, in place of any periodic one waiting.
                _ if why == "invariant" => {
                    if let Some((due, why)) = self.queued[i].replace((due, why))
                        && why != "invariant"
                    {
                        self.skip(i, due, why);
                    }
                }
                Overlap::Queue if self.queued[i].is_none() => self.queued[i] = Some((due, why)),
                _ => self.skip(i, due, why),
            }
            return;
        }
        let started = self.begin(i, due, why);
        self.running[i] = Some(started.clone());
        let execution = self.execute(started);
        match self.shared.soak.events[i].action {
            Action::Fault { .. } => faults.push(execution),
            Action::Guest { .. } | Action::Host { .. } => checks.push(execution),
        }
    }

    /// Event `i`, due while its previous run still runs, does not run this time.
    fn skip(&mut self, i: usize, due: Duration, why: &'static str) {
        let skipped = self.begin(i, due, why);
        self.record(
            skipped,
            Ended::not_run("skipped", "its previous run was still running"),
        );
    }

    fn start_queued(
        &mut self,
        checks: &mut FuturesUnordered<Execution<'a>>,
        faults: &mut FuturesUnordered<Execution<'a>>,
    ) {
        for i in 0..self.queued.len() {
            if self.running[i].is_none()
                && !self.stopped
                && let Some((due, why)) = self.queued[i].take()
            {
                self.due(i, due, why, checks, faults);
            }
        }
    }

    fn begin(&mut self, i: usize, due: Duration, why: &'static str) -> Started {
        self.runs[i] += 1;
        Started {
            event: i,
            run: self.runs[i],
            why,
            due,
            started: self.start.elapsed(),
        }
    }

    /// The execution of a started event.
    fn execute(&self, started: Started) -> Execution<'a> {
        let shared = self.shared;
        let event = &shared.soak.events[started.event];
        Box::pin(async move {
            let no_machine = |m: &str| Ended::failed(format!("no machine {m}"), String::new());
            let ended = match &event.action {
                Action::Guest { machine, script } => match shared.find(machine) {
                    Some(m) => execute::in_machine(m, shared.exports, script, event.timeout).await,
                    None => no_machine(machine),
                },
                Action::Fault { machine, fault } => match shared.find(machine) {
                    Some(m) => fault::fault(m, *fault, shared.terms).await,
                    None => no_machine(machine),
                },
                Action::Host { script } => {
                    let output = shared
                        .attempt
                        .dir
                        .join("soak")
                        .join(format!("{}.{}.txt", event.name, started.run));
                    let (ended, allowed) = execute::on_host(execute::OnHost {
                        attempt: shared.attempt,
                        machines: shared.machines,
                        script,
                        timeout: event.timeout,
                        output: &output,
                    })
                    .await;
                    shared.allowed.lock().expect("poisoned").extend(allowed);
                    ended
                }
            };
            (started, ended)
        })
    }

    /// Record an execution that ended: the test's output, an event, the kill switch.
    fn record(&mut self, s: Started, ended: Ended) {
        let e = &self.shared.soak.events[s.event];
        if self.running[s.event]
            .as_ref()
            .is_some_and(|r| r.run == s.run)
        {
            self.running[s.event] = None;
        }
        let run = SoakRun {
            name: e.name.clone(),
            run: s.run,
            why: s.why.to_string(),
            due: s.due,
            // It ran once it had its machine (after a reboot, if one had it).
            started: s.started + ended.waited,
            duration: ended.took,
            outcome: ended.outcome.to_string(),
            detail: ended.detail,
            tail: ended.tail,
        };
        let detail = if run.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", run.detail)
        };
        self.log.note(&format!(
            "soak: {} #{} ({}, due {:.1}s, started {:.1}s) {} in {:.1}s{detail}",
            run.name,
            run.run,
            run.why,
            run.due.as_secs_f64(),
            run.started.as_secs_f64(),
            run.outcome,
            run.duration.as_secs_f64()
        ));
        if run.failed() {
            for line in run.tail.lines() {
                self.log
                    .note(&format!("soak: {} #{} | {line}", run.name, run.run));
            }
            self.failures.push(run.clone());
            if !self.shared.soak.keep_going && !self.stopped {
                self.stopped = true;
                self.log.note(&format!(
                    "vmcheck: soak stopped at {:.1}s: {} #{} failed (soak.keep_going = true \
                     goes on)",
                    self.start.elapsed().as_secs_f64(),
                    run.name,
                    run.run
                ));
            }
        }
        (self.log.live)(Progress::Soak(&run));
        self.done[s.event].push(run);
    }

    fn workload_ended(&mut self, load: Load, ended: Ended) {
        let what = match load {
            Load::Guest => "the test's own script",
            Load::Host => "the test's own host script",
        };
        if ended.outcome == "passed" {
            self.log
                .note(&format!("vmcheck: soak: {what} ended before the soak did"));
            return;
        }
        self.log.note(&format!(
            "vmcheck: soak: {what} {}: {}",
            ended.outcome, ended.detail
        ));
        for line in ended.tail.lines() {
            self.log.note(&format!("soak: workload | {line}"));
        }
        self.failures.push(SoakRun {
            name: "workload".into(),
            run: 1,
            why: "workload".into(),
            due: Duration::ZERO,
            started: Duration::ZERO,
            duration: ended.took,
            outcome: ended.outcome.into(),
            detail: ended.detail,
            tail: ended.tail,
        });
        if !self.shared.soak.keep_going {
            self.stopped = true;
        }
    }

    /// Per event: runs, failures, skips, the slowest; into the test's output.
    fn summary(&self) {
        self.log
            .note("vmcheck: soak events (runs, failed, skipped, slowest):");
        for (e, done) in self.shared.soak.events.iter().zip(&self.done) {
            let failed = done.iter().filter(|r| r.failed()).count();
            let skipped = done.iter().filter(|r| r.outcome == "skipped").count();
            let slowest = done.iter().map(|r| r.duration).max().unwrap_or_default();
            self.log.note(&format!(
                "  {:<20} {:>4} {:>4} {:>4} {:>7.1}s",
                e.name,
                done.len(),
                failed,
                skipped,
                slowest.as_secs_f64()
            ));
        }
    }

    fn verdict(&self) -> AttemptOutcome {
        match self.failures.first() {
            None => AttemptOutcome::Passed,
            Some(first) => {
                let more = match self.failures.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                AttemptOutcome::failed(format!(
                    "soak event {} #{} {}{}{more}",
                    first.name,
                    first.run,
                    first.outcome,
                    if first.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", first.detail)
                    }
                ))
            }
        }
    }
}
