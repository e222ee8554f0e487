//! dpkg architecture names and wildcards, as dpkg's `Dpkg::Arch` matches them
//! (`debarch_is`, `debarch_is_concerned`), and the `Architecture:` field of a test, as
//! autopkgtest 5.28's `_check_architecture` judges it.
//!
//! An architecture is a tuple (ABI, libc, OS, CPU): `amd64` is (base, gnu, linux, amd64). A
//! wildcard has `any` in some part and names the last parts: `any`, `linux-any` (OS linux),
//! `any-amd64` (CPU amd64), `gnu-any-any`, `base-gnu-linux-any`. Only the architectures in
//! [`tuple()`] are known; an unknown one matches only itself and `any`.

/// The (ABI, libc, OS, CPU) tuple of a known Debian architecture.
pub fn tuple(arch: &str) -> Option<[&'static str; 4]> {
    Some(match arch {
        "amd64" => ["base", "gnu", "linux", "amd64"],
        "arm64" => ["base", "gnu", "linux", "arm64"],
        "armel" => ["eabi", "gnu", "linux", "arm"],
        "armhf" => ["eabihf", "gnu", "linux", "arm"],
        "i386" => ["base", "gnu", "linux", "i386"],
        "mips64el" => ["abi64", "gnu", "linux", "mips64el"],
        "mipsel" => ["base", "gnu", "linux", "mipsel"],
        "ppc64el" => ["base", "gnu", "linux", "ppc64el"],
        "riscv64" => ["base", "gnu", "linux", "riscv64"],
        "s390x" => ["base", "gnu", "linux", "s390x"],
        "x32" => ["x32", "gnu", "linux", "amd64"],
        "hurd-i386" => ["base", "gnu", "hurd", "i386"],
        "hurd-amd64" => ["base", "gnu", "hurd", "amd64"],
        "kfreebsd-amd64" => ["base", "gnu", "kfreebsd", "amd64"],
        "kfreebsd-i386" => ["base", "gnu", "kfreebsd", "i386"],
        "loong64" => ["base", "gnu", "linux", "loong64"],
        "powerpc" => ["base", "gnu", "linux", "powerpc"],
        "ppc64" => ["base", "gnu", "linux", "ppc64"],
        "sparc64" => ["base", "gnu", "linux", "sparc64"],
        "alpha" => ["base", "gnu", "linux", "alpha"],
        "hppa" => ["base", "gnu", "linux", "hppa"],
        "ia64" => ["base", "gnu", "linux", "ia64"],
        "m68k" => ["base", "gnu", "linux", "m68k"],
        "sh4" => ["base", "gnu", "linux", "sh4"],
        "musl-linux-amd64" => ["base", "musl", "linux", "amd64"],
        _ => return None,
    })
}

/// dpkg's `debarch_is(real, alias)`: whether the architecture `real` is `alias` or matches
/// the wildcard `alias`.
pub fn debarch_is(real: &str, alias: &str) -> bool {
    if alias == real || alias == "any" {
        return true;
    }
    let Some(real) = tuple(real) else {
        return false;
    };
    let parts: Vec<&str> = alias.splitn(4, '-').collect();
    let alias: Vec<&str> = if parts.contains(&"any") {
        let mut full = vec!["any"; 4 - parts.len()];
        full.extend(parts);
        full
    } else {
        match tuple(alias) {
            Some(t) => t.to_vec(),
            None => return false,
        }
    };
    alias
        .iter()
        .zip(real.iter())
        .all(|(a, r)| *a == "any" || a == r)
}

/// dpkg's `debarch_is_concerned(host, arches)`: whether a dependency restricted to `arches`
/// (`[amd64 !i386]`, lowercased) applies on `host`. A list of only negations applies to every
/// architecture none of them matches; an empty list applies nowhere.
pub fn debarch_is_concerned(host: &str, arches: &[String]) -> bool {
    let mut seen = false;
    for arch in arches {
        let arch = arch.to_lowercase();
        if let Some(not) = arch.strip_prefix('!') {
            if debarch_is(host, not) {
                return false;
            }
            seen = true;
        } else if debarch_is(host, &arch) {
            return true;
        }
    }
    seen
}

/// Whether `arch` is a legal entry of a dpkg architecture list (`[a-zA-Z0-9][a-zA-Z0-9-]*`,
/// with a leading `!` allowed).
pub fn is_legal(arch: &str) -> bool {
    let arch = arch.strip_prefix('!').unwrap_or(arch);
    let mut chars = arch.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// autopkgtest's `_check_architecture`: `None` if a test whose `Architecture:` field lists
/// `architectures` runs on `host`, else the reason it is skipped, in autopkgtest's words.
pub fn skip_reason(host: &str, architectures: &[String]) -> Option<String> {
    if architectures.iter().any(|a| a == "all") {
        return Some("Arch 'all' not allowed in Architecture field".into());
    }
    if architectures.is_empty() || architectures == ["any"] {
        return None;
    }
    let mut any_positive = false;
    let mut any_negative = false;
    for arch in architectures {
        match arch.strip_prefix('!') {
            Some(not) => {
                any_negative = true;
                if debarch_is(host, not) {
                    return Some(format!(
                        "Test declares architecture as not supported: {host}"
                    ));
                }
            }
            None => any_positive = true,
        }
    }
    if any_positive {
        if any_negative {
            return Some(
                "It is not permitted for some archs to be prepended by an exclamation mark \
                 while others aren't"
                    .into(),
            );
        }
        if !architectures.iter().any(|a| debarch_is(host, a)) {
            return Some(format!(
                "Test lists explicitly supported architectures, but the current architecture \
                 {host} isn't listed."
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn wildcards() {
        for yes in [
            "amd64",
            "any",
            "linux-any",
            "any-amd64",
            "gnu-any-any",
            "base-gnu-linux-any",
        ] {
            assert!(debarch_is("amd64", yes), "{yes}");
        }
        for no in [
            "i386",
            "x32",
            "hurd-any",
            "any-i386",
            "kfreebsd-amd64",
            "musl-any-any",
            "linux",
            "",
            "bogus",
            "gnu-linux-amd64",
        ] {
            assert!(!debarch_is("amd64", no), "{no}");
        }
        assert!(debarch_is("unknown", "unknown"));
        assert!(!debarch_is("unknown", "linux-any"));
    }

    #[test]
    fn concerned_as_dpkg() {
        assert!(debarch_is_concerned("amd64", &list("amd64 i386")));
        assert!(debarch_is_concerned("amd64", &list("!i386 !arm64")));
        assert!(!debarch_is_concerned("amd64", &list("!i386 !amd64")));
        assert!(!debarch_is_concerned("amd64", &list("i386")));
        assert!(debarch_is_concerned("amd64", &list("AMD64")));
        assert!(!debarch_is_concerned("amd64", &[]));
        // The first match decides, in order.
        assert!(debarch_is_concerned("amd64", &list("!i386 amd64")));
        assert!(!debarch_is_concerned("amd64", &list("!linux-any amd64")));
    }

    #[test]
    fn architecture_field() {
        assert_eq!(skip_reason("amd64", &[]), None);
        assert_eq!(skip_reason("amd64", &list("any")), None);
        assert_eq!(skip_reason("amd64", &list("linux-any")), None);
        assert_eq!(skip_reason("amd64", &list("i386 amd64")), None);
        assert_eq!(skip_reason("amd64", &list("!i386")), None);
        assert_eq!(
            skip_reason("amd64", &list("all")).unwrap(),
            "Arch 'all' not allowed in Architecture field"
        );
        assert_eq!(
            skip_reason("amd64", &list("!amd64")).unwrap(),
            "Test declares architecture as not supported: amd64"
        );
        assert_eq!(
            skip_reason("amd64", &list("arm64 s390x")).unwrap(),
            "Test lists explicitly supported architectures, but the current architecture \
             amd64 isn't listed."
        );
        assert!(
            skip_reason("amd64", &list("arm64 !i386"))
                .unwrap()
                .starts_with("It is not permitted")
        );
    }

    #[test]
    fn legal_names() {
        assert!(is_legal("amd64") && is_legal("!linux-any") && is_legal("AMD64"));
        assert!(!is_legal("") && !is_legal("!") && !is_legal("-x") && !is_legal("a_b"));
    }
}
