//! Benchmark: latency of one command over a machine's persistent SSH connection.
//! `cargo run --release --example exec_latency -- [IMAGE] [N]` boots IMAGE (default busybox),
//! runs `true` N times (default 50) and prints the median and quartiles in milliseconds.

use std::time::{Duration, Instant};
use vmcheck::image::{Catalog, ImageStore};
use vmcheck::machine::vm::{Host, MachineSpec, VirtualMachine};
use vmcheck::project::Project;
use vmcheck::signal::Cancel;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "busybox".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let project =
        Project::discover(&std::env::current_dir().unwrap()).expect("run inside the project");
    let catalog = Catalog::new(project, ImageStore::from_env());
    let cancel = Cancel::new();
    let image = catalog.resolve(&name, &cancel, false).expect("image");
    let host = Host::detect(&image.kernel(), &catalog.store.dir.join(".cache"))
        .await
        .expect("host");
    let spec = MachineSpec {
        label: "bench".into(),
        image,
        memory_mib: None,
        cpus: 1,
        private_net: None,
    };
    let mut vm = VirtualMachine::start(&host, spec).await.expect("start");
    vm.wait_boot(Duration::from_secs(180), &cancel)
        .await
        .expect("boot");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let done = vm
            .shell()
            .execute("true", Duration::from_secs(30))
            .await
            .expect("exec");
        assert!(done.status.success());
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
