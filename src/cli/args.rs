//! clap definitions: exactly what the user can type, validated for shape only. Turning
//! these into engine calls happens in `dispatch.rs` and the file it hands each command to.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use vmcheck::autopkgtest::test::Internet;

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
    /// Run tests from check files (test/verify/check-* by default).
    Run(RunArgs),
    /// Run the tests of one check file: what its `#!` line calls, so that
    /// `./test/verify/check-foo TestFoo.testBar --sit` works. No retries; output is shown live.
    Exec {
        /// The check file.
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the Debian autopkgtest (DEP-8) suites of source packages: SOURCE is an unpacked
    /// source tree (a directory with debian/tests/control) or a .dsc; other words are
    /// filters on `source/test`. TEST_OS defaults to debian-12. Exit codes are autopkgtest's.
    Autopkgtest(AutopkgtestArgs),
    /// Build and list guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Check and try known-issue patterns (bots/naughty/<TEST_OS>/<issue>-<slug>).
    #[command(subcommand)]
    Naughty(NaughtyCommand),
    /// Boot a machine, print how to reach it, and keep it until Enter or Ctrl-C.
    VmRun(VmRunArgs),
    /// Print a shell completion script (e.g. `vmcheck completions bash > /etc/bash_completion.d/vmcheck`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `vmcheck man | man -l -`.
    Man,
    /// Flakiness from the outcome store: per test and TEST_OS, runs, failures, failure rate
    /// with its 95 % Wilson interval, flip rate, state (healthy, flaky, broken).
    Stats(StatsArgs),
    /// The outcome store: every attempt of every run.
    #[command(subcommand)]
    Results(ResultsCommand),
    /// Find the commit in A..B that changed TEST's failure rate: the test runs --runs times
    /// at probed commits (each checked out in a git worktree), bisecting on the failure
    /// rate until a commit differs from its parent with significance. Exits 0 with the
    /// commit named, 1 when the data cannot tell (and how many more runs would).
    Hunt(HuntArgs),
    /// Combine the JSON event streams of several runs (e.g. the shards of one suite) into one
    /// TAP stream on stdout, and optionally one JUnit file and one event stream.
    Merge(MergeArgs),
    /// Bring back the machines a failed test kept (`run --keep-failed-machines`), running
    /// as they were when it failed: print how to reach them and wait for Enter, or run one
    /// command (-e) and exit with its status. DIR: the attempt's artifacts
    /// (`…/TestFoo.testBar/attempt-3`), or the test's (its latest attempt that kept any).
    Sit(SitArgs),
    /// Write the HTML report of a run from its JSON event stream (several: the shards of one
    /// suite, combined as `merge` does), e.g. `vmcheck report events.jsonl --html report/`.
    Report(ReportArgs),
    /// Run python3 with vmcheck's Python testlib on PYTHONPATH: what the first line of a
    /// Python check file runs, so that the file works on its own (see README, "Tests in
    /// Python").
    Python {
        /// python3's arguments: the check file and its own.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// The `vm` helper of host scripts (vm exec|reboot|wait-reboot|upload|download|ssh MACHINE …).
    #[command(hide = true)]
    VmCtl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct AutopkgtestArgs {
    /// Write autopkgtest's summary (`NAME PASS`, `NAME FAIL reason`, `NAME SKIP reason`)
    /// to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary_file: Option<PathBuf>,
    /// What to do with tests that have the `needs-internet` restriction (autopkgtest's
    /// option): `skip` them (the default: vmcheck's autopkgtest machines reach no network at
    /// all), `run` them with the network open to their machine, or `try` them (a failure is
    /// a skip).
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = Internet::Skip)]
    pub needs_internet: Internet,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run only tests whose `TestClass.testMethod` contains one of these strings.
    pub filters: Vec<String>,
    /// Filters must equal the whole `TestClass.testMethod` name, not just be part of it.
    #[arg(long)]
    pub exact: bool,
    /// Drop the test with exactly this name, every case of its matrix, or one case
    /// (`TestClass.testMethod[fs=xfs]`) (repeatable).
    #[arg(long, value_name = "TestClass.testMethod")]
    pub exclude: Vec<String>,
    /// Run only the matrix cases with this value (repeatable: values of one key are
    /// alternatives, and every key given must match), e.g. `--matrix fs=xfs`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = matrix_value)]
    pub matrix: Vec<(String, String)>,
    /// List the selected tests and exit; boots nothing, runs no test code.
    #[arg(short, long)]
    pub list: bool,
    /// Only nondestructive tests.
    #[arg(short, long)]
    pub nondestructive: bool,
    /// Tests to run at once [default: from free RAM and CPUs].
    #[arg(short, long, env = "TEST_JOBS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: Option<u32>,
    /// Run nondestructive tests on this existing host instead of booting machines; implies
    /// -n. Repeat to use several hosts in parallel.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub machine: Vec<String>,
    /// Private key for --machine hosts.
    #[arg(long, value_name = "FILE", requires = "machine")]
    pub identity: Option<PathBuf>,
    /// known_hosts file with the --machine hosts' keys [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE", requires = "machine")]
    pub known_hosts: Option<PathBuf>,
    /// Accept any host key from --machine hosts (unsafe; for throw-away hosts).
    #[arg(long, requires = "machine", conflicts_with = "known_hosts")]
    pub insecure_host_key: bool,
    /// User to log in as on --machine hosts.
    #[arg(long, default_value = "root", requires = "machine")]
    pub user: String,
    /// The web address browser tests open (Cockpit's --browser): an existing machine's
    /// web interface, instead of the first machine's forwarded web port.
    #[arg(long, value_name = "HOST:PORT", value_parser = web_address)]
    pub browser: Option<String>,
    /// Directory of check files [default: test/verify in the project].
    #[arg(long, env = "TEST_DIR", value_name = "DIR")]
    pub test_dir: Option<PathBuf>,
    /// File name pattern of check files in --test-dir.
    #[arg(long, default_value = "check-*", value_name = "GLOB")]
    pub test_glob: String,
    /// Do not match failures against known issues (bots/naughty).
    #[arg(long)]
    pub thorough: bool,
    /// Do not retry failed tests (machine failures are still retried).
    #[arg(long)]
    pub no_retry_fail: bool,
    /// When a test fails, keep its machines, print how to reach them and wait for Enter.
    #[arg(short, long)]
    pub sit: bool,
    /// A scenario from test/scenarios.toml.
    #[arg(
        long,
        env = "TEST_SCENARIO",
        value_name = "NAME",
        hide_env_values = true
    )]
    pub scenario: Option<String>,
    /// Memory of the machines nondestructive tests share [default: the image's].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(64..=1048576))]
    pub nondestructive_memory: Option<u32>,
    /// CPUs of the machines nondestructive tests share.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nondestructive_cpus: u32,
    /// Seconds a machine may take to boot.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: u64,
    /// Boot machines from their images instead of restoring booted snapshots.
    #[arg(long, env = "VMCHECK_COLD_BOOT", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub cold_boot: bool,
    /// Virtual CPUs that may boot at once; more boots wait [default: one per host CPU].
    #[arg(long, env = "VMCHECK_MAX_BOOTS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_boots: Option<u32>,
    /// Multiply soaks' durations, intervals and fault durations by F (0.01 runs a two-hour
    /// soak in 72 s; timeouts stay).
    #[arg(long, env = "VMCHECK_SOAK_SCALE", value_name = "F", value_parser = soak_scale)]
    pub soak_scale: Option<f64>,
    /// The seed soaks' schedules are drawn from (each soak prints the one it used) [default:
    /// drawn for the run].
    #[arg(long, env = "VMCHECK_SEED", value_name = "N")]
    pub seed: Option<u64>,
    /// Detect tests affected by the changes since the merge-base with REF (plus uncommitted
    /// and untracked files): they must pass 3 times, and are not retried when they fail.
    #[arg(long, env = "BASE_BRANCH", value_name = "REF", hide_env_values = true)]
    pub base: Option<String>,
    /// Print for each selected test whether and why it is affected (needs --base), then exit.
    #[arg(long, requires = "base")]
    pub explain: bool,
    /// Also count changes under pkg/<name>/ for check files named check-<name>* (Cockpit's rule).
    #[arg(long, env = "VMCHECK_PKG_RULE")]
    pub pkg_rule: bool,
    /// Write every event as JSON lines to FILE (`-`: stdout, instead of TAP).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Write a JUnit XML report to FILE (one testsuite per check file).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write an HTML report into DIR (DIR/index.html: one page that opens from file://,
    /// failures first, every attempt's output, a timeline, recent history).
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// Keep a JSON snapshot of the run in FILE: every test's state and every shared
    /// machine's, rewritten on each change.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Where each failed attempt's output, console and guest logs and collected files go
    /// [default: <project>/vmcheck-results/artifacts].
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Keep the artifacts of passing attempts too.
    #[arg(long)]
    pub keep_artifacts: bool,
    /// Save the machines of each failed test's last failed attempt as they were when it
    /// failed (memory and disk) into its artifacts, to be brought back with `vmcheck sit`.
    #[arg(long)]
    pub keep_failed_machines: bool,
    /// Progress on stderr: a live display on a terminal (auto), plain lines, or nothing.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, env = "VMCHECK_PROGRESS")]
    pub progress: ProgressMode,
    /// Run only shard K of N: the selected tests split into N parts of about equal estimated
    /// duration (e.g. `--shard "$CI_NODE_INDEX/$CI_NODE_TOTAL"`).
    #[arg(long, env = "VMCHECK_SHARD", value_name = "K/N")]
    pub shard: Option<String>,
    /// The outcome store: every attempt is recorded there, and the durations that order
    /// (and shard) tests are read from it
    /// [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
    #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
    pub results_db: Option<PathBuf>,
    /// Run every selected test N times, each run its own test in the reports
    /// (`TestClass.testMethod[repeat=K]`) on machines restored from the same snapshot,
    /// without retries; the summary gives each test's passes out of N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub repeat: Option<u32>,
    /// Stop repeating a test at its first failure (its runs not started yet are skipped);
    /// with `--repeat N` as the most runs, else 100.
    #[arg(long)]
    pub until_fail: bool,
    /// Repeat each test until the 95 % upper bound of its failure rate is below RATE (`1%`,
    /// `0.5%`, `0.01`), about 380 clean runs for 1 %, or until its first failure.
    #[arg(long, value_name = "RATE", conflicts_with = "repeat")]
    pub stress_below: Option<String>,
    /// What a flaky test (failed, then passed on a retry) means for the exit code: `pass`
    /// (the default) or `fail`.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = FlakyResult::Pass)]
    pub flaky_result: FlakyResult,
}

/// `--flaky-result`: whether a flaky test fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlakyResult {
    Pass,
    Fail,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The event streams (`vmcheck run --events FILE`), in the order to report them.
    #[arg(required = true, value_name = "EVENTS")]
    pub files: Vec<PathBuf>,
    /// Also write a JUnit XML report of the combined run.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the combined events as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Also write an HTML report of the combined run into DIR.
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// The outcome store the runs are recorded in (as `results import` does), their
    /// durations from now on ordering and sharding later runs (a shard run does not let its
    /// own durations count until then, so that every shard splits the same way)
    /// [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
    #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
    pub results_db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The event streams (`vmcheck run --events FILE`).
    #[arg(required = true, value_name = "EVENTS")]
    pub files: Vec<PathBuf>,
    /// Where the report goes: DIR/index.html.
    #[arg(long, value_name = "DIR", required = true)]
    pub html: PathBuf,
    /// The outcome store each test's recent history is read from
    /// [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
    #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
    pub results_db: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// Add the JSON event streams of other runs (`run --events FILE`: shards, other CI jobs)
    /// to the outcome store. Importing a stream again adds nothing.
    Import {
        /// The event streams.
        #[arg(required = true, value_name = "EVENTS")]
        files: Vec<PathBuf>,
        /// The outcome store [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
        #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
        results_db: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct HuntArgs {
    /// The commits: A..B, A where the test behaved, B where it does not (first parents).
    #[arg(value_name = "A..B")]
    pub range: String,
    /// The test, `TestClass.testMethod`.
    pub test: String,
    /// Runs of the test at each probed commit (more where a break stays ambiguous).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub runs: u32,
    /// The outcome store [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
    #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
    pub results_db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only tests whose `TestClass.testMethod` contains one of these strings.
    pub filters: Vec<String>,
    /// Only results on this TEST_OS.
    #[arg(long, value_name = "OS")]
    pub os: Option<String>,
    /// Only results of this recent period (`7d`, `12h`, `90m`).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Every project's tests, not only this project's.
    #[arg(long)]
    pub all_projects: bool,
    /// The failure rate of this test (`TestClass.testMethod`) at each recorded commit.
    #[arg(long, value_name = "TEST")]
    pub by_commit: Option<String>,
    /// One JSON object per test and TEST_OS (a JSON array on stdout).
    #[arg(long)]
    pub json: bool,
    /// The outcome store [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
    #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
    pub results_db: Option<PathBuf>,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live display if stderr is a terminal, else plain lines.
    Auto,
    /// Always the live display.
    Bar,
    /// One plain line per finished test.
    Lines,
    /// No progress (the summary is still printed).
    None,
}

#[derive(Debug, Subcommand)]
pub enum NaughtyCommand {
    /// Load every pattern and report every bad file.
    Check {
        /// The naughty directory [default: bots/naughty in the project].
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Match a saved test output (stdin) against the patterns: prints `#<issue> <path>` for
    /// each match, this OS first; exits 0 if one of this OS's patterns matched, 1 if none did.
    Match {
        /// The OS (TEST_OS) whose patterns count as its own.
        #[arg(long, value_name = "OS")]
        os: String,
        /// The naughty directory [default: bots/naughty in the project].
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Every pattern's record in the outcome store (matches, first and last seen) and the
    /// stale ones: matched nothing in the last 21 days (Cockpit's prune rule) or N runs.
    /// Exits 0 when none is stale, 1 otherwise.
    Stale {
        /// The window: days [default: 21].
        #[arg(long, value_name = "DAYS", conflicts_with = "runs", value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: Option<u64>,
        /// The window: the last N runs on the pattern's OS.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        runs: Option<u32>,
        /// The naughty directory [default: bots/naughty in the project].
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// The outcome store [default: $XDG_DATA_HOME/vmcheck/results.sqlite].
        #[arg(long, env = "VMCHECK_RESULTS_DB", value_name = "FILE")]
        results_db: Option<PathBuf>,
    },
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
    /// Boot machines from their images instead of restoring booted snapshots.
    #[arg(long, env = "VMCHECK_COLD_BOOT", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub cold_boot: bool,
    /// Seconds the command given with -e may run.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct SitArgs {
    /// The artifacts of the failed attempt (or of its test).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Run this shell command as root in the machine, print its output and exit with its
    /// status.
    #[arg(short = 'e', long = "execute", value_name = "CMD")]
    pub execute: Option<String>,
    /// The machine -e runs in [default: the first].
    #[arg(long, value_name = "NAME", requires = "execute")]
    pub machine: Option<String>,
    /// Seconds to wait for the machines to come back.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: u64,
    /// Seconds the command given with -e may run.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

/// `--browser HOST:PORT`: a host name or address (IPv6 in brackets) and a port.
fn web_address(s: &str) -> Result<String, String> {
    let bad = || format!("expected HOST:PORT (127.0.0.1:9090, [::1]:9090, name:9090), found {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(s.to_owned()),
        _ => Err(bad()),
    }
}

/// `--soak-scale F`: a finite number in (0, 1000].
fn soak_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Ok(f),
        _ => Err(format!(
            "expected a number greater than 0 and at most 1000 (0.01: a hundred times \
             shorter), found {s:?}"
        )),
    }
}

/// `--matrix KEY=VALUE`.
fn matrix_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE (e.g. fs=xfs), found {s:?}")),
    }
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
    fn exec_takes_a_file_then_filters() {
        let cli =
            Cli::try_parse_from(["vmcheck", "exec", "./check-foo", "TestFoo.testBar", "--sit"])
                .unwrap();
        let Command::Exec { file, run } = cli.command else {
            panic!()
        };
        assert_eq!(file, PathBuf::from("./check-foo"));
        assert_eq!(run.filters, ["TestFoo.testBar"]);
        assert!(run.sit);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["vmcheck", "vm-run", "-m", "12"][..],
            &["vmcheck", "vm-run", "--cpus", "0"],
            &["vmcheck", "vm-run", "--boot-timeout", "0"],
            &["vmcheck", "image", "destroy"],
            &["vmcheck", "run", "-j", "0"],
            &["vmcheck", "run", "--identity", "k"],
        ] {
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }
}
