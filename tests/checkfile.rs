//! The check-file fixtures under `tests/fixtures/checkfiles/`: every valid file loads into
//! the expected tests, and every invalid file yields exactly the expected errors, with
//! their positions (the CLI's exit code on them is tested with the CLI).

use std::path::{Path, PathBuf};
use std::time::Duration;
use vmcheck::checkfile::{self, TestDef};
use vmcheck::planning::plan::{self, PlanOptions};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/fixtures/checkfiles").join(kind);
    let files = checkfile::discover(&dir, "check-*").unwrap().files;
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn load_valid() -> Vec<TestDef> {
    match checkfile::load(&fixtures("valid"), root()) {
        Ok(loaded) => loaded.tests,
        Err(errors) => panic!("{errors:#?}"),
    }
}

#[test]
fn valid_fixtures_load() {
    let tests = load_valid();
    let names: Vec<_> = tests
        .iter()
        .map(|t| format!("{}:{} {}", t.file.display(), t.line, t.name()))
        .collect();
    let dir = "tests/fixtures/checkfiles/valid";
    assert_eq!(
        names,
        [
            format!("{dir}/check-example:10 TestFoo.testBasic"),
            format!("{dir}/check-example:16 TestFoo.testReboot"),
            format!("{dir}/check-settings:37 TestCluster.testInline"),
            format!("{dir}/check-settings:30 TestCluster.testJoin"),
            format!("{dir}/check-settings:12 TestServices.testStart"),
            format!("{dir}/check-settings:16 TestServices.testStop"),
        ]
    );

    let get = |name: &str| tests.iter().find(|t| t.name() == name).unwrap();
    let start = get("TestServices.testStart");
    assert!(start.nondestructive);
    assert_eq!(start.timeout, Duration::from_secs(120));
    assert_eq!(
        start.todo_reason("debian-12"),
        Some("fails until #42 is fixed")
    );
    assert_eq!(start.env.get("LANG").map(String::as_str), Some("C.UTF-8"));
    assert_eq!(start.allow_journal, ["^audit: .* denied"]);
    assert_eq!(start.artifacts, ["/var/log/services.log"]);

    let stop = get("TestServices.testStop");
    assert_eq!(stop.timeout, Duration::from_secs(5400));
    assert!(stop.env.is_empty());
    assert!(stop.no_retry_when_changed);

    let join = get("TestCluster.testJoin");
    assert!(!join.nondestructive);
    let image_default = |image: &str| if image == "debian-12" { 512 } else { 256 };
    assert_eq!(join.memory_mib(image_default, "busybox"), 256 + 1024 + 1536);
    assert_eq!(join.provision[1].cpus, 2);
    assert_eq!(get("TestCluster.testInline").provision[0].name, "server");
}

#[test]
fn valid_fixtures_plan() {
    let opts = PlanOptions {
        test_os: "rhel-9".into(),
        filters: vec!["TestServices".into(), "testJoin".into()],
        exclude: vec![],
        nondestructive_only: true,
        ..Default::default()
    };
    let plan = plan::plan(load_valid(), &opts);
    let planned: Vec<_> = plan
        .tests
        .iter()
        .map(|t| (t.id, t.def.name(), t.skip_reason.clone()))
        .collect();
    assert_eq!(
        planned,
        [
            (
                1,
                "TestServices.testStart".into(),
                Some("no foo there".into())
            ),
            (2, "TestServices.testStop".into(), Some("tests apt".into())),
        ]
    );
    let excluded: Vec<_> = plan
        .excluded
        .iter()
        .map(|e| format!("{} {:?}", e.name, e.reason))
        .collect();
    assert_eq!(
        excluded,
        [
            "TestFoo.testBasic Filtered",
            "TestFoo.testReboot Filtered",
            "TestCluster.testInline Filtered",
            "TestCluster.testJoin Destructive",
        ]
    );
}

/// The errors of `load` on `invalid/`, each after `tests/fixtures/checkfiles/invalid/`.
const EXPECTED_ERRORS: &[&str] = &[
    "check-keys:3:1: unknown key 'timout' at the top level, did you mean 'timeout'? (valid: nondestructive, timeout, provision, todo, skip, only, restore, artifacts, env, no_retry_when_changed, allow_journal, browser, matrix, matrix_exclude, matrix_include, matrix_limit, covers, and classes [Test…])",
    "check-keys:5:2: unknown table 'Settings' at the top level (class names start with 'Test', e.g. [TestFoo])",
    "check-keys:9:1: unknown table 'provison' in class TestKeys, did you mean 'provision'? (test names start with 'test', e.g. [TestKeys.testBar])",
    "check-keys:10:1: 'run' is only valid in a test, e.g. under [TestKeys.testBar]",
    "check-keys:14:1: unknown key 'artifact' in test TestKeys.testTypo, did you mean 'artifacts'? (valid: nondestructive, timeout, provision, todo, skip, only, restore, artifacts, env, no_retry_when_changed, allow_journal, browser, matrix, matrix_exclude, matrix_include, matrix_limit, run, host, soak, events)",
    "check-keys:16:11: unknown table 'Basic' in class TestKeys (test names start with 'test', e.g. [TestKeys.testBar])",
    "check-rules:7:12: test TestRules.testNothingToRun has nothing to run: add 'run' (a script run as root in machine1) or 'host' (a script run on the host)",
    "check-rules:11:1: 'provision' conflicts with 'nondestructive = true' (line 5) for test TestRules.testProvision: nondestructive tests run on shared machines and cannot provision their own (they may only have machine1 forward ports: provision.machine1 = { forward = [9090] })",
    "check-rules:16:1: 'provision' has no machine1, which 'run' needs (test TestRules.testNoMachine1): add machine1 or use 'host' instead of 'run'",
    "check-rules:19:2: class TestEmpty has no tests: add one as [TestEmpty.testSomething]",
    "check-rules:22:11: test TestKeys.testDuplicate is already defined in {dir}/check-keys:19",
    "check-syntax:3:11: string values must be quoted, expected literal string",
    "check-values:3:11: 'timeout': invalid duration \"10 minutes\": remove the spaces, as in \"90s\", \"10m\" or \"1h30m\"",
    "check-values:4:11: 'covers': invalid glob \"src/[oops\": unclosed character class; missing ']'",
    "check-values:7:18: 'nondestructive' must be true or false, found a string",
    "check-values:10:11: invalid machine name 'Machine1': machine names are a lowercase ASCII letter followed by lowercase letters, digits, '_' and '-'",
    "check-values:11:31: 'provision.server.memory': invalid memory size \"512MB\": unknown unit \"MB\"; use M (MiB) or G (GiB), as in \"512M\" or \"2G\"",
    "check-values:11:47: 'provision.server.cpus' must be between 1 and 64, found 0",
    "check-values:16:12: 'restore': \"etc/motd\" is not an absolute path (it must start with '/')",
    "check-values:17:18: 'allow_journal': invalid regex \"(unclosed\": unclosed group",
    "check-values:18:9: invalid environment variable name 'MY-VAR' in 'env': names are an ASCII letter or '_' followed by letters, digits and '_'",
    "check-values:18:25: 'env': names starting with VMCHECK_ are reserved for vmcheck",
    "check-values:18:51: 'env.COUNT' must be a string, found an integer",
    "check-values:19:16: 'skip.os': invalid glob \"debian-[\": unclosed character class; missing ']'",
    "check-values:19:38: 'skip.reason' must not be empty: say why",
];

#[test]
fn invalid_fixtures_report_every_error() {
    let errors = checkfile::load(&fixtures("invalid"), root()).unwrap_err();
    let rendered: Vec<_> = errors.iter().map(ToString::to_string).collect();
    let dir = "tests/fixtures/checkfiles/invalid";
    let expected: Vec<_> = EXPECTED_ERRORS
        .iter()
        .map(|e| format!("{dir}/{}", e.replace("{dir}", dir)))
        .collect();
    assert_eq!(rendered, expected, "\n{}", rendered.join("\n"));
}

#[test]
fn each_invalid_fixture_is_invalid_alone() {
    for file in fixtures("invalid") {
        let errors = checkfile::load(std::slice::from_ref(&file), root()).unwrap_err();
        assert!(!errors.is_empty(), "{}", file.display());
    }
}

#[test]
fn fixtures_are_executable_check_files() {
    use std::os::unix::fs::PermissionsExt;
    for file in fixtures("valid").into_iter().chain(fixtures("invalid")) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("#!/usr/bin/env -S vmcheck exec\n"),
            "{}",
            file.display()
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_ne!(mode & 0o111, 0, "{} is not executable", file.display());
    }
}
