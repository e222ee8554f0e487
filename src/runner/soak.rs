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

use super::attempt::Named;
use super::output::{Log, Progress};
use crate::events::{AttemptOutcome, SoakRun};
use crate::machine::error::MachineError;
use crate::machine::shell::Exec;
use crate::machine::ssh::ExitStatus;
use crate::shell::quote;
use crate::soak::schedule::{Why, schedule};
use crate::soak::{Action, Fault, Overlap, Soak};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// What a soak runs with.
pub(super) struct SoakTask<'a> {
    /// Scaled already.
    pub soak: &'a Soak,
    pub seed: u64,
    /// `export K=V` lines of the test's environment, for event scripts.
    pub exports: &'a str,
    /// The test's own guest script, run in machine1 for the duration.
    pub workload: Option<&'a str>,
    /// What the soak may take beyond its duration (the test's `timeout`).
    pub grace: Duration,
}

/// How one execution ended, before it is a [`SoakRun`].
struct Ended {
    outcome: &'static str,
    detail: String,
    tail: String,
    /// How long it ran (measured where it ran, whenever it is recorded).
    took: Duration,
}

impl Ended {
    fn passed() -> Ended {
        Ended {
            outcome: "passed",
            detail: String::new(),
            tail: String::new(),
            took: Duration::ZERO,
        }
    }

    fn failed(detail: String, tail: String) -> Ended {
        Ended {
            outcome: "failed",
            detail,
            tail,
            took: Duration::ZERO,
        }
    }

    /// An execution that did not run to its end (`skipped`, `interrupted`).
    fn not_run(outcome: &'static str, detail: &str) -> Ended {
        Ended {
            outcome,
            detail: detail.into(),
            tail: String::new(),
            took: Duration::ZERO,
        }
    }
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

/// How many bytes of a failed execution's output are kept.
const TAIL: usize = 2000;

/// Run the soak; the attempt's outcome.
pub(super) async fn run_soak(machines: &[Named], log: &Log, task: SoakTask<'_>) -> AttemptOutcome {
    let soak = task.soak;
    let names: Vec<String> = soak.events.iter().map(|e| e.name.clone()).collect();
    (log.live)(Progress::SoakStarted(soak.duration, task.seed, &names));
    log.note(&format!(
        "vmcheck: soak for {:.1}s, {} events, seed {} (--seed {} replays this schedule)",
        soak.duration.as_secs_f64(),
        names.len(),
        task.seed,
        task.seed
    ));
    let limit = soak.duration + task.grace;
    let mut state = State::new(soak, machines, log, task.exports);
    match tokio::time::timeout(limit, state.run(task.seed, task.workload)).await {
        Ok(()) => {}
        Err(_) => {
            log.note(&format!(
                "vmcheck: timed out: the soak took more than its {:.0}s and {}s beyond \
                 (the test's timeout)",
                soak.duration.as_secs_f64(),
                task.grace.as_secs()
            ));
            return AttemptOutcome::TimedOut { after: limit };
        }
    }
    state.summary();
    state.verdict()
}

/// The soak while it runs: which event runs, what waits, what failed.
struct State<'a> {
    soak: &'a Soak,
    machines: &'a [Named],
    log: &'a Log,
    exports: &'a str,
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

impl<'a> State<'a> {
    fn new(soak: &'a Soak, machines: &'a [Named], log: &'a Log, exports: &'a str) -> State<'a> {
        let n = soak.events.len();
        State {
            soak,
            machines,
            log,
            exports,
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

    async fn run(&mut self, seed: u64, workload: Option<&'a str>) {
        let all = schedule(self.soak, seed);
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
        let end = self.start + self.soak.duration;
        let mut checks: FuturesUnordered<Execution<'a>> = FuturesUnordered::new();
        let mut faults: FuturesUnordered<Execution<'a>> = FuturesUnordered::new();
        let machines: &'a [Named] = self.machines;
        let mut load: Option<Pin<Box<dyn Future<Output = Ended> + Send + 'a>>> =
            workload.map(|script| {
                let (machine, exports) = (&machines[0], self.exports);
                let limit = self.soak.duration;
                // Past the end, the soak drops this future first: the limit only bounds a
                // soak that would otherwise not end.
                let limit = limit + Duration::from_secs(60);
                Box::pin(async move { guest(machine, exports, script, limit).await })
                    as Pin<Box<dyn Future<Output = Ended> + Send + 'a>>
            });
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
                mut ended = async { load.as_mut().expect("checked").await }, if load.is_some() => {
                    load = None;
                    ended.took = self.start.elapsed();
                    self.workload_ended(ended);
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
        drop(load);
        if self.stopped {
            // Checks are interrupted at once; faults are never left half done.
            drop(checks);
            for (i, r) in self.running.clone().into_iter().enumerate() {
                if let Some(s) = r
                    && !matches!(self.soak.events[i].action, Action::Fault { .. })
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

    /// A fault ended: recorded, and every invariant is checked.
    fn fault_ended(
        &mut self,
        started: Started,
        ended: Ended,
        checks: &mut FuturesUnordered<Execution<'a>>,
        faults: &mut FuturesUnordered<Execution<'a>>,
    ) {
        self.record(started, ended);
        for i in 0..self.soak.events.len() {
            if self.soak.events[i].invariant && !self.stopped {
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
            match self.soak.events[i].overlap {
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
        match self.soak.events[i].action {
            Action::Fault { .. } => faults.push(execution),
            Action::Guest { .. } => checks.push(execution),
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
        let soak: &'a Soak = self.soak;
        let event = &soak.events[started.event];
        let private = self.machines.iter().any(|m| m.ip.is_some());
        let (machines, exports): (&'a [Named], &'a str) = (self.machines, self.exports);
        Box::pin(async move {
            let t = Instant::now();
            let mut ended = match &event.action {
                Action::Guest { machine, script } => match find(machines, machine) {
                    Some(m) => guest(m, exports, script, event.timeout).await,
                    None => Ended::failed(format!("no machine {machine}"), String::new()),
                },
                Action::Fault { machine, fault } => match find(machines, machine) {
                    Some(m) => do_fault(m, *fault, private).await,
                    None => Ended::failed(format!("no machine {machine}"), String::new()),
                },
            };
            ended.took = t.elapsed();
            (started, ended)
        })
    }

    /// Record an execution that ended: the test's output, an event, the kill switch.
    fn record(&mut self, s: Started, ended: Ended) {
        let e = &self.soak.events[s.event];
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
            started: s.started,
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
            if !self.soak.keep_going && !self.stopped {
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

    fn workload_ended(&mut self, ended: Ended) {
        if ended.outcome == "passed" {
            self.log
                .note("vmcheck: soak: the test's own script ended before the soak did");
            return;
        }
        self.log.note(&format!(
            "vmcheck: soak: the test's own script {}: {}",
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
        if !self.soak.keep_going {
            self.stopped = true;
        }
    }

    /// Per event: runs, failures, skips, the slowest; into the test's output.
    fn summary(&self) {
        self.log
            .note("vmcheck: soak events (runs, failed, skipped, slowest):");
        for (e, done) in self.soak.events.iter().zip(&self.done) {
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
                AttemptOutcome::Failed {
                    status: format!(
                        "soak event {} #{} {}{}{more}",
                        first.name,
                        first.run,
                        first.outcome,
                        if first.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", first.detail)
                        }
                    ),
                }
            }
        }
    }
}

fn find<'m>(machines: &'m [Named], name: &str) -> Option<&'m Named> {
    machines.iter().find(|m| m.name == name)
}

/// The last [`TAIL`] bytes of a command's output, stdout then stderr, on line boundaries.
fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut all = String::from_utf8_lossy(stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(stderr));
    let all = crate::reporter::text::safe_lines(&all).join("\n");
    if all.len() <= TAIL {
        return all;
    }
    let mut cut = all.len() - TAIL;
    while !all.is_char_boundary(cut) {
        cut += 1;
    }
    let rest = &all[cut..];
    rest.split_once('\n').map_or(rest, |(_, r)| r).to_string()
}

fn command(machine: &Named, exports: &str, script: &str) -> String {
    format!(
        "{exports}export VMCHECK_MACHINE={}\nset -e\n{script}",
        quote(&machine.name)
    )
}

/// An event's script in its machine, within its timeout.
async fn guest(machine: &Named, exports: &str, script: &str, timeout: Duration) -> Ended {
    let command = command(machine, exports, script);
    match machine
        .machine
        .shell()
        .run(Exec::new(&command, timeout))
        .await
    {
        Ok(done) => match done.status {
            ExitStatus::Code(0) => Ended::passed(),
            status => Ended::failed(
                status.to_string(),
                tail(&done.output.stdout, &done.output.stderr),
            ),
        },
        Err(MachineError::CommandTimeout { .. }) => Ended {
            outcome: "timed-out",
            detail: format!("after {}s", timeout.as_secs()),
            tail: String::new(),
            took: timeout,
        },
        Err(e) => Ended::failed(e.to_string(), String::new()),
    }
}

/// A QMP command and its arguments.
type QmpCommand = (&'static str, serde_json::Value);

/// How long one QMP command of a fault may take.
const QMP_LIMIT: Duration = Duration::from_secs(10);

/// A fault on `m` from the host: done, held for its duration, undone (the undoing is
/// retried: a machine is never left paused or cut off by a soak).
async fn do_fault(m: &Named, fault: Fault, private: bool) -> Ended {
    let nics: &[&str] = if private && m.ip.is_some() {
        &["n0", "n1"]
    } else {
        &["n0"]
    };
    let (on, off): (Vec<QmpCommand>, Vec<QmpCommand>) = match fault {
        Fault::Pause { .. } => (vec![("stop", json!({}))], vec![("cont", json!({}))]),
        Fault::LinkDown { .. } => (
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
