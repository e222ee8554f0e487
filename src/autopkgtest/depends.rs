//! The dependency language of `Depends:`, `Build-Depends*:` and `Recommends:`, and the
//! substitution of a test's `Depends:` into the clauses apt installs.
//!
//! Two grammars, as autopkgtest 5.28 uses them:
//!
//! - dpkg's (`Dpkg::Deps::deps_parse`), for everything that reaches apt: comma-separated
//!   clauses of `|`-separated alternatives, each `name[:arch] [(op version)] [[arches]]
//!   [<profiles>...]`; `<` and `>` read as `<=` and `>=`; `:native` only in build
//!   dependencies; an empty clause is ignored. [`parse`] and [`reduce`] (keep what applies to
//!   an architecture and build profiles, drop the restrictions) follow it.
//! - autopkgtest's own check of a test's `Depends:` ([`parse_test_depends`]): `@`,
//!   `@builddeps@` and `@recommends@` only as whole clauses, and otherwise alternatives
//!   matching `name[:arch] [(op version)] [[arches]]` with a lower-case name, a valid Debian
//!   version and no build profiles. Anything else makes the control file invalid.
//!
//! [`resolve`] then does what autopkgtest does before calling apt: `@` becomes every `deb`
//! binary of the source (`name [arch]` unless `any`/`all`), `@builddeps@` the source's
//! Build-Depends, -Indep and -Arch reduced for the testbed with no build profile active, plus
//! `build-essential`, `@recommends@` the Recommends of every stanza of `debian/control`
//! with `${...}` substitution variables dropped; `needs-sudo` adds `sudo`; `:native` is
//! removed; everything is reduced for the testbed architecture.

use super::arch;
use super::restriction::Restriction;
use super::source::SourcePackage;
use regex::Regex;
use std::fmt;
use std::sync::LazyLock;

/// A version relation's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOp {
    /// `<<`: strictly earlier.
    Earlier,
    /// `<=` (also written `<`, deprecated).
    EarlierOrEqual,
    /// `=`: exactly.
    Equal,
    /// `>=` (also written `>`, deprecated).
    LaterOrEqual,
    /// `>>`: strictly later.
    Later,
}

impl VersionOp {
    /// dpkg's reading of an operator (`version_normalize_relation`).
    pub fn parse(op: &str) -> Option<VersionOp> {
        Some(match op {
            "<<" => VersionOp::Earlier,
            "<=" | "<" => VersionOp::EarlierOrEqual,
            "=" => VersionOp::Equal,
            ">=" | ">" => VersionOp::LaterOrEqual,
            ">>" => VersionOp::Later,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VersionOp::Earlier => "<<",
            VersionOp::EarlierOrEqual => "<=",
            VersionOp::Equal => "=",
            VersionOp::LaterOrEqual => ">=",
            VersionOp::Later => ">>",
        }
    }
}

/// One package relation (one alternative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub package: String,
    /// `:any`, `:native`, `:amd64`, without the colon.
    pub arch_qualifier: Option<String>,
    pub version: Option<(VersionOp, String)>,
    /// `[amd64 !i386]`: the architectures it applies to; `None` when not restricted.
    pub arches: Option<Vec<String>>,
    /// `<!nocheck> <stage1 cross>`: groups of build-profile terms (any group true suffices).
    pub profiles: Option<Vec<Vec<String>>>,
}

impl fmt::Display for Relation {
    /// dpkg's output form: `name:arch (op version) [arches] <profiles>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.package)?;
        if let Some(q) = &self.arch_qualifier {
            write!(f, ":{q}")?;
        }
        if let Some((op, v)) = &self.version {
            write!(f, " ({} {v})", op.as_str())?;
        }
        if let Some(arches) = &self.arches {
            write!(f, " [{}]", arches.join(" "))?;
        }
        for group in self.profiles.iter().flatten() {
            write!(f, " <{}>", group.join(" "))?;
        }
        Ok(())
    }
}

/// One clause: alternatives, any one of which satisfies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause(pub Vec<Relation>);

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

const WS: &str = r"[\t\n\x0b\x0c\r ]";

static SIMPLE: LazyLock<Regex> = LazyLock::new(|| {
    let s = WS;
    Regex::new(&format!(
        r"^{s}*([a-zA-Z0-9][a-zA-Z0-9+.-]*)(?::([a-zA-Z0-9][a-zA-Z0-9-]*))?(?:{s}*\({s}*(<<|<=|=|>=|>>|[<>]){s}*([^)\t\n\x0b\x0c\r ]+){s}*\))?(?:{s}*\[{s}*([^\]]+){s}*\])?((?:{s}*<{s}*[^>]+{s}*>)+)?{s}*$"
    ))
    .expect("valid regex")
});
static COMMA: LazyLock<Regex> = LazyLock::new(|| Regex::new(&format!("{WS}*,{WS}*")).unwrap());
static BAR: LazyLock<Regex> = LazyLock::new(|| Regex::new(&format!(r"{WS}*\|{WS}*")).unwrap());
static PROFILE_GROUPS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("{WS}*>{WS}+<{WS}*")).unwrap());
static LINE_ENDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"{WS}*[\r\n]{WS}*")).unwrap());

fn perl_ws(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Perl's `split(/re/, s)`: a leading empty field is kept, trailing empty fields are not, and
/// an empty string has no fields.
fn perl_split<'a>(re: &Regex, s: &'a str) -> Vec<&'a str> {
    let mut parts: Vec<&str> = if s.is_empty() {
        Vec::new()
    } else {
        re.split(s).collect()
    };
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// One relation in dpkg's grammar (`Dpkg::Deps::Simple::parse_string`); `build_dep` allows
/// the `:native` qualifier.
pub fn parse_relation(text: &str, build_dep: bool) -> Result<Relation, String> {
    let bad = || format!("can't parse dependency `{text}'");
    let c = SIMPLE.captures(text).ok_or_else(bad)?;
    let qualifier = c.get(2).map(|m| m.as_str().to_string());
    if qualifier.as_deref() == Some("native") && !build_dep {
        return Err(bad());
    }
    let version = match (c.get(3), c.get(4)) {
        (Some(op), Some(v)) => Some((
            VersionOp::parse(op.as_str()).ok_or_else(bad)?,
            v.as_str().to_string(),
        )),
        _ => None,
    };
    let arches = match c.get(5) {
        Some(m) => {
            let list: Vec<String> = m
                .as_str()
                .split(perl_ws)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(a) = list.iter().find(|a| !arch::is_legal(a)) {
                return Err(format!(
                    "'{a}' is not a legal architecture in list '{}'",
                    m.as_str()
                ));
            }
            Some(list)
        }
        None => None,
    };
    let profiles = c.get(6).map(|m| {
        let s = m.as_str().trim_matches(perl_ws);
        let s = s.strip_prefix('<').unwrap_or(s);
        let s = s.strip_suffix('>').unwrap_or(s).trim_matches(perl_ws);
        perl_split(&PROFILE_GROUPS, s)
            .into_iter()
            .map(|g| {
                g.split(perl_ws)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    });
    Ok(Relation {
        package: c[1].to_string(),
        arch_qualifier: qualifier,
        version,
        arches,
        profiles,
    })
}

/// A dependency field in dpkg's grammar (`deps_parse`, without reductions).
pub fn parse(text: &str, build_dep: bool) -> Result<Vec<Clause>, String> {
    let text = LINE_ENDS.replace_all(text, " ");
    let text = text.trim_matches(perl_ws);
    let mut clauses = Vec::new();
    for and in perl_split(&COMMA, text) {
        let alternatives = perl_split(&BAR, and)
            .into_iter()
            .map(|or| parse_relation(or, build_dep))
            .collect::<Result<Vec<_>, _>>()?;
        if !alternatives.is_empty() {
            clauses.push(Clause(alternatives));
        }
    }
    Ok(clauses)
}

/// Whether build-profile `groups` hold with `active` profiles (dpkg's
/// `evaluate_restriction_formula`: some group whose every term holds).
pub fn profiles_hold(groups: &[Vec<String>], active: &[String]) -> bool {
    groups.iter().any(|group| {
        group.iter().all(|term| match term.strip_prefix('!') {
            Some(p) if !p.is_empty() => !active.iter().any(|a| a == p),
            _ => active.iter().any(|a| a == term),
        })
    })
}

/// dpkg's `reduce_arch` (and `reduce_profiles` when `profiles` is given): alternatives that do
/// not apply on `host` (or with those active profiles) are dropped, the restrictions of the
/// others removed, and clauses left empty dropped.
pub fn reduce(clauses: Vec<Clause>, host: &str, profiles: Option<&[String]>) -> Vec<Clause> {
    clauses
        .into_iter()
        .filter_map(|Clause(alternatives)| {
            let kept: Vec<Relation> = alternatives
                .into_iter()
                .filter(|r| {
                    r.arches
                        .as_ref()
                        .is_none_or(|a| arch::debarch_is_concerned(host, a))
                })
                .filter(|r| match (profiles, &r.profiles) {
                    (Some(active), Some(groups)) => profiles_hold(groups, active),
                    _ => true,
                })
                .map(|mut r| {
                    r.arches = None;
                    if profiles.is_some() {
                        r.profiles = None;
                    }
                    r
                })
                .collect();
            (!kept.is_empty()).then_some(Clause(kept))
        })
        .collect()
}

/// One clause of a test's `Depends:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestDepend {
    /// `@`: every binary package of the source.
    Binaries,
    /// `@builddeps@`: the source's build dependencies and `build-essential`.
    BuildDeps,
    /// `@recommends@`: the Recommends of the source's binaries.
    Recommends,
    /// Any other clause, as written (trimmed).
    Clause(String),
}

static TEST_DEP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?P<package>[a-z0-9+,\-.]+)(?::[a-z0-9_-]+)?\s*(\((?P<relation><<|<=|>=|=|>>)\s*(?P<version>[^)]*)\))?(\s*\[(?P<arch>[a-z0-9+,\-.! ]+)\])?$",
    )
    .expect("valid regex")
});

/// python-debian's check of a Debian version (`NativeVersion`): `[epoch:]upstream[-revision]`
/// of `[A-Za-z0-9.+:~-]`, with a `:` only after an epoch.
pub fn valid_version(v: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".+:~-".contains(c);
    if v.is_empty() || !v.chars().all(allowed) {
        return false;
    }
    if let Some((epoch, rest)) = v.split_once(':')
        && !epoch.is_empty()
        && epoch.chars().all(|c| c.is_ascii_digit())
        && !rest.is_empty()
    {
        return true;
    }
    !v.contains(':')
}

/// A test's `Depends:` value, checked as autopkgtest checks it: the clauses, or every
/// problem in autopkgtest's words (`Test Depends field contains an invalid dependency ...`).
pub fn parse_test_depends(value: &str) -> Result<Vec<TestDepend>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for group in value.split(',') {
        let group = group.trim_matches(super::deb822::py_space);
        match group {
            "" => continue,
            "@" => out.push(TestDepend::Binaries),
            "@builddeps@" => out.push(TestDepend::BuildDeps),
            "@recommends@" => out.push(TestDepend::Recommends),
            _ => {
                let mut ok = true;
                for dep in group.split('|') {
                    let dep = dep.trim_matches(super::deb822::py_space);
                    let Some(m) = TEST_DEP.captures(dep) else {
                        errors.push(format!(
                            "Test Depends field contains an invalid dependency `{dep}'"
                        ));
                        ok = false;
                        continue;
                    };
                    if let Some(v) = m.name("version")
                        && !valid_version(v.as_str())
                    {
                        errors.push(format!(
                            "Test Depends field contains dependency `{dep}' with an invalid version"
                        ));
                        ok = false;
                        continue;
                    }
                    // What apt is later given must also be dpkg's grammar (autopkgtest would
                    // otherwise fail the testbed when dpkg cannot parse it).
                    if parse_relation(&dep.replace(":native", ""), false).is_err() {
                        errors.push(format!(
                            "Test Depends field contains an invalid dependency `{dep}'"
                        ));
                        ok = false;
                    }
                }
                if ok {
                    out.push(TestDepend::Clause(group.to_string()));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `@`: every `deb` binary of the source, as autopkgtest writes them (`name`, or
/// `name [arches]` unless its Architecture is `any` or `all`).
pub fn binaries(source: &SourcePackage) -> Vec<String> {
    source
        .binaries
        .iter()
        .filter(|b| b.package_type == "deb")
        .map(|b| {
            if b.architecture == "any" || b.architecture == "all" {
                b.name.clone()
            } else {
                format!("{} [{}]", b.name, b.architecture)
            }
        })
        .collect()
}

/// `@builddeps@`: Build-Depends, Build-Depends-Indep and Build-Depends-Arch reduced for
/// `host` with no build profile active, then `build-essential`.
pub fn build_deps(source: &SourcePackage, host: &str) -> Result<Vec<String>, String> {
    let mut text = source.build_depends.clone().unwrap_or_default();
    for more in [&source.build_depends_indep, &source.build_depends_arch]
        .into_iter()
        .flatten()
    {
        text.push_str(", ");
        text.push_str(more);
    }
    let clauses = parse(&text, true).map_err(|e| format!("Invalid build dependencies: {e}"))?;
    let mut out: Vec<String> = reduce(clauses, host, Some(&[]))
        .iter()
        .map(Clause::to_string)
        .collect();
    out.push("build-essential".into());
    Ok(out)
}

static VARIABLE_IN_PARENS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\(.*\$\{\S*\}.*\)").expect("valid regex"));

/// autopkgtest's `_filter_variables`: clauses starting with `${` dropped, and a version
/// relation holding a `${...}` removed.
fn filter_variables(deps: &str) -> String {
    deps.split(',')
        .map(|d| d.trim_matches(super::deb822::py_space))
        .filter(|d| !d.starts_with("${"))
        .map(|d| VARIABLE_IN_PARENS.replace_all(d, "").into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `@recommends@`: the Recommends of every stanza of `debian/control`, substitution
/// variables dropped, reduced for `host` with no build profile active.
pub fn recommends(source: &SourcePackage, host: &str) -> Result<Vec<String>, String> {
    let mut text = String::new();
    for r in &source.recommends {
        text.push_str(r);
        text.push(',');
    }
    let clauses =
        parse(&filter_variables(&text), false).map_err(|e| format!("Invalid Recommends: {e}"))?;
    Ok(reduce(clauses, host, Some(&[]))
        .iter()
        .map(Clause::to_string)
        .collect())
}

/// The dependencies of a test as autopkgtest hands them to apt on a `host` testbed: its
/// `Depends:` with `@`, `@builddeps@` and `@recommends@` substituted from `source`, `sudo`
/// added for `needs-sudo`, `:native` removed, reduced for `host`. Each string is one clause
/// (`foo (>= 1.2) | bar`).
///
/// `depends` is what [`parse_test_depends`] returned (a `needs-recommends` test's already ends
/// with [`TestDepend::Recommends`]). An error says which part of the source is invalid.
pub fn resolve(
    depends: &[TestDepend],
    restrictions: &[Restriction],
    source: &SourcePackage,
    host: &str,
) -> Result<Vec<String>, String> {
    let mut deps: Vec<String> = Vec::new();
    for d in depends {
        match d {
            TestDepend::Binaries => deps.extend(binaries(source)),
            TestDepend::BuildDeps => deps.extend(build_deps(source, host)?),
            TestDepend::Recommends => deps.extend(recommends(source, host)?),
            TestDepend::Clause(c) => deps.push(c.clone()),
        }
    }
    if restrictions.contains(&Restriction::NeedsSudo) && !deps.iter().any(|d| d == "sudo") {
        deps.push("sudo".into());
    }
    let joined = deps.join(", ").replace(":native", "");
    let clauses = parse(&joined, false).map_err(|e| format!("Invalid dependencies: {e}"))?;
    Ok(reduce(clauses, host, None)
        .iter()
        .map(Clause::to_string)
        .collect())
}
