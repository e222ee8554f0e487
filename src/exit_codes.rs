//! vmcheck's process exit codes: a published contract, documented in README.md.
//!
//! Codes are constants in one place and never change meaning once released. vmcheck never
//! exits with a count of anything (Cockpit's "number of failures" wraps at 256).

/// Everything asked for succeeded.
pub const OK: i32 = 0;
/// At least one test failed (reserved for the runner).
pub const TESTS_FAILED: i32 = 1;
/// Bad usage or bad input: options, check files, naughty files, image names, corrupt images.
/// Nothing was started.
pub const INPUT_ERROR: i32 = 2;
/// The selection matched no tests (reserved for the runner).
pub const NO_TESTS: i32 = 3;
/// The infrastructure failed: an image could not be built, qemu is missing or died, a
/// machine did not boot, SSH was lost, the host has too little memory.
pub const INFRASTRUCTURE: i32 = 4;
/// A report (TAP, JSON events, JUnit, the status file) could not be written: the run was
/// stopped, and its results are incomplete whatever the tests did.
pub const REPORT_FAILED: i32 = 5;
/// `vmcheck autopkgtest`: a source package it cannot run (a broken control file, a missing
/// test script, a `.dsc` that does not unpack): autopkgtest's "erroneous package". The
/// subcommand's other codes are autopkgtest's (see `reporter::autopkgtest::exit`).
pub const AUTOPKGTEST_BADPKG: i32 = 12;
/// Interrupted by SIGINT, SIGTERM or SIGHUP; everything started was cleaned up.
pub const INTERRUPTED: i32 = 130;
