//! Known issues ("naughties"): Cockpit's `bots/naughty/` patterns, loaded, checked and
//! matched against a failed attempt's output, with Cockpit's semantics and without its
//! defects (reference `cockpit.md` §6, §10.2 item 12).
//!
//! A project keeps one directory per OS under `bots/naughty/` ([`NAUGHTY_DIR`]), and in it
//! one file per pattern named `<issue-number>-<slug>`. A directory may be a symlink to a
//! sibling, aliasing that OS (`centos-10 -> rhel-10`). A pattern is a glob
//! (Python `fnmatch.fnmatchcase`; [`glob_match`]) over the whole output of the failed
//! attempt followed by its `not ok` line; it matches if it occurs anywhere in it, after
//! both have been normalised ([`normalize`]); literal brackets in pasted output are
//! handled by a retry with every `[` read as `?`. Pixel-test failures never match.
//!
//! Unlike Cockpit, the order is deterministic (issue number, then path), *all* matching
//! patterns are reported (own OS first, then every other real OS directory), and a file
//! whose name does not start with `<number>-`, an empty or unreadable pattern, or a
//! stray file or broken symlink in `bots/naughty/` is an error found when loading,
//! before anything boots ([`NaughtyDb::load`]).

mod db;
mod error;
mod glob;
mod normalize;
mod pattern;
mod pixel;

pub use db::{NAUGHTY_DIR, NaughtyDb, NaughtyMatches};
pub use error::NaughtyError;
pub use glob::{Glob, glob_match};
pub use normalize::normalize;
pub use pattern::{Naughty, issue_number, pattern_matches};
pub use pixel::{PIXEL_MARKERS, is_pixel_failure};
