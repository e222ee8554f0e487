//! Debian autopkgtest (DEP-8) suites as one more kind of check file: see ARCHITECTURE.md.

pub mod deps;
pub mod test;
