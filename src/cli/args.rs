//! clap definitions: exactly what the user can type, validated for shape only. Turning
//! these into engine calls happens in `dispatch.rs`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "vmcheck",
    version,
    about = "Run integration tests in real QEMU virtual machines"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The project directory (the one holding bots/images/); found by walking up from the
    /// current directory by default.
    #[arg(long, global = true, env = "VMCHECK_PROJECT_DIR", value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// Show more: image build output, machine start-up steps.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build and list guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot a machine, print how to reach it, and keep it until Enter or Ctrl-C.
    VmRun(VmRunArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build images from their recipes in bots/images/ (all recipes if none are named).
    Build {
        /// Image names.
        names: Vec<String>,
    },
    /// List images: recipes, built images and their state.
    List,
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// Image to boot [default: $TEST_OS, else busybox].
    #[arg(env = "TEST_OS", default_value = "busybox", hide_env_values = true)]
    pub image: String,
    /// Run this shell command as root, print its output and exit with its status.
    #[arg(short = 'e', long = "execute", value_name = "CMD")]
    pub execute: Option<String>,
    /// Guest memory in MiB [default: the image's].
    #[arg(short, long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(64..=1048576))]
    pub memory: Option<u32>,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Seconds to wait for the machine to boot.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: u64,
    /// Seconds the command given with -e may run.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_run_options() {
        let cli = Cli::try_parse_from([
            "vmcheck",
            "vm-run",
            "debian-12",
            "-e",
            "uname -a",
            "-m",
            "1024",
        ])
        .unwrap();
        let Command::VmRun(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.image, "debian-12");
        assert_eq!(a.execute.as_deref(), Some("uname -a"));
        assert_eq!(a.memory, Some(1024));
        assert_eq!(a.cpus, 1);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["vmcheck", "vm-run", "-m", "12"][..],
            &["vmcheck", "vm-run", "--cpus", "0"],
            &["vmcheck", "vm-run", "--boot-timeout", "0"],
            &["vmcheck", "image", "destroy"],
        ] {
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }
}
