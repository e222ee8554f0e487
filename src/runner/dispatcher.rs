//! The scheduler's driver: carries out what [`DispatcherState`] decides and feeds the
//! results back. Boots and attempts run as tasks that report with plain messages; the loop
//! only wakes on those, on a task's end (a panic or an abort) or on a signal: no sleeps,
//! no polling. It alone emits events, in the order the state returns them.
//!
//! Nondestructive tests run one at a time on each long-lived global machine, in name order
//! (ascending or descending by a hash of TEST_OS, as Cockpit does, to expose order
//! dependence). A global machine that timed out or failed is replaced with the same
//! configuration. Destructive tests get fresh machines, admitted against the ledger,
//! longest first by estimated duration. Nondestructive and destructive work run side by
//! side: the global machines get the share of the job slots that the waiting
//! nondestructive work is of all waiting work ([`order`](super::order)); they are booted
//! as that share asks and retired when no nondestructive test waits. A nondestructive test
//! that needs more than the usual machine (an autopkgtest's dependencies) runs on global
//! machines of its own [pool](super::pools).

use super::attempt::{AttemptContext, AttemptRequest, LiveOutput, Machines, Progress, run_attempt};
use super::ledger::Cost;
use super::order::Weight;
use super::pools::{Pool, Pools};
use super::state::{
    Action, Booted, CancelReason, DispatcherState, KnownIssue, Msg, RetryData, SoakMsg,
    StateConfig, TestSpec, UnitId,
};
use crate::checkfile::TestDef;
use crate::events::{BootOrigin, Event, RunStats, TestInfo};
use crate::machine::Machine;
use crate::machine::error::MachineError;
use crate::machine::qemu::QEMU_OVERHEAD_MIB;
use crate::machine::remote::RemoteMachine;
use crate::machine::ssh::SshTarget;
use crate::machine::vm::{MachineSpec, VirtualMachine};
use crate::planning::estimate::Estimates;
use crate::planning::plan::TestPlan;
use crate::policy::PolicyOptions;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};

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
    pub affected: crate::planning::affected::Affected,
    /// Estimated durations (from the duration history): the order of destructive tests
    /// and the number of global machines.
    pub estimates: Estimates,
    /// The shard this run is of a split suite (`--shard`), for the run-started event.
    pub shard: Option<crate::events::ShardInfo>,
    /// The plan is the whole suite (see [`StateConfig::whole_suite`]).
    pub whole_suite: bool,
    /// The command that re-runs tests by name, for the run-started event.
    pub rerun: Vec<String>,
    /// Where and from what the run came, for `run-started` (the outcome store).
    pub run: Option<crate::events::RunMeta>,
}

pub struct Dispatcher<'r> {
    ctx: Arc<AttemptContext>,
    remote: Vec<SshTarget>,
    /// The kinds of global machine, by the index the state knows them by.
    pools: Pools,
    /// Every planned test's id and definition, by index.
    defs: Vec<(usize, Arc<TestDef>)>,
    state: DispatcherState<Machine>,
    tx: mpsc::UnboundedSender<Msg<Machine>>,
    rx: mpsc::UnboundedReceiver<Msg<Machine>>,
    tasks: JoinSet<()>,
    /// The unit each task runs, and how to abort it.
    units: HashMap<Id, UnitId>,
    handles: HashMap<UnitId, AbortHandle>,
    /// Machines being killed; awaited before the run ends.
    kills: JoinSet<()>,
    report: &'r mut dyn FnMut(&Event),
}

/// What a browser on the host takes (Cockpit counts 550 MiB a browser).
pub const BROWSER_MIB: u64 = 550;

/// The cost of a destructive test: its machines' RAM (plus qemu's) and CPUs, and its
/// browser's RAM if it drives one.
pub fn test_cost(def: &TestDef, ctx: &AttemptContext) -> Cost {
    let browser = Cost {
        ram_mib: if def.browser { BROWSER_MIB } else { 0 },
        cpus: 0,
    };
    def.provision.iter().fold(browser, |acc, m| {
        let image = m.image_or(def.os(&ctx.test_os));
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

/// What every event says of planned test `t`.
pub fn test_info(t: &crate::planning::plan::PlannedTest, ctx: &AttemptContext) -> TestInfo {
    TestInfo {
        id: t.id,
        name: t.def.name(),
        file: t.def.file.clone(),
        nondestructive: t.def.nondestructive,
        ram_mib: test_cost(&t.def, ctx).ram_mib,
        os: t.def.os.clone(),
    }
}

impl<'r> Dispatcher<'r> {
    pub fn new(
        plan: TestPlan,
        cfg: RunConfig,
        ctx: Arc<AttemptContext>,
        report: &'r mut dyn FnMut(&Event),
    ) -> Dispatcher<'r> {
        let oses = crate::planning::plan::run_oses(&ctx.test_os);
        let mut pools = Pools::new(Pool {
            os: oses[0].to_owned(),
            memory_mib: cfg.nd_memory_mib,
            cpus: cfg.nd_cpus,
            layer: None,
            isolated: false,
            forward: Vec::new(),
        });
        let specs = plan
            .tests
            .iter()
            .map(|t| {
                let cost = test_cost(&t.def, &ctx);
                let os = t.def.os(&ctx.test_os);
                let pool = if t.def.nondestructive {
                    pools.of(&t.def, os)
                } else {
                    0
                };
                TestSpec {
                    info: test_info(t, &ctx),
                    method: t.def.method.clone(),
                    cost,
                    beside: Cost {
                        ram_mib: if t.def.nondestructive && t.def.browser {
                            BROWSER_MIB
                        } else {
                            0
                        },
                        cpus: 0,
                    },
                    weight: Weight {
                        estimate: cfg.estimates.duration(&t.def.name()),
                        timeout: t.def.timeout,
                        machines: t.def.provision.len(),
                    },
                    todo: t.def.todo_reason(os).map(str::to_owned),
                    affected: !t.def.no_retry_when_changed
                        && !cfg.affected.reasons(&t.def.file).is_empty(),
                    skip: t.skip_reason.clone(),
                    pool,
                    series: t.def.repeat.map(|_| t.def.base_name()),
                    no_retry_fail: t.def.soak.is_some(),
                }
            })
            .collect();
        let pool_costs = pools
            .iter()
            .map(|p| {
                let mem = p
                    .memory_mib
                    .or(ctx.images.get(&p.os).map(|i| i.manifest.boot.memory_mib))
                    .unwrap_or(512);
                Cost {
                    ram_mib: u64::from(mem) + QEMU_OVERHEAD_MIB,
                    cpus: p.cpus,
                }
            })
            .collect();
        let known = oses
            .iter()
            .flat_map(|os| ctx.naughty.for_os(os).into_iter().map(move |n| (os, n)))
            .map(|(os, n)| KnownIssue {
                os: os.to_string(),
                issue: n.issue,
                path: n
                    .path
                    .strip_prefix(&ctx.workdir)
                    .unwrap_or(&n.path)
                    .to_path_buf(),
                pattern: n.pattern.clone(),
            })
            .collect();
        let state = DispatcherState::new(
            specs,
            StateConfig {
                test_os: ctx.test_os.clone(),
                jobs: cfg.jobs,
                capacity: cfg.capacity,
                pools: pool_costs,
                remote: cfg
                    .remote
                    .iter()
                    .map(|t| format!("{}:{}", t.host, t.port))
                    .collect(),
                policy: cfg.policy,
                boot: cfg.estimates.boot,
                descending: crate::planning::plan::nondestructive_descending(&ctx.test_os),
                known,
                shard: cfg.shard,
                whole_suite: cfg.whole_suite,
                rerun: cfg.rerun,
                run: cfg.run,
            },
        );
        let (tx, rx) = mpsc::unbounded_channel();
        Dispatcher {
            ctx,
            remote: cfg.remote,
            pools,
            defs: plan.tests.iter().map(|t| (t.id, t.def.clone())).collect(),
            state,
            tx,
            rx,
            tasks: JoinSet::new(),
            units: HashMap::new(),
            handles: HashMap::new(),
            kills: JoinSet::new(),
            report,
        }
    }

    /// Run the plan to the end (or until cancelled) and return the statistics.
    pub async fn run(mut self) -> RunStats {
        let actions = self.state.start(Instant::now());
        if let Some(stats) = self.execute(actions).await {
            return stats;
        }
        let mut cancel_told = false;
        loop {
            let msg = tokio::select! {
                Some(msg) = self.rx.recv() => msg,
                Some(joined) = self.tasks.join_next_with_id() => match self.reaped(joined) {
                    Some(msg) => msg,
                    None => continue,
                },
                _ = self.ctx.cancel.cancelled(), if !cancel_told => {
                    cancel_told = true;
                    Msg::Cancel(match (self.ctx.cancel.signal(), self.ctx.cancel.stop_reason()) {
                        (Some(s), _) => CancelReason::Signal(s),
                        (None, Some(why)) => CancelReason::Stopped(why),
                        (None, None) => CancelReason::Requested,
                    })
                }
            };
            let actions = self.state.handle(Instant::now(), msg);
            if let Some(stats) = self.execute(actions).await {
                return stats;
            }
        }
    }

    /// Carry out the state's actions in order; the statistics once the run is over.
    async fn execute(&mut self, actions: Vec<Action<Machine>>) -> Option<RunStats> {
        let mut finished = None;
        for action in actions {
            match action {
                Action::Emit(event) => (self.report)(&event),
                Action::Boot {
                    unit,
                    slot,
                    label,
                    pool,
                } => self.spawn_boot(unit, slot, label, pool),
                Action::Attempt {
                    unit,
                    test,
                    retry,
                    machine,
                    ..
                } => self.spawn_attempt(unit, test, retry, machine),
                Action::Kill(machine) => {
                    self.kills.spawn(machine.kill());
                }
                Action::Abort(unit) => {
                    if let Some(h) = self.handles.get(&unit) {
                        h.abort();
                    }
                }
                Action::Finish(stats) => {
                    // Machines still being killed: their files go before the run ends.
                    while self.kills.join_next().await.is_some() {}
                    finished = Some(stats);
                }
            }
        }
        finished
    }

    /// A task ended. Boots and attempts report through messages first; a task that ended
    /// without reporting panicked or was aborted.
    fn reaped(&mut self, joined: Result<(Id, ()), JoinError>) -> Option<Msg<Machine>> {
        let id = match &joined {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let unit = self.units.remove(&id)?;
        self.handles.remove(&unit);
        match joined {
            Ok(_) => None,
            Err(e) if e.is_cancelled() => Some(Msg::Aborted { unit }),
            Err(e) => Some(Msg::Panicked {
                unit,
                message: e.to_string(),
            }),
        }
    }

    fn spawn(&mut self, unit: UnitId, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.units.insert(handle.id(), unit);
        self.handles.insert(unit, handle);
    }

    fn spawn_boot(&mut self, unit: UnitId, slot: usize, label: String, pool: usize) {
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        let remote = self.remote.get(slot).cloned();
        let pool = self.pools.get(pool).clone();
        self.spawn(unit, async move {
            let result = match remote {
                Some(target) => {
                    let started = Instant::now();
                    RemoteMachine::connect(&label, target, ctx.boot_timeout, &ctx.cancel)
                        .await
                        .map(|m| Booted {
                            machine: Machine::Remote(Box::new(m)),
                            image: super::EXISTING_HOST.into(),
                            origin: BootOrigin::Existing,
                            took: started.elapsed(),
                        })
                }
                None => {
                    let _booting = ctx.boots.enter(pool.cpus).await;
                    let started = Instant::now();
                    boot_global(&ctx, &label, pool).await.map(|vm| {
                        let image = vm.image.short_id();
                        let machine = Machine::Virtual(Box::new(vm));
                        Booted {
                            image,
                            origin: machine.origin(),
                            machine,
                            took: started.elapsed(),
                        }
                    })
                }
            };
            let result = result.map_err(|e| e.to_string());
            let _ = tx.send(Msg::Booted { unit, result });
        });
    }

    fn spawn_attempt(
        &mut self,
        unit: UnitId,
        test: usize,
        retry: RetryData,
        machine: Option<Machine>,
    ) {
        let (id, def) = &self.defs[test];
        let req = AttemptRequest {
            test: def.clone(),
            id: *id,
            attempt: retry.attempt,
            max_attempts: retry.total_attempts,
            machines: match machine {
                Some(machine) => Machines::Global { machine },
                None => Machines::Fresh,
            },
        };
        let (ctx, tx) = (self.ctx.clone(), self.tx.clone());
        let out = tx.clone();
        let live: LiveOutput = Arc::new(move |progress: Progress<'_>| {
            let _ = out.send(match progress {
                Progress::Output(data) => Msg::Output {
                    unit,
                    data: data.to_vec(),
                },
                Progress::Running(machines) => Msg::Running {
                    unit,
                    machines: machines.to_vec(),
                },
                Progress::SoakStarted(duration, seed, events) => Msg::Soak {
                    unit,
                    soak: SoakMsg::Started {
                        duration,
                        seed,
                        events: events.to_vec(),
                    },
                },
                Progress::Soak(run) => Msg::Soak {
                    unit,
                    soak: SoakMsg::Run(run.clone()),
                },
            });
        });
        self.spawn(unit, async move {
            let done = run_attempt(ctx, req, live).await;
            let _ = tx.send(Msg::AttemptDone {
                unit,
                report: done.report,
                machine: done.global,
            });
        });
    }
}

async fn boot_global(
    ctx: &AttemptContext,
    label: &str,
    pool: Pool,
) -> Result<VirtualMachine, MachineError> {
    let host = ctx.host.as_ref().ok_or_else(|| MachineError::Failed {
        label: label.to_string(),
        message: "no qemu host".into(),
    })?;
    let image = ctx
        .images
        .get(&pool.os)
        .cloned()
        .ok_or_else(|| MachineError::Failed {
            label: label.to_string(),
            message: format!("image {} was not prepared", pool.os),
        })?;
    let spec = MachineSpec {
        label: label.to_string(),
        image,
        memory_mib: pool.memory_mib,
        cpus: pool.cpus,
        private_net: None,
        isolated: pool.isolated,
        cold_boot: ctx.cold_boot,
        layer: pool.layer,
        revive: None,
        forward: pool.forward,
    };
    let mut vm = VirtualMachine::start(host, spec).await?;
    vm.wait_boot(ctx.boot_timeout, &ctx.cancel).await?;
    vm.shell()
        .execute(&format!("hostname {label}"), Duration::from_secs(30))
        .await?;
    Ok(vm)
}
