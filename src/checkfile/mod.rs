//! Check files: finding them, parsing them strictly, and resolving every test's settings.
//!
//! A check file (`test/verify/check-*`) is a TOML document that is also executable: its first
//! line, `#!/usr/bin/env -S vmcheck exec`, is a TOML comment. The main type is [`TestDef`],
//! one fully resolved test; [`load()`] turns a list of files into the sorted list of every test
//! in them, or into *every* error in *every* file, each as `path:line:col: message`.
//!
//! ```toml
//! #!/usr/bin/env -S vmcheck exec
//! timeout = "5m"                 # top-level settings are defaults for every test in the file
//! covers = ["src/foo/**"]        # top level only: the sources this file tests
//!
//! [TestFoo]                      # a class: its settings are defaults for its tests
//! nondestructive = true
//! restore = ["/etc/motd"]
//!
//! [TestFoo.testBasic]            # a test: TestClass.testMethod, with `run` and/or `host`
//! run = '''
//! echo hi > /etc/motd
//! '''
//! ```
//!
//! Levels and keys:
//!
//! | level | allowed |
//! |---|---|
//! | top level | settings, `covers`, classes (`^Test[A-Za-z0-9_]*$` tables) |
//! | class | settings, tests (`^test[A-Za-z0-9_]*$` tables) |
//! | test | settings, `run` (script run as root in `machine1` over SSH), `host` (script run on the host); at least one of them |
//!
//! Settings are valid at all three levels; for each test the innermost level that sets a
//! key wins and replaces the whole value (arrays and tables are not merged):
//!
//! | key | value | default |
//! |---|---|---|
//! | `nondestructive` | bool: runs on a shared machine it must leave as it found it | false |
//! | `timeout` | `"90s"`, `"10m"`, `"1h30m"` or integer seconds, > 0 | 600 s |
//! | `provision` | machine name (`^[a-z][a-z0-9_-]*$`) → `{ image = "debian-12", memory = "512M" \| "1G" \| MiB (64..=65536), cpus = 1..=64 }`, all optional; in the order written | `machine1`: TEST_OS, the image's memory, 1 CPU |
//! | `todo` | reason the test is expected to fail | none |
//! | `skip`, `only` | `{ os = ["glob", …], reason = "…" }`, globs against TEST_OS | none |
//! | `restore` | absolute guest paths a nondestructive test changes | `[]` |
//! | `artifacts` | absolute guest paths collected after each attempt | `[]` |
//! | `env` | `{ NAME = "value" }` exported to `run` and `host`; `VMCHECK_*` is reserved | `{}` |
//! | `no_retry_when_changed` | bool | false |
//! | `allow_journal` | regexes of journal messages the test may cause | `[]` |
//! | `browser` | bool: the test drives a browser on the host (its memory is counted) | false |
//!
//! Rules across settings, checked on each test as resolved: `nondestructive = true` and
//! `provision` exclude each other (nondestructive tests share machines), and a `provision`
//! that applies to a test with `run` must include `machine1`, where `run` runs.
//!
//! The shebang line is a convention for running a file directly; the parser does not
//! require it.
//!
//! Strictness is deliberate (a typo must never silently change which tests run or how):
//! unknown keys, wrong types and bad values are errors at any level, as are a class without
//! tests, a file without tests, an empty script, and a test name defined in two files.
//! The document is walked by hand over toml's spanned [`toml::de::DeTable`] instead of
//! serde twins, so that every error in a file is reported, each with its exact position,
//! and class and test names can be free-form table keys without `flatten`.

mod condition;
mod def;
mod duration;
mod error;
mod glob;
mod keys;
mod listing;
mod load;
mod matrix;
mod memory;
mod parse;
mod provision;
mod settings;
mod soak;
mod value;

pub use condition::{OsCondition, first_match};
pub use def::{Body, OS_KEY, Repeat, TestDef, split_repeat, strip_os};
pub use duration::parse_duration;
pub use error::CheckFileError;
pub use glob::covers_matcher;
pub use listing::{LIST_ARG, PROTOCOL_VERSION, RUN_ARG};
pub use load::{Discovered, Loaded, discover, load};
pub use matrix::{Case, split_case};
pub use memory::{MEMORY_RANGE_MIB, parse_memory};
pub use parse::parse_file;
pub use provision::{DEFAULT_MACHINE, MachineReq};
pub use settings::DEFAULT_TIMEOUT;
pub use soak::DEFAULT_EVENT_TIMEOUT;
