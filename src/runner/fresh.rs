//! A destructive test's own machines: booted in parallel (each first through the boot
//! gate), named, given their host names and, when there are several, their private network:
//! a switch of the attempt's (`net.rs`) and `10.111.0.N/24` on each machine's `eth1`.

use super::attempt::{AttemptContext, AttemptRequest, Log, Named};
use super::net::Network;
use super::outcomes::command_problem;
use crate::machine::Machine;
use crate::machine::error::MachineError;
use crate::machine::vm::{MachineSpec, VirtualMachine};
use crate::shell::quote;
use std::time::{Duration, Instant};

/// A failed boot: the error, and the machines that were started (for `--sit`).
pub(super) type BootFailure = (MachineError, Vec<Named>);

/// Boot a destructive test's machines in parallel; configure hostnames and, for several
/// machines, a private network (`10.111.0.N/24` on `eth1`).
pub(super) async fn boot_fresh(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    log: &Log,
) -> Result<(Vec<Named>, Option<Network>), BootFailure> {
    let mut started: Vec<Named> = Vec::new();
    match boot_machines(ctx, req, log, &mut started).await {
        Ok(net) => Ok((started, net)),
        Err(e) => Err((e, started)),
    }
}

async fn boot_machines(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    log: &Log,
    started: &mut Vec<Named>,
) -> Result<Option<Network>, MachineError> {
    let test = &req.test;
    let host = ctx.host.as_ref().ok_or_else(|| MachineError::Failed {
        label: test.name(),
        message: "destructive tests need machines vmcheck boots (not --machine)".into(),
    })?;
    let multi = test.provision.len() > 1;
    let net = if multi {
        let names: Vec<String> = test.provision.iter().map(|p| p.name.clone()).collect();
        let seed = super::net::seed(&test.name(), req.attempt);
        Some(
            Network::create(&names, seed).map_err(|source| MachineError::Io {
                label: test.name(),
                context: "setting up the private network".into(),
                source,
            })?,
        )
    } else {
        None
    };
    // Boots run concurrently inside this task, not as tasks of their own: when the attempt is
    // aborted (Ctrl-C), dropping it drops every machine, before the run ends.
    let boots = futures_util::stream::FuturesUnordered::new();
    let (layer, isolated) = super::pools::extras(test);
    for (i, mreq) in test.provision.iter().enumerate() {
        let image_name = mreq.image_or(test.os(&ctx.test_os)).to_owned();
        let image = ctx
            .images
            .get(&image_name)
            .cloned()
            .ok_or_else(|| MachineError::Failed {
                label: mreq.name.clone(),
                message: format!("image {image_name} was not prepared"),
            })?;
        let spec = MachineSpec {
            label: format!("t{}-{}", req.id, mreq.name),
            image,
            memory_mib: mreq.memory_mib,
            cpus: mreq.cpus,
            private_net: net
                .as_ref()
                .map(|n| n.nic(i, format!("52:54:01:00:00:{:02x}", i + 1))),
            cold_boot: ctx.cold_boot,
            layer: layer.clone(),
            revive: None,
            forward: mreq.forward.clone(),
            isolated,
        };
        let vcpus = mreq.cpus;
        boots.push(async move {
            let _booting = ctx.boots.enter(vcpus).await;
            let t0 = Instant::now();
            let mut vm = VirtualMachine::start(host, spec).await?;
            let booted = vm
                .wait_boot(ctx.boot_timeout, &ctx.cancel)
                .await
                .map(|_| ());
            Ok::<_, MachineError>((i, vm, booted, t0.elapsed()))
        });
    }
    let mut first_error = None;
    let mut boots = std::pin::pin!(boots);
    while let Some(result) = futures_util::StreamExt::next(&mut boots).await {
        let (i, vm, booted, took) = match result {
            Ok(x) => x,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let name = test.provision[i].name.clone();
        match booted {
            Ok(()) => log.note(&format!(
                "vmcheck: {name} booted ({}) in {:.1}s",
                vm.image.short_id(),
                took.as_secs_f64()
            )),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        started.push(Named {
            name,
            machine: Machine::Virtual(Box::new(vm)),
            ip: multi.then(|| format!("10.111.0.{}", i + 1)),
        });
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // In provision order, machine1 first.
    started.sort_by_key(|m| test.provision.iter().position(|p| p.name == m.name));
    for m in started.iter() {
        set_up(m).await?;
    }
    Ok(net)
}

/// Give a booted machine its host name and its address on the private network; again after
/// each reboot, which forgets both.
pub(super) async fn set_up(m: &Named) -> Result<(), MachineError> {
    let mut cmd = format!("hostname {}", quote(&m.name));
    if let Some(ip) = &m.ip {
        cmd.push_str(&format!(
            " && ip link set eth1 up && ip addr add {ip}/24 dev eth1"
        ));
    }
    let done = m
        .machine
        .shell()
        .execute(&cmd, Duration::from_secs(30))
        .await;
    match command_problem(done, "setting up the machine") {
        None => Ok(()),
        Some(problem) => Err(MachineError::Failed {
            label: m.machine.label().to_string(),
            message: problem,
        }),
    }
}
