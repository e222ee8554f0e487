//! Benchmark: how long a fresh machine takes to answer its first command, booted cold and
//! restored from its booted snapshot, measured in one process (no image verification, no
//! process start in the figures).
//! `cargo run --release --example boot_latency -- [IMAGE] [N]` starts IMAGE (default busybox)
//! N times (default 5) each way, one machine at a time, and prints medians in seconds: from
//! `VirtualMachine::start` until `true` has run over SSH (the restore's clock and identity
//! steps included).

use std::time::{Duration, Instant};
mod common;

use vmcheck::machine::host::Host;
use vmcheck::machine::vm::{MachineSpec, VirtualMachine};
use vmcheck::signal::Cancel;

#[tokio::main]
async fn main() {
    let (name, n) = common::image_and_count(5);
    let (image, host) = common::image_and_host(&name).await;
    let cancel = Cancel::new();
    let spec = |cold_boot| common::spec(&image, cold_boot);
    // One start first: it makes the snapshot if there is none yet.
    let (_, restored, _) = first_command(&host, spec(false), &cancel).await;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut cold_steps = Steps::default();
    let mut warm_steps = Steps::default();
    for _ in 0..n {
        let (t, _, steps) = first_command(&host, spec(true), &cancel).await;
        cold.push(t);
        cold_steps.add(steps);
        let (t, restored, steps) = first_command(&host, spec(false), &cancel).await;
        assert!(restored, "a snapshot exists, so the machine is restored");
        warm.push(t);
        warm_steps.add(steps);
    }
    let show = |what: &str, times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        println!(
            "{name}: {what} to the first command, {n} runs: median {:.2} s (min {:.2}, max {:.2})",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
        times[times.len() / 2]
    };
    let c = show("cold boot", &mut cold);
    cold_steps.show();
    let w = show("snapshot restore", &mut warm);
    warm_steps.show();
    println!(
        "{name}: restore is {:.1}x faster than a cold boot{}",
        c / w,
        if restored {
            ""
        } else {
            " (the first start made the snapshot)"
        }
    );
}

/// Each step of the starts (in order), with the time each took in every run.
#[derive(Default)]
struct Steps(Vec<(&'static str, Vec<f64>)>);

impl Steps {
    fn add(&mut self, ends: Vec<(&'static str, f64)>) {
        let mut before = 0.0;
        for (step, end) in ends {
            match self.0.iter_mut().find(|(s, _)| *s == step) {
                Some((_, times)) => times.push(end - before),
                None => self.0.push((step, vec![end - before])),
            }
            before = end;
        }
    }

    /// One line: each step's median duration, in order.
    fn show(&mut self) {
        let parts: Vec<String> = self
            .0
            .iter_mut()
            .map(|(step, times)| {
                times.sort_by(f64::total_cmp);
                format!("{step} +{:.3}", times[times.len() / 2])
            })
            .collect();
        println!("  steps (median s each): {}", parts.join(", "));
    }
}

/// Seconds from start until `true` ran, whether the machine was restored, and when each
/// step of its start ended (the command last).
async fn first_command(
    host: &Host,
    spec: MachineSpec,
    cancel: &Cancel,
) -> (f64, bool, Vec<(&'static str, f64)>) {
    let t = Instant::now();
    let mut vm = VirtualMachine::start(host, spec).await.expect("start");
    vm.wait_boot(Duration::from_secs(180), cancel)
        .await
        .expect("boot");
    common::run_true(&vm).await;
    let secs = t.elapsed().as_secs_f64();
    let restored = vm.restored();
    let mut steps: Vec<_> = vm
        .phases()
        .iter()
        .map(|(s, d)| (*s, d.as_secs_f64()))
        .collect();
    steps.push(("first command", secs));
    vm.kill().await;
    (secs, restored, steps)
}
