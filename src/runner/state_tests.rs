//! The state machine driven by scripted and by random message orders, with machines as
//! plain numbers: the cancel race, retries and boots after a cancel, repeated results, a
//! host that does not answer, and every planned test finished exactly once on every path.

use super::*;

type M = u32;

fn info(id: usize, nondestructive: bool) -> TestInfo {
    TestInfo {
        id,
        name: format!("TestA.test{id}"),
        file: "test/verify/check-a".into(),
        nondestructive,
        ram_mib: 0,
        os: None,
    }
}

fn spec(id: usize, nondestructive: bool) -> TestSpec {
    TestSpec {
        info: info(id, nondestructive),
        method: format!("test{id}"),
        cost: Cost {
            ram_mib: 600,
            cpus: 1,
        },
        beside: Cost::default(),
        weight: Weight {
            estimate: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            machines: 1,
        },
        todo: None,
        affected: false,
        skip: None,
        pool: 0,
        series: None,
        no_retry_fail: false,
    }
}

fn config(jobs: usize, remote: &[&str]) -> StateConfig {
    StateConfig {
        test_os: "busybox".into(),
        jobs,
        capacity: Cost {
            ram_mib: 8000,
            cpus: jobs as u32,
        },
        pools: vec![Cost {
            ram_mib: 600,
            cpus: 1,
        }],
        remote: remote.iter().map(|s| s.to_string()).collect(),
        policy: PolicyOptions::default(),
        boot: Duration::from_secs(2),
        descending: false,
        known: Vec::new(),
        shard: None,
        whole_suite: true,
        rerun: vec![],
        run: None,
    }
}

fn report(outcome: AttemptOutcome) -> AttemptReport {
    AttemptReport {
        attempt: 0,
        outcome,
        output: String::new(),
        duration: Duration::from_secs(1),
        machines: Vec::new(),
        artifacts: None,
        known: KnownIssues::default(),
        start_ms: None,
        boot: None,
    }
}

fn passed() -> AttemptReport {
    report(AttemptOutcome::Passed)
}

fn failed() -> AttemptReport {
    report(AttemptOutcome::failed("exit code 1"))
}

fn booted(machine: M) -> Result<Booted<M>, String> {
    Ok(Booted {
        machine,
        image: "busybox-1234".into(),
        origin: BootOrigin::Cold,
        took: Duration::from_secs(1),
    })
}

/// A unit the fake driver runs.
#[derive(Debug, Clone)]
enum Pending {
    Boot { pool: usize },
    Attempt { machine: Option<M> },
}

/// A driver without machines: it records what the state asks for and checks, on every
/// action, what must never happen.
struct Sim {
    state: DispatcherState<M>,
    now: Instant,
    events: Vec<Event>,
    pending: BTreeMap<UnitId, Pending>,
    /// Units asked to abort.
    aborting: BTreeSet<UnitId>,
    /// Machines up and not killed (held by the state or by an attempt).
    alive: BTreeSet<M>,
    next_machine: M,
    /// Attempt actions: (test index, attempt number).
    attempts: Vec<(usize, RetryData)>,
    /// The pool of every test, and of every global machine booted.
    test_pools: Vec<usize>,
    machine_pools: BTreeMap<M, usize>,
    cancelled: bool,
    stats: Option<RunStats>,
}

impl Sim {
    fn new(tests: Vec<TestSpec>, cfg: StateConfig) -> Sim {
        let now = Instant::now();
        let test_pools = tests.iter().map(|t| t.pool).collect();
        let mut sim = Sim {
            state: DispatcherState::new(tests, cfg),
            now,
            events: Vec::new(),
            pending: BTreeMap::new(),
            aborting: BTreeSet::new(),
            alive: BTreeSet::new(),
            next_machine: 0,
            attempts: Vec::new(),
            test_pools,
            machine_pools: BTreeMap::new(),
            cancelled: false,
            stats: None,
        };
        let actions = sim.state.start(now);
        sim.apply(actions);
        sim
    }

    fn apply(&mut self, actions: Vec<Action<M>>) {
        for a in actions {
            assert!(
                self.stats.is_none() || matches!(&a, Action::Emit(Event::RunFinished { .. })),
                "an action after the run finished: {a:?}"
            );
            match a {
                Action::Emit(e) => self.events.push(e),
                Action::Boot { unit, pool, .. } => {
                    assert!(!self.cancelled, "a boot after the cancel");
                    assert!(self.pending.insert(unit, Pending::Boot { pool }).is_none());
                }
                Action::Attempt {
                    unit,
                    test,
                    retry,
                    machine,
                    ..
                } => {
                    assert!(!self.cancelled, "an attempt after the cancel");
                    if let Some(m) = machine {
                        assert_eq!(
                            self.machine_pools[&m], self.test_pools[test],
                            "test {test} on a machine of another pool"
                        );
                    }
                    self.attempts.push((test, retry));
                    assert!(
                        self.pending
                            .insert(unit, Pending::Attempt { machine })
                            .is_none()
                    );
                }
                Action::Kill(m) => assert!(self.alive.remove(&m), "machine {m} killed twice"),
                Action::Abort(unit) => {
                    self.aborting.insert(unit);
                }
                Action::Finish(stats) => self.stats = Some(stats),
            }
        }
    }

    fn send(&mut self, msg: Msg<M>) {
        self.now += Duration::from_millis(100);
        let actions = self.state.handle(self.now, msg);
        self.apply(actions);
    }

    fn cancel(&mut self) {
        self.cancelled = true;
        self.send(Msg::Cancel(CancelReason::Signal(libc::SIGINT)));
    }

    fn machine(&mut self) -> M {
        self.next_machine += 1;
        self.alive.insert(self.next_machine);
        self.next_machine
    }

    fn units(&self, boot: bool) -> Vec<UnitId> {
        self.pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Boot { .. }) == boot)
            .map(|(u, _)| *u)
            .collect()
    }

    /// The first pending boot succeeds.
    fn boot_ok(&mut self) -> M {
        let unit = self.units(true)[0];
        self.boot_done(unit)
    }

    /// Boot `unit` succeeds: a machine of the pool it was asked for.
    fn boot_done(&mut self, unit: UnitId) -> M {
        let Some(Pending::Boot { pool }) = self.pending.remove(&unit) else {
            panic!("{unit:?} is not a boot")
        };
        let m = self.machine();
        self.machine_pools.insert(m, pool);
        self.send(Msg::Booted {
            unit,
            result: booted(m),
        });
        m
    }

    fn boot_fails(&mut self, unit: UnitId) {
        self.pending.remove(&unit);
        self.send(Msg::Booted {
            unit,
            result: Err("connection refused".into()),
        });
    }

    /// Attempt `unit` ends with `report`; its global machine comes back healthy.
    fn done(&mut self, unit: UnitId, report: AttemptReport) {
        let Some(Pending::Attempt { machine, .. }) = self.pending.remove(&unit) else {
            panic!("{unit:?} is not a running attempt")
        };
        self.send(Msg::AttemptDone {
            unit,
            report,
            machine: machine.map(|m| (m, Health::Good)),
        });
    }

    fn aborted(&mut self, unit: UnitId) {
        if let Some(Pending::Attempt {
            machine: Some(m), ..
        }) = self.pending.remove(&unit)
        {
            // Dropping the task drops its machine.
            self.alive.remove(&m);
        }
        self.send(Msg::Aborted { unit });
    }

    fn finished(&self, id: usize) -> Vec<&Verdict> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::TestFinished { test, verdict, .. } if test.id == id => Some(verdict),
                _ => None,
            })
            .collect()
    }

    /// What must hold once the run is over.
    fn check_end(&self, planned: usize) {
        assert!(self.stats.is_some(), "the run did not finish");
        assert!(self.state.finished());
        for id in 1..=planned {
            assert_eq!(self.finished(id).len(), 1, "test {id}: {:#?}", self.events);
        }
        let finished = self
            .events
            .iter()
            .filter(|e| matches!(e, Event::RunFinished { .. }))
            .count();
        assert_eq!(finished, 1);
        assert!(matches!(
            self.events.last(),
            Some(Event::RunFinished { .. })
        ));
        assert!(self.alive.is_empty(), "machines left: {:?}", self.alive);
        let stats = self.stats.as_ref().unwrap();
        assert_eq!(stats.finished(), planned);
    }
}

#[test]
fn results_queued_before_a_cancel_do_not_finish_a_test_again() {
    // One nondestructive test on a global machine, one destructive test: both running.
    let mut sim = Sim::new(vec![spec(1, true), spec(2, false)], config(2, &[]));
    sim.boot_ok();
    let attempts = sim.units(false);
    assert_eq!(attempts.len(), 2, "{:?}", sim.pending);
    // The cancel is handled first; their results were already queued behind it.
    sim.cancel();
    assert_eq!(sim.finished(1).len(), 1);
    assert_eq!(sim.finished(2).len(), 1);
    assert!(
        sim.aborting
            .is_superset(&attempts.iter().copied().collect())
    );
    sim.done(attempts[0], failed());
    sim.send(Msg::Output {
        unit: attempts[1],
        data: b"late".to_vec(),
    });
    sim.done(attempts[1], passed());
    assert!(
        !sim.events
            .iter()
            .any(|e| matches!(e, Event::AttemptRetry { .. } | Event::TestOutput { .. })),
        "{:#?}",
        sim.events
    );
    sim.check_end(2);
    assert!(matches!(
        sim.finished(1)[0],
        Verdict::Error { message } if message == "interrupted by SIGINT"
    ));
}

#[test]
fn a_failed_boot_after_a_cancel_starts_no_boot() {
    let mut sim = Sim::new(vec![spec(1, true), spec(2, true)], config(1, &[]));
    let boot = sim.units(true)[0];
    sim.cancel();
    // The boot failed before the abort reached it: a live run would boot again.
    sim.boot_fails(boot);
    sim.check_end(2);
}

#[test]
fn a_boot_that_succeeds_after_a_cancel_is_killed() {
    let mut sim = Sim::new(vec![spec(1, true)], config(1, &[]));
    sim.cancel();
    sim.boot_ok();
    sim.check_end(1);
    assert!(
        !sim.events
            .iter()
            .any(|e| matches!(e, Event::MachineReady { .. }))
    );
}

#[test]
fn a_second_cancel_only_escalates() {
    let mut sim = Sim::new(vec![spec(1, false)], config(1, &[]));
    let attempt = sim.units(false)[0];
    sim.send(Msg::Cancel(CancelReason::Requested));
    sim.aborting.clear();
    sim.cancel();
    assert!(
        sim.aborting.contains(&attempt),
        "the stronger reason is told"
    );
    sim.aborting.clear();
    sim.send(Msg::Cancel(CancelReason::Requested));
    assert!(sim.aborting.is_empty(), "a weaker one is not");
    sim.aborted(attempt);
    sim.check_end(1);
    let cancelled = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::RunCancelled { .. }))
        .count();
    assert_eq!(cancelled, 1);
}

#[test]
fn a_repeated_result_is_ignored() {
    let mut sim = Sim::new(vec![spec(1, false), spec(2, false)], config(1, &[]));
    let first = sim.units(false)[0];
    sim.done(first, passed());
    // The same result again, and a panic report of the same unit.
    sim.send(Msg::AttemptDone {
        unit: first,
        report: failed(),
        machine: None,
    });
    sim.send(Msg::Panicked {
        unit: first,
        message: "late".into(),
    });
    let second = sim.units(false)[0];
    sim.done(second, passed());
    sim.check_end(2);
    assert_eq!(sim.attempts.len(), 2);
}

/// A run of part of the suite lists, of the known issues that matched nothing, only those
/// that name one of the tests it ran; a whole-suite run lists them all.
#[test]
fn unmatched_known_issues_are_those_the_run_could_have_matched() {
    let on = |os: &str, issue: u64, pattern: &str| KnownIssue {
        os: os.into(),
        issue,
        path: format!("bots/naughty/{os}/{issue}-x").into(),
        pattern: pattern.into(),
    };
    let known = |issue: u64, pattern: &str| on("busybox", issue, pattern);
    for whole_suite in [false, true] {
        let mut cfg = config(1, &[]);
        cfg.whole_suite = whole_suite;
        cfg.known = vec![
            known(1, "*Traceback*in test1*"),
            known(2, "*TestA.test2 failed*"),
            known(3, "*TestOther.testX*"),
            // test1 does not run on that OS.
            on("debian-12", 4, "*TestA.test1 failed*"),
        ];
        let mut skipped = spec(2, false);
        skipped.skip = Some("not here".into());
        let mut sim = Sim::new(vec![spec(1, false), skipped], cfg);
        let unit = sim.units(false)[0];
        sim.done(unit, passed());
        sim.check_end(2);
        let Some(Event::RunFinished {
            unmatched_known, ..
        }) = sim.events.last()
        else {
            panic!("{:?}", sim.events.last())
        };
        let expected: &[&str] = if whole_suite {
            &[
                "#1 bots/naughty/busybox/1-x",
                "#2 bots/naughty/busybox/2-x",
                "#3 bots/naughty/busybox/3-x",
                "#4 bots/naughty/debian-12/4-x",
            ]
        } else {
            &["#1 bots/naughty/busybox/1-x"]
        };
        assert_eq!(unmatched_known, expected, "whole suite: {whole_suite}");
    }
}

#[test]
fn attempts_are_numbered_by_the_state() {
    let mut sim = Sim::new(vec![spec(1, false)], config(1, &[]));
    for n in 1..=3 {
        assert_eq!(
            sim.attempts.last().unwrap(),
            &(
                0,
                RetryData {
                    attempt: n,
                    total_attempts: 3
                }
            )
        );
        let unit = sim.units(false)[0];
        sim.done(unit, failed());
    }
    sim.check_end(1);
    let Some(Event::TestFinished { attempts, .. }) = sim
        .events
        .iter()
        .find(|e| matches!(e, Event::TestFinished { .. }))
    else {
        panic!()
    };
    let numbers: Vec<u32> = attempts.iter().map(|r| r.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "the report's own number is not trusted");
}

#[test]
fn a_panicked_attempt_is_a_harness_failure_of_that_attempt() {
    let mut sim = Sim::new(vec![spec(1, false)], config(1, &[]));
    let unit = sim.units(false)[0];
    sim.pending.remove(&unit);
    sim.send(Msg::Panicked {
        unit,
        message: "boom".into(),
    });
    let retry = sim.events.iter().find_map(|e| match e {
        Event::AttemptRetry { report, .. } => Some(report.clone()),
        _ => None,
    });
    let retry = retry.expect("retried");
    assert_eq!(retry.attempt, 1);
    assert!(matches!(retry.outcome, AttemptOutcome::Harness { .. }));
    let unit = sim.units(false)[0];
    sim.done(unit, passed());
    sim.check_end(1);
}

#[test]
fn an_existing_host_that_refuses_is_given_up_at_once() {
    let mut sim = Sim::new(
        vec![spec(1, true), spec(2, true)],
        config(2, &["a:22", "b:22"]),
    );
    let boots = sim.units(true);
    assert_eq!(boots.len(), 2);
    sim.boot_fails(boots[1]);
    assert_eq!(sim.units(true), [boots[0]], "not connected again");
    sim.boot_fails(boots[0]);
    sim.check_end(2);
    assert!(matches!(
        sim.finished(1)[0],
        Verdict::Error { message } if message.contains("no machine")
    ));
}

#[test]
fn a_host_still_connecting_does_not_hold_the_run() {
    let mut sim = Sim::new(
        vec![spec(1, true), spec(2, true)],
        config(2, &["a:22", "b:22"]),
    );
    let boots = sim.units(true);
    let pending_host = boots[1];
    sim.boot_ok();
    for _ in 0..2 {
        let unit = sim.units(false)[0];
        sim.done(unit, passed());
    }
    // Every test is done: the host that did not answer yet is aborted, not waited for.
    assert!(sim.aborting.contains(&pending_host));
    assert!(sim.stats.is_none(), "its task is still being stopped");
    sim.aborted(pending_host);
    sim.check_end(2);
    assert_eq!(sim.finished(1), [&Verdict::Passed]);
}

#[test]
fn nondestructive_tests_run_on_machines_of_their_pool() {
    let tests: Vec<TestSpec> = [1, 0, 1, 2]
        .iter()
        .enumerate()
        .map(|(i, &pool)| TestSpec {
            pool,
            ..spec(i + 1, true)
        })
        .collect();
    let mut cfg = config(2, &[]);
    cfg.pools = vec![cfg.pools[0]; 3];
    // Boots as slow as the tests: one machine is worth it for each pool.
    cfg.boot = Duration::from_secs(60);
    let mut sim = Sim::new(tests, cfg);
    // One machine for each pool, as the two job slots admit: the first waiting tests' (1,
    // then 0).
    let pools = |sim: &Sim| -> Vec<usize> {
        sim.pending
            .values()
            .filter_map(|p| match p {
                Pending::Boot { pool } => Some(*pool),
                _ => None,
            })
            .collect()
    };
    assert_eq!(pools(&sim), [1, 0]);
    let m1 = sim.boot_ok();
    let m0 = sim.boot_ok();
    // Each runs a test of its own pool (the Sim checks every attempt's machine).
    let running: Vec<UnitId> = sim.units(false);
    assert_eq!(running.len(), 2);
    for unit in running {
        sim.done(unit, passed());
    }
    // Test 3 (pool 1) goes to m1; m0's pool has nothing left and it retires, making room
    // for a machine of pool 2.
    assert!(
        !sim.alive.contains(&m0),
        "an idle machine of a drained pool retires"
    );
    assert!(sim.alive.contains(&m1));
    assert_eq!(pools(&sim), [2]);
    sim.boot_ok();
    for unit in sim.units(false) {
        sim.done(unit, passed());
    }
    sim.check_end(4);
}

#[test]
fn a_nondestructive_tests_browser_waits_for_room_beside_the_machines() {
    let browser = |id| TestSpec {
        beside: Cost {
            ram_mib: 550,
            cpus: 0,
        },
        ..spec(id, true)
    };
    let mut cfg = config(2, &[]);
    // Two shared machines (600 each) and one browser (550) fit; a second browser does not.
    cfg.capacity = Cost {
        ram_mib: 1800,
        cpus: 2,
    };
    // Boots much quicker than the tests: a machine for each.
    cfg.boot = Duration::from_millis(100);
    let mut sim = Sim::new(vec![browser(1), browser(2)], cfg);
    while !sim.units(true).is_empty() {
        sim.boot_ok();
    }
    assert_eq!(sim.alive.len(), 2, "two shared machines: {:?}", sim.pending);
    let running = sim.units(false);
    assert_eq!(running.len(), 1, "one browser at a time: {:?}", sim.pending);
    sim.done(running[0], passed());
    // The room it took is back: the other one runs (on a machine that waited for it).
    let running = sim.units(false);
    assert_eq!(running.len(), 1, "{:?}", sim.pending);
    sim.done(running[0], passed());
    sim.check_end(2);
}

#[test]
fn a_browser_bigger_than_the_room_left_still_runs_alone() {
    let big = TestSpec {
        beside: Cost {
            ram_mib: 5000,
            cpus: 0,
        },
        ..spec(1, true)
    };
    let mut cfg = config(1, &[]);
    cfg.capacity = Cost {
        ram_mib: 1000,
        cpus: 1,
    };
    let mut sim = Sim::new(vec![big], cfg);
    sim.boot_ok();
    let running = sim.units(false);
    assert_eq!(running.len(), 1, "no browser runs: it may take the room");
    sim.done(running[0], passed());
    sim.check_end(1);
}

#[test]
fn a_pool_that_does_not_boot_fails_only_its_own_tests() {
    let tests = vec![
        TestSpec {
            pool: 1,
            ..spec(1, true)
        },
        spec(2, true),
    ];
    let mut cfg = config(2, &[]);
    cfg.pools = vec![cfg.pools[0]; 2];
    cfg.boot = Duration::from_secs(60);
    let mut sim = Sim::new(tests, cfg);
    let boot_of = |sim: &Sim, pool: usize| {
        sim.pending
            .iter()
            .find(|(_, p)| matches!(p, Pending::Boot { pool: q } if *q == pool))
            .map(|(u, _)| *u)
    };
    for _ in 0..SLOT_FAILURES {
        let unit = boot_of(&sim, 1).expect("pool 1 is booted again");
        sim.boot_fails(unit);
    }
    assert!(boot_of(&sim, 1).is_none());
    assert!(matches!(sim.finished(1)[..], [Verdict::Error { .. }]));
    let unit = boot_of(&sim, 0).unwrap();
    sim.boot_done(unit);
    for unit in sim.units(false) {
        sim.done(unit, passed());
    }
    assert!(matches!(sim.finished(2)[..], [Verdict::Passed]));
    sim.check_end(2);
}

#[test]
fn a_global_boot_is_tried_three_times() {
    let mut sim = Sim::new(vec![spec(1, true)], config(1, &[]));
    for _ in 0..SLOT_FAILURES {
        let boot = sim.units(true)[0];
        sim.boot_fails(boot);
    }
    sim.check_end(1);
    let failures = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::MachineFailed { .. }))
        .count();
    assert_eq!(failures, SLOT_FAILURES as usize);
}

/// A small deterministic generator (xorshift64*), so failures are reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One random run: a random plan, random results delivered in random order, results
/// repeated, tasks panicking, a cancel at a random moment (or none), aborts racing with
/// results.
fn random_run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = 1 + rng.below(8) as usize;
    let mut tests: Vec<TestSpec> = (1..=n)
        .map(|id| {
            let mut t = spec(id, rng.chance(50));
            if rng.chance(10) {
                t.skip = Some("busybox: not here".into());
            }
            t.weight.estimate = Duration::from_secs(1 + rng.below(60));
            t.cost.cpus = 1 + rng.below(2) as u32;
            if t.info.nondestructive {
                t.pool = rng.below(3) as usize;
                if rng.chance(40) {
                    // A browser beside its machine, up to more than the whole host.
                    t.beside.ram_mib = 300 + rng.below(9000);
                }
            }
            t
        })
        .collect();
    let remote: Vec<String> = (0..rng.below(3)).map(|k| format!("h{k}:22")).collect();
    let remote: Vec<&str> = remote.iter().map(String::as_str).collect();
    let mut cfg = config(1 + rng.below(3) as usize, &remote);
    if !remote.is_empty() {
        // Existing hosts serve every test (the state puts every test in pool 0).
        tests.iter_mut().for_each(|t| t.pool = 0);
    }
    cfg.pools = (1..=3)
        .map(|k| Cost {
            ram_mib: 300 * k,
            cpus: 1,
        })
        .collect();
    cfg.policy.no_retry_fail = rng.chance(20);
    let mut sim = Sim::new(tests, cfg);
    let cancel_at = rng.chance(40).then(|| rng.below(30));
    let mut delivered: Vec<UnitId> = Vec::new();
    for step in 0.. {
        assert!(step < 10_000, "seed {seed}: the run does not end");
        if sim.stats.is_some() {
            break;
        }
        if cancel_at == Some(step) {
            sim.cancel();
            continue;
        }
        if !delivered.is_empty() && rng.chance(5) {
            // A result repeated, or a late panic report of an ended unit.
            let unit = delivered[rng.below(delivered.len() as u64) as usize];
            let msg = if rng.chance(50) {
                Msg::AttemptDone {
                    unit,
                    report: failed(),
                    machine: None,
                }
            } else {
                Msg::Panicked {
                    unit,
                    message: "late".into(),
                }
            };
            sim.send(msg);
            continue;
        }
        let units: Vec<UnitId> = sim.pending.keys().copied().collect();
        assert!(
            !units.is_empty(),
            "seed {seed}: nothing runs and the run is not over: {:#?}",
            sim.events
        );
        let unit = units[rng.below(units.len() as u64) as usize];
        delivered.push(unit);
        if sim.aborting.contains(&unit) && rng.chance(70) {
            sim.aborted(unit);
            continue;
        }
        if rng.chance(3) {
            if let Some(Pending::Attempt {
                machine: Some(m), ..
            }) = sim.pending.remove(&unit)
            {
                sim.alive.remove(&m);
            }
            sim.pending.remove(&unit);
            sim.send(Msg::Panicked {
                unit,
                message: "boom".into(),
            });
            continue;
        }
        match sim.pending[&unit].clone() {
            Pending::Boot { .. } => {
                if rng.chance(25) {
                    sim.boot_fails(unit);
                } else {
                    sim.boot_done(unit);
                }
            }
            Pending::Attempt { machine, .. } => {
                sim.pending.remove(&unit);
                if rng.chance(30) {
                    sim.send(Msg::Output {
                        unit,
                        data: b"x".to_vec(),
                    });
                }
                let report = match rng.below(10) {
                    0..=5 => passed(),
                    6..=8 => failed(),
                    _ => report(AttemptOutcome::Harness {
                        message: "SSH connection lost".into(),
                        host_fault: false,
                    }),
                };
                let machine = machine.and_then(|m| match rng.below(3) {
                    0 => Some((m, Health::Good)),
                    1 => Some((m, Health::Broken("timed out".into()))),
                    _ => {
                        sim.alive.remove(&m);
                        None
                    }
                });
                sim.send(Msg::AttemptDone {
                    unit,
                    report,
                    machine,
                });
            }
        }
    }
    sim.check_end(n);
    // No output of a test after its verdict, and no test started twice at once.
    let mut done = BTreeSet::new();
    for e in &sim.events {
        match e {
            Event::TestFinished { test, .. } => {
                done.insert(test.id);
            }
            Event::TestOutput { id, .. } | Event::TestRunning { id, .. } => {
                assert!(!done.contains(id), "seed {seed}: output after the verdict")
            }
            Event::TestStarted { test, .. } | Event::AttemptRetry { test, .. } => {
                assert!(
                    !done.contains(&test.id),
                    "seed {seed}: work after the verdict"
                )
            }
            _ => {}
        }
    }
}

#[test]
fn every_planned_test_finishes_exactly_once_whatever_the_order() {
    for seed in 0..3000 {
        random_run(seed);
    }
}

#[test]
fn until_fail_skips_the_runs_of_a_repeated_test_not_started_at_its_first_failure() {
    // Four runs of one destructive test and one run of another, one at a time.
    let mut tests: Vec<TestSpec> = (1..=4)
        .map(|i| TestSpec {
            series: Some("T.flaky".into()),
            ..spec(i, false)
        })
        .collect();
    tests.push(spec(5, false));
    let mut cfg = config(1, &[]);
    cfg.policy.until_fail = true;
    cfg.policy.no_retry_fail = true;
    let mut sim = Sim::new(tests, cfg);
    let first = sim.units(false)[0];
    sim.done(first, passed());
    let second = sim.units(false)[0];
    sim.done(second, failed());
    // Runs 3 and 4 never start; the other test does.
    let next = sim.units(false);
    assert_eq!(next.len(), 1);
    sim.done(next[0], passed());
    sim.check_end(5);
    let ran: Vec<usize> = sim.attempts.iter().map(|(t, _)| *t).collect();
    assert_eq!(ran.len(), 3, "{ran:?}");
    for id in [3, 4] {
        assert_eq!(
            sim.finished(id),
            [&Verdict::Skipped {
                reason: "stopped: TestA.test2 failed".into()
            }]
        );
    }
    assert_eq!(sim.finished(5), [&Verdict::Passed]);
}

#[test]
fn the_first_test_in_line_says_why_it_waits_once_per_reason() {
    // Room for one 600 MiB test at a time: the second waits for RAM, told once.
    let mut cfg = config(2, &[]);
    cfg.capacity.ram_mib = 1000;
    let mut sim = Sim::new(vec![spec(1, false), spec(2, false)], cfg);
    let waits = |sim: &Sim| -> Vec<(usize, String)> {
        sim.events
            .iter()
            .filter_map(|e| match e {
                Event::TestWaiting { id, reason, .. } => Some((*id, reason.clone())),
                _ => None,
            })
            .collect()
    };
    let first = sim.units(false);
    assert_eq!(first.len(), 1);
    assert_eq!(
        waits(&sim),
        [(2, "needs 0.6 GiB of RAM, 0.4 GiB free".to_string())]
    );
    sim.done(first[0], passed());
    // The second started once the first was done; nothing more was said.
    assert_eq!(sim.units(false).len(), 1);
    assert_eq!(waits(&sim).len(), 1);
    let done = sim.units(false)[0];
    sim.done(done, passed());
    sim.check_end(2);
}
