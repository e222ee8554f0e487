//! The naughty fixtures under `tests/fixtures/naughty/` (two OS directories and a symlinked
//! alias) and `tests/fixtures/naughty-invalid/`: loading, aliases, matching realistic
//! failures (a traceback, a kernel oops, a pasted line with literal brackets, an SELinux
//! denial), and every load error. Trees that git cannot hold are built in temporary
//! directories.

use std::borrow::Borrow;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use vmcheck::naughty::{Naughty, NaughtyDb, NaughtyError, NaughtyMatches};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_valid() -> NaughtyDb {
    match NaughtyDb::load(&fixture("naughty")) {
        Ok(db) => db,
        Err(errors) => panic!("{errors:#?}"),
    }
}

/// `<os>/<file name>` of each pattern.
fn short(list: &[impl Borrow<Naughty>]) -> Vec<String> {
    list.iter()
        .map(|n| {
            let n = n.borrow();
            let file = n.path.file_name().unwrap().to_str().unwrap();
            format!("{}/{file}", n.os)
        })
        .collect()
}

fn own_and_other(m: &NaughtyMatches) -> (Vec<String>, Vec<String>) {
    (short(&m.own), short(&m.other))
}

/// Error lines with the fixture directory removed from their paths.
fn error_lines(errors: &[NaughtyError], dir: &Path) -> Vec<String> {
    errors
        .iter()
        .map(|e| {
            let path = e.path.strip_prefix(dir).unwrap_or(&e.path);
            format!("{}: {}", path.display(), e.message)
        })
        .collect()
}

const STORAGE_FAILURE: &str = "\
# ----------------------------------------------------------------------
# testPoolResize (__main__.TestStorageStratis.testPoolResize)
> log: starting stratisd
Traceback (most recent call last):
  File \"/var/ci/work/cockpit/test/verify/check-storage-stratis\", line 321, in testPoolResize
    b.wait_not_present('.pf-v6-c-alert')
  File \"/var/ci/work/cockpit/test/common/testlib.py\", line 712, in wait_not_present
    self.wait_js_func('!ph_is_present', selector)
  File \"/var/ci/work/cockpit/test/common/testlib.py\", line 655, in wait_js_func
    self.wait_js_cond(f\"{func}({','.join(map(jsquote, args))})\")
testlib.Error: timeout
wait_js_cond(!ph_is_present(\".pf-v6-c-alert\")): Uncaught (in promise) Error: condition did not become true

not ok 4 test/verify/check-storage-stratis TestStorageStratis.testPoolResize";

const KERNEL_OOPS: &str = "\
> warning: kernel messages on machine1:
[  12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000008
[  12.345690] #PF: supervisor read access in kernel mode
Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI
CPU: 1 PID: 77 Comm: kworker/1:1 Not tainted 6.12.0-55.el10.x86_64 #1
RIP: 0010:virtqueue_get_buf_ctx_split+0x2a/0x140
Error: machine1 crashed
not ok 9 test/verify/check-system TestSystem.testReboot";

const SELINUX: &str = "\
Error: FAIL: Test completed, but found unexpected journal messages:
type=1400 audit(1733000000.987:1102): avc:  denied  { read } for  pid=98765 comm=\"cockpit-session\" name=\"shadow\" dev=\"vda4\" ino=4242 scontext=system_u:system_r:cockpit_session_t:s0
not ok 2 test/verify/check-login TestLogin.testBasic";

#[test]
fn valid_fixtures_load() {
    let db = load_valid();
    assert_eq!(db.len(), 6);
    assert_eq!(db.aliases(), [("centos-10", "rhel-10")]);
    assert_eq!(
        short(&db.all()),
        [
            "fedora-44/9054-storage-pool-resize-timeout",
            "fedora-44/9054-storage-pool-resize-timeout-2",
            "fedora-44/9336-pmproxy-abort",
            "rhel-10/2171-kernel-null-deref",
            "rhel-10/3003-kernel-oops-virtio",
            "rhel-10/4100-selinux-denied-cockpit-session",
        ]
    );
    let issues = |os| db.for_os(os).iter().map(|n| n.issue).collect::<Vec<_>>();
    assert_eq!(issues("fedora-44"), [9054, 9054, 9336]);
    assert_eq!(issues("rhel-10"), [2171, 3003, 4100]);
    assert_eq!(issues("centos-10"), [2171, 3003, 4100]);
    assert!(issues("debian-12").is_empty());
    assert_eq!(short(&db.for_os("centos-10")), short(&db.for_os("rhel-10")));

    // Patterns are stored normalised.
    let traceback = db.for_os("fedora-44")[0];
    assert_eq!(
        traceback.pattern,
        "Traceback (most recent call last):\n  \
         File \"check-storage-stratis\", line *, in testPoolResize\n    \
         b.wait_not_present('.pf-v6-c-alert')\n*\nError: timeout"
    );
    assert_eq!(
        traceback.path,
        fixture("naughty/fedora-44/9054-storage-pool-resize-timeout")
    );
    let selinux = db.for_os("rhel-10")[2];
    assert!(
        selinux
            .pattern
            .starts_with("type=1400 audit(0): avc:  denied  { read } for  pid=0 comm="),
        "{}",
        selinux.pattern
    );
}

#[test]
fn a_traceback_matches_every_pattern_of_its_issue() {
    let db = load_valid();
    let storage = (
        "fedora-44/9054-storage-pool-resize-timeout".to_owned(),
        "fedora-44/9054-storage-pool-resize-timeout-2".to_owned(),
    );
    let m = db.matches("fedora-44", STORAGE_FAILURE);
    assert_eq!(
        own_and_other(&m),
        (vec![storage.0.clone(), storage.1.clone()], vec![])
    );
    assert_eq!(m.summary().unwrap(), "Known issue #9054");

    // On another OS the same failure is known elsewhere.
    for os in ["rhel-10", "centos-10", "debian-12"] {
        let m = db.matches(os, STORAGE_FAILURE);
        assert_eq!(
            own_and_other(&m),
            (vec![], vec![storage.0.clone(), storage.1.clone()]),
            "{os}"
        );
        assert_eq!(m.summary().unwrap(), "Known issue #9054 in fedora-44");
    }

    // A different test, or a different error, is not this issue.
    let other_test = STORAGE_FAILURE.replace("in testPoolResize", "in testPoolCreate");
    assert!(db.matches("fedora-44", &other_test).is_empty());
    let other_error = STORAGE_FAILURE.replace("testlib.Error: timeout", "Error: crash");
    assert!(db.matches("fedora-44", &other_error).is_empty());
}

#[test]
fn a_kernel_oops_with_literal_brackets_matches_through_the_alias() {
    let db = load_valid();
    let rhel = (
        vec![
            "rhel-10/2171-kernel-null-deref".to_owned(),
            "rhel-10/3003-kernel-oops-virtio".to_owned(),
        ],
        vec![],
    );
    assert_eq!(own_and_other(&db.matches("rhel-10", KERNEL_OOPS)), rhel);
    // centos-10 is rhel-10: the patterns are rhel-10's, and rhel-10 is not "another OS".
    let m = db.matches("centos-10", KERNEL_OOPS);
    assert_eq!(own_and_other(&m), rhel);
    assert_eq!(m.summary().unwrap(), "Known issue #2171 (also #3003)");
    let m = db.matches("fedora-44", KERNEL_OOPS);
    assert_eq!(own_and_other(&m), (rhel.1, rhel.0));

    // The bracketed timestamp is matched literally, not as a character class.
    let other_stamp = KERNEL_OOPS.replace("[  12.345678] BUG", "[  99.000001] BUG");
    let m = db.matches("rhel-10", &other_stamp);
    assert_eq!(short(&m.own), ["rhel-10/3003-kernel-oops-virtio"]);
}

#[test]
fn selinux_noise_is_normalised_away() {
    let db = load_valid();
    let m = db.matches("centos-10", SELINUX);
    assert_eq!(
        short(&m.own),
        ["rhel-10/4100-selinux-denied-cockpit-session"]
    );
    assert_eq!(m.own[0].issue, 4100);
    let other_comm = SELINUX.replace("cockpit-session", "sshd");
    assert!(db.matches("rhel-10", &other_comm).is_empty());
}

#[test]
fn pixel_failures_and_unrelated_failures_match_nothing() {
    let db = load_valid();
    for pixel in [
        "Pixel test TestStorage-testPoolResize-dialog-pixels.png failed: 37 pixels differ",
        "New pixel test reference TestStorage-testPoolResize-dialog-pixels.png",
        "Error: Some pixel tests have failed",
    ] {
        let output = format!("{STORAGE_FAILURE}\n{pixel}\n{KERNEL_OOPS}");
        assert!(db.matches("fedora-44", &output).is_empty(), "{pixel}");
        assert!(db.matches("rhel-10", &output).is_empty(), "{pixel}");
    }
    let unrelated = "AssertionError: 1 != 2\nnot ok 1 test/verify/check-a TestA.testB";
    assert_eq!(
        db.matches("fedora-44", unrelated),
        NaughtyMatches::default()
    );
}

#[test]
fn invalid_fixtures_report_every_error() {
    let dir = fixture("naughty-invalid");
    let errors = NaughtyDb::load(&dir).unwrap_err();
    let lines = error_lines(&errors, &dir);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let expected_starts = [
        "README: is not a directory; the naughty directory holds one directory of patterns per OS",
        "centos-11: broken symlink to rhel-11: ",
        "fedora-44/1234-empty: the pattern is empty",
        "fedora-44/1235-only-whitespace: the pattern is empty",
        "fedora-44/readme-no-number: the file name must be the issue number, `-` and a description, e.g. `1234-pmproxy-crash`",
        "rhel-10/99999999999999999999-too-large: the issue number 99999999999999999999 is too large",
    ];
    for (line, start) in lines.iter().zip(expected_starts) {
        assert!(
            line.starts_with(start),
            "{line:?} should start with {start:?}"
        );
    }
    // Errors display as `path: message`, with the full path.
    assert_eq!(
        errors[2].to_string(),
        format!(
            "{}: the pattern is empty",
            dir.join("fedora-44/1234-empty").display()
        )
    );
}

#[test]
fn a_missing_directory_is_an_empty_database() {
    let db = NaughtyDb::load(&fixture("no-such-naughty-dir")).unwrap();
    assert!(db.is_empty());
    assert_eq!(db.len(), 0);
    assert!(db.matches("fedora-44", STORAGE_FAILURE).is_empty());
}

#[test]
fn trees_git_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let naughty = root.join("naughty");
    let write = |path: &Path, content: &[u8]| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    };

    // `naughty` is a file.
    write(&naughty, b"x");
    let lines = error_lines(&NaughtyDb::load(&naughty).unwrap_err(), root);
    assert_eq!(lines, ["naughty: is not a directory"]);
    fs::remove_file(&naughty).unwrap();

    // A directory among the patterns, a non-UTF-8 pattern, a symlinked pattern file.
    write(&naughty.join("arch/1-valid"), b"Error: timeout\n");
    write(&naughty.join("arch/2-subdir/3-x"), b"x");
    write(&naughty.join("arch/4-latin1"), b"caf\xe9\n");
    symlink("1-valid", naughty.join("arch/5-linked")).unwrap();
    let errors = NaughtyDb::load(&naughty).unwrap_err();
    assert_eq!(
        error_lines(&errors, &naughty),
        [
            "arch/2-subdir: is a directory; an OS directory holds only pattern files",
            "arch/4-latin1: is not UTF-8 text",
        ]
    );
    fs::remove_dir_all(naughty.join("arch/2-subdir")).unwrap();
    fs::remove_file(naughty.join("arch/4-latin1")).unwrap();

    // A symlink to a directory outside applies to its own name only; a symlink to a
    // symlink to a sibling is an alias of the sibling.
    write(&root.join("elsewhere/10-outside"), b"Error: timeout");
    symlink(root.join("elsewhere"), naughty.join("suse")).unwrap();
    symlink("arch", naughty.join("manjaro")).unwrap();
    symlink("manjaro", naughty.join("manjaro-next")).unwrap();
    let db = NaughtyDb::load(&naughty).unwrap();
    assert_eq!(db.len(), 3);
    assert_eq!(
        db.aliases(),
        [("manjaro", "arch"), ("manjaro-next", "arch")]
    );
    let output = "Error: timeout\nnot ok 1 test/verify/check-a TestA.testB";
    let m = db.matches("suse", output);
    assert_eq!(
        own_and_other(&m),
        (
            vec!["suse/10-outside".to_owned()],
            vec!["arch/1-valid".to_owned(), "arch/5-linked".to_owned()]
        )
    );
    let m = db.matches("manjaro-next", output);
    assert_eq!(
        own_and_other(&m),
        (
            vec!["arch/1-valid".to_owned(), "arch/5-linked".to_owned()],
            vec![]
        )
    );
}
