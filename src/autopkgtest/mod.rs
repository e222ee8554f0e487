//! Debian autopkgtest (DEP-8) suites, as one more kind of check file feeding the same plan.
//!
//! This folder owns reading a Debian source package's test metadata exactly as autopkgtest
//! 5.28 reads it, without a machine and without apt:
//!
//! - `deb822.rs`: the stanza syntax of `debian/control` and `debian/tests/control`, with
//!   autopkgtest's comment rules and every field's line;
//! - `control.rs`: `debian/tests/control` → tests (names, bodies, restrictions, skip reasons);
//! - `restriction.rs`: the restrictions autopkgtest knows, their meanings, and the testbed
//!   capabilities they need;
//! - `arch.rs`: dpkg architecture names and wildcards (`any`, `linux-any`, `!i386`);
//! - `depends.rs`: the dependency language and the substitution of `@`, `@builddeps@` and
//!   `@recommends@` into clauses for apt;
//! - `source.rs`: a source tree (`debian/control`, `debian/changelog`) and unpacking a `.dsc`;
//! - `error.rs`: [`ControlError`], every error as `path:line: message`;
//! - `deps.rs`: the resolved dependencies, by the host's apt for an image's package database;
//! - `test.rs`: one test as the runner runs it (`runner/autopkgtest.rs` runs it in its guest).

pub mod arch;
pub mod collect;
pub mod control;
pub mod deb822;
pub mod depends;
pub mod deps;
pub mod error;
pub mod restriction;
pub mod source;
pub mod test;

pub use error::{ControlError, ControlErrors};

/// The architecture of every vmcheck testbed (the dpkg architecture of its images).
pub const TESTBED_ARCH: &str = "amd64";
