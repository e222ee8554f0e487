//! What the benchmark examples share: the project's image `name` (built if needed) and the
//! host facts, found from the current directory.

use vmcheck::image::{Catalog, Image, ImageStore};
use vmcheck::machine::host::Host;
use vmcheck::machine::vm::MachineSpec;
use vmcheck::project::Project;
use vmcheck::signal::Cancel;

pub async fn image_and_host(name: &str) -> (Image, Host) {
    let project =
        Project::discover(&std::env::current_dir().unwrap()).expect("run inside the project");
    let catalog = Catalog::new(project, ImageStore::from_env());
    let image = catalog.resolve(name, &Cancel::new(), false).expect("image");
    let host = Host::detect(&image.kernel(), &catalog.store.dir.join(".cache"))
        .await
        .expect("host");
    (image, host)
}

/// A one-CPU machine of `image` with its default memory.
pub fn spec(image: &Image, cold_boot: bool) -> MachineSpec {
    MachineSpec {
        label: "bench".into(),
        image: image.clone(),
        memory_mib: None,
        cpus: 1,
        private_net: None,
        isolated: false,
        cold_boot,
        layer: None,
        revive: None,
        forward: Vec::new(),
    }
}

/// The examples' arguments: `[IMAGE] [N]`, with busybox and `default_n` as defaults.
pub fn image_and_count(default_n: usize) -> (String, usize) {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "busybox".into());
    let n = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_n);
    (name, n)
}

/// Run `true` on `vm`, which must succeed.
pub async fn run_true(vm: &vmcheck::machine::vm::VirtualMachine) {
    // Over SSH, as users' and tests' commands go (`execute` would use the guest agent).
    let done = vm
        .shell()
        .run(vmcheck::machine::vm::Exec::new(
            "true",
            std::time::Duration::from_secs(30),
        ))
        .await
        .expect("exec");
    assert!(done.status.success());
}
