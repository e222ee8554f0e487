//! `vmcheck naughty`: checking a failure's text against the known issues, and which of them
//! have gone stale.

use super::args::NaughtyCommand;
use super::errors::CliError;
use vmcheck::exit_codes;
use vmcheck::project::Project;

pub(super) fn naughty(project: &Project, cmd: NaughtyCommand) -> Result<i32, CliError> {
    use std::io::Read;
    use vmcheck::naughty::{NAUGHTY_DIR, NaughtyDb};
    let (dir, os) = match cmd {
        NaughtyCommand::Check { dir } => (dir, None),
        NaughtyCommand::Match { os, dir } => (dir, Some(os)),
        NaughtyCommand::Stale {
            days,
            runs,
            dir,
            results_db,
        } => {
            let dir = dir.unwrap_or_else(|| project.root.join(NAUGHTY_DIR));
            let db = NaughtyDb::load(&dir).map_err(CliError::Naughty)?;
            return super::results::naughty_stale(project, &db, days, runs, results_db);
        }
    };
    let dir = dir.unwrap_or_else(|| project.root.join(NAUGHTY_DIR));
    let db = NaughtyDb::load(&dir).map_err(CliError::Naughty)?;
    let Some(os) = os else {
        out!("{}: {} patterns, all valid", dir.display(), db.len());
        for (alias, target) in db.aliases() {
            out!("  {alias} -> {target}");
        }
        return Ok(exit_codes::OK);
    };
    let mut output = String::new();
    std::io::stdin()
        .read_to_string(&mut output)
        .map_err(|e| CliError::Usage(format!("cannot read the output from stdin: {e}")))?;
    let m = db.matches(&os, &output);
    let shown = |p: &std::path::Path| {
        p.strip_prefix(&project.root)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    for n in &m.own {
        out!("#{} {}", n.issue, shown(&n.path));
    }
    for n in &m.other {
        out!("#{} {} (in {})", n.issue, shown(&n.path), n.os);
    }
    Ok(if m.own.is_empty() { 1 } else { exit_codes::OK })
}
