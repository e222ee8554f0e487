//! The `provision` setting: the machines a test boots, each a [`MachineReq`].
//!
//! ```toml
//! provision.machine1 = { memory = "512M" }
//! provision.machine2 = { image = "debian-12", cpus = 2 }
//! ```
//!
//! Machine names match `^[a-z][a-z0-9_-]*$`; each machine may set `image` (default: TEST_OS;
//! it may take values of the test's matrix, `image = "{matrix.server}"`),
//! `memory` (`"512M"`, `"1G"` or integer MiB; default: the image's), `cpus` (1..=64,
//! default 1) and `forward` (guest TCP ports reached from the host, e.g. `[80, 9090]`).
//! Without `provision` a test gets one machine, `machine1`, with no overrides.

use super::error::Diagnostics;
use super::keys::{is_machine_name, unknown_nested_key};
use super::memory::memory;
use super::value::{Value, entries, integer_in, string, table};

/// The machine `run` scripts execute in, and the one a test gets without `provision`.
pub const DEFAULT_MACHINE: &str = "machine1";

/// One machine a test needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineReq {
    pub name: String,
    /// The image to boot; `None` means TEST_OS.
    pub image: Option<String>,
    /// Memory in MiB; `None` means the image's default.
    pub memory_mib: Option<u32>,
    pub cpus: u32,
    /// Guest TCP ports forwarded to ports of the host's 127.0.0.1, in the order written.
    pub forward: Vec<u16>,
    /// Where `image` is written in the check file (line, column), for errors about it.
    pub image_at: Option<(usize, usize)>,
}

impl MachineReq {
    /// `machine1` with no overrides: what a test without `provision` gets.
    pub fn default_machine() -> MachineReq {
        MachineReq {
            name: DEFAULT_MACHINE.to_owned(),
            image: None,
            memory_mib: None,
            cpus: 1,
            forward: Vec::new(),
            image_at: None,
        }
    }

    /// The image this machine boots when TEST_OS is `test_os`.
    pub fn image_or<'a>(&'a self, test_os: &'a str) -> &'a str {
        self.image.as_deref().unwrap_or(test_os)
    }
}

const MACHINE_KEYS: &[&str] = &["image", "memory", "cpus", "forward"];

/// An image name that takes matrix values, `"{matrix.server}"` or `"debian-{matrix.v}"`:
/// one with every reference replaced by `x` is a valid name (the values are checked for
/// each case).
fn is_image_template(name: &str) -> bool {
    let refs = super::matrix::references(name);
    let mut plain = name.to_owned();
    for key in refs.iter() {
        plain = plain.replacen(&format!("{{matrix.{key}}}"), "x", 1);
    }
    !refs.is_empty() && is_image_name(&plain)
}

/// `^[A-Za-z0-9_][A-Za-z0-9._-]*$`: a name that is also a safe file name.
pub(super) fn is_image_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Parses the value of `provision`; machines come in the order they are written.
pub(super) fn provision(d: &mut Diagnostics, value: &Value) -> Option<Vec<MachineReq>> {
    let machines = table(
        d,
        "provision",
        value,
        "a table of machines, e.g. provision.machine1 = { memory = \"1G\" }",
    )?;
    if machines.is_empty() {
        d.error(
            value.span(),
            "'provision' must name at least one machine, e.g. provision.machine1 = {}",
        );
        return None;
    }
    let mut result = Vec::new();
    let mut ok = true;
    for (key, spec) in entries(machines) {
        let name: &str = key.get_ref();
        if !is_machine_name(name) {
            d.error(
                key.span(),
                format!(
                    "invalid machine name '{name}': machine names are a lowercase ASCII letter \
                     followed by lowercase letters, digits, '_' and '-'"
                ),
            );
            ok = false;
            continue;
        }
        match machine(d, name, spec) {
            Some(machine) => result.push(machine),
            None => ok = false,
        }
    }
    ok.then_some(result)
}

fn machine(d: &mut Diagnostics, name: &str, value: &Value) -> Option<MachineReq> {
    let path = format!("provision.{name}");
    let fields = table(
        d,
        &path,
        value,
        "a table with optional image, memory, cpus and forward (e.g. { memory = \"1G\" })",
    )?;
    let mut machine = MachineReq {
        name: name.to_owned(),
        ..MachineReq::default_machine()
    };
    let mut ok = true;
    for (key, field) in entries(fields) {
        let field_key = format!("{path}.{}", key.get_ref());
        match key.get_ref().as_ref() {
            "image" => match string(d, &field_key, field) {
                Some(image) if is_image_name(image) || is_image_template(image) => {
                    machine.image = Some(image.to_owned());
                    machine.image_at = Some(d.position(field.span().start));
                }
                Some(image) => {
                    d.error(
                        field.span(),
                        format!(
                            "'{field_key}': invalid image name \"{image}\": image names are \
                             ASCII letters, digits, '.', '_' and '-'"
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "memory" => match memory(d, &field_key, field) {
                Some(mib) => machine.memory_mib = Some(mib),
                None => ok = false,
            },
            "cpus" => match integer_in(d, &field_key, field, 1..=64) {
                Some(cpus) => machine.cpus = cpus as u32,
                None => ok = false,
            },
            "forward" => match forward(d, &field_key, field) {
                Some(ports) => machine.forward = ports,
                None => ok = false,
            },
            _ => {
                unknown_nested_key(d, &path, key, MACHINE_KEYS);
                ok = false;
            }
        }
    }
    ok.then_some(machine)
}

/// `forward = [80, 9090]`: distinct guest TCP ports, none of them SSH's 22 (forwarded
/// already).
fn forward(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Vec<u16>> {
    let toml::de::DeValue::Array(items) = value.get_ref() else {
        d.error(
            value.span(),
            format!("'{key}' must be an array of guest TCP ports, e.g. [80, 9090]"),
        );
        return None;
    };
    let mut ports: Vec<u16> = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        match integer_in(d, key, item, 1..=65535) {
            Some(22) => {
                d.error(
                    item.span(),
                    format!("'{key}': port 22 is forwarded already (the machine's SSH)"),
                );
                ok = false;
            }
            Some(p) if ports.contains(&(p as u16)) => {
                d.error(item.span(), format!("'{key}': port {p} is named twice"));
                ok = false;
            }
            Some(p) => ports.push(p as u16),
            None => ok = false,
        }
    }
    ok.then_some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use toml::de::DeTable;

    fn parse(text: &str) -> Result<Vec<MachineReq>, Vec<(usize, usize, String)>> {
        let doc = DeTable::parse(text).unwrap();
        let value = doc.get_ref().get("provision").unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let result = provision(&mut d, value).map(|machines| {
            // Positions are checked on their own (`image_positions`).
            let unplaced = |m: MachineReq| MachineReq {
                image_at: None,
                ..m
            };
            machines.into_iter().map(unplaced).collect()
        });
        let errors: Vec<_> = d
            .finish()
            .into_iter()
            .map(|e| (e.line, e.col, e.message))
            .collect();
        match result {
            Some(machines) if errors.is_empty() => Ok(machines),
            _ => Err(errors),
        }
    }

    fn req(name: &str, image: Option<&str>, memory_mib: Option<u32>, cpus: u32) -> MachineReq {
        MachineReq {
            name: name.into(),
            image: image.map(Into::into),
            memory_mib,
            cpus,
            forward: Vec::new(),
            image_at: None,
        }
    }

    #[test]
    fn valid() {
        let cases = [
            (
                "provision.machine1 = {}",
                vec![req("machine1", None, None, 1)],
            ),
            (
                "provision.zeta = { memory = \"512M\" }\nprovision.alpha = { image = \"debian-12\", cpus = 2, memory = 2048 }",
                vec![
                    req("zeta", None, Some(512), 1),
                    req("alpha", Some("debian-12"), Some(2048), 2),
                ],
            ),
            (
                "[provision.machine1]\nmemory = \"1G\"\n[provision.web-server_2]\ncpus = 64",
                vec![
                    req("machine1", None, Some(1024), 1),
                    req("web-server_2", None, None, 64),
                ],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    /// Each error as (line, column, start of the message).
    type Expected<'a> = &'a [(usize, usize, &'a str)];

    #[test]
    fn invalid() {
        let cases: [(&str, Expected); 9] = [
            (
                "provision = 1",
                &[(1, 13, "'provision' must be a table of machines")],
            ),
            (
                "provision = {}",
                &[(1, 13, "'provision' must name at least one machine")],
            ),
            (
                "provision.Machine1 = {}",
                &[(1, 11, "invalid machine name 'Machine1'")],
            ),
            (
                "provision.m = 1",
                &[(1, 15, "'provision.m' must be a table with optional image")],
            ),
            (
                "provision.m = { memory = \"32M\", cpus = 0 }",
                &[
                    (
                        1,
                        26,
                        "'provision.m.memory': invalid memory size \"32M\": it must be between 64 MiB",
                    ),
                    (
                        1,
                        40,
                        "'provision.m.cpus' must be between 1 and 64, found 0",
                    ),
                ],
            ),
            (
                "provision.m = { memory = 32 }",
                &[(
                    1,
                    26,
                    "'provision.m.memory': it must be between 64 MiB and 65536 MiB (64G), found 32 (MiB)",
                )],
            ),
            (
                "provision.m = { memory = true }",
                &[(1, 26, "'provision.m.memory': it must be a size string")],
            ),
            (
                "provision.m = { image = \"../x\" }",
                &[(1, 25, "invalid image name \"../x\"")],
            ),
            (
                "provision.m = { mem = 1, imag = 'x' }",
                &[
                    (
                        1,
                        17,
                        "unknown key 'mem' in 'provision.m' (valid: image, memory, cpus, forward)",
                    ),
                    (
                        1,
                        26,
                        "unknown key 'imag' in 'provision.m', did you mean 'image'? (valid: image, memory, cpus, forward)",
                    ),
                ],
            ),
        ];
        for (text, expected) in cases {
            let errors = parse(text).unwrap_err();
            assert_eq!(errors.len(), expected.len(), "{text}: {errors:?}");
            for ((line, col, message), (eline, ecol, emessage)) in errors.iter().zip(expected) {
                assert_eq!((line, col), (eline, ecol), "{text}: {message}");
                assert!(message.contains(emessage), "{text}: {message}");
            }
        }
    }

    #[test]
    fn forwarded_ports() {
        let m = parse("provision.web = { forward = [80, 9090] }").unwrap();
        assert_eq!(m[0].forward, [80, 9090]);
        for (text, says) in [
            (
                "provision.a = { forward = 80 }",
                "must be an array of guest TCP ports",
            ),
            (
                "provision.a = { forward = [22] }",
                "port 22 is forwarded already",
            ),
            (
                "provision.a = { forward = [80, 80] }",
                "port 80 is named twice",
            ),
            ("provision.a = { forward = [0] }", "'provision.a.forward'"),
            (
                "provision.a = { forward = [\"80\"] }",
                "'provision.a.forward'",
            ),
        ] {
            let errors = parse(text).unwrap_err();
            assert!(
                errors.len() == 1 && errors[0].2.contains(says),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn image_positions() {
        let text = "provision.a = {}\nprovision.b = { cpus = 2, image = \"debian-12\" }";
        let doc = DeTable::parse(text).unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let machines = provision(&mut d, doc.get_ref().get("provision").unwrap()).unwrap();
        let at: Vec<_> = machines.iter().map(|m| m.image_at).collect();
        assert_eq!(at, [None, Some((2, 35))]);
    }

    #[test]
    fn image_names() {
        for (name, ok) in [
            ("debian-12", true),
            ("rhel-9.4", true),
            ("_x", true),
            ("", false),
            (".x", false),
            ("-x", false),
            ("a/b", false),
            ("a b", false),
        ] {
            assert_eq!(is_image_name(name), ok, "{name}");
        }
    }
}
