//! Benchmark: latency of one command over a machine's persistent SSH connection.
//! `cargo run --release --example exec_latency -- [IMAGE] [N]` boots IMAGE (default busybox),
//! runs `true` N times (default 50) and prints the median and quartiles in milliseconds.

use std::time::{Duration, Instant};
mod common;

use vmcheck::machine::vm::VirtualMachine;
use vmcheck::signal::Cancel;

#[tokio::main]
async fn main() {
    let (name, n) = common::image_and_count(50);
    let (image, host) = common::image_and_host(&name).await;
    let cancel = Cancel::new();
    let spec = common::spec(&image, false);
    let mut vm = VirtualMachine::start(&host, spec).await.expect("start");
    vm.wait_boot(Duration::from_secs(180), &cancel)
        .await
        .expect("boot");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        common::run_true(&vm).await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    vm.kill().await;
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name}: `true` over the persistent connection, {n} runs: median {:.1} ms (p25 {:.1}, p75 {:.1}, max {:.1})",
        q(0.5),
        q(0.25),
        q(0.75),
        q(1.0)
    );
}
