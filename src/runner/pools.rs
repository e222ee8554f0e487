//! The kinds of global machine a run boots (*pools*): the run's usual machine, one per other
//! TEST_OS of a run on several, and one more per distinct machine that nondestructive tests
//! need beyond it (an autopkgtest's dependencies, installed as a layer, and its closed
//! network). The state machine knows a
//! pool by its index and its cost; the driver boots a machine of a pool from its [`Pool`].

use crate::checkfile::{Body, TestDef};
use crate::machine::layer::Layer;
use std::sync::Arc;

/// What the machines of test `def` need beyond their image, wherever they come from (its
/// own or a pool's): an autopkgtest's dependency layer, and a closed network unless the
/// test needs the internet and is let out.
pub fn extras(def: &TestDef) -> (Option<Arc<Layer>>, bool) {
    match &def.body {
        Body::Autopkgtest(apt) => (apt.layer.clone(), !apt.internet),
        _ => (None, false),
    }
}

/// A kind of global machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The image it boots: a TEST_OS of the run.
    pub os: String,
    /// The image's default when `None`.
    pub memory_mib: Option<u32>,
    pub cpus: u32,
    pub layer: Option<Arc<Layer>>,
    /// Its NIC reaches nothing outside (see `MachineSpec::isolated`).
    pub isolated: bool,
    /// Guest ports it forwards to the host (nondestructive tests that ask for them).
    pub forward: Vec<u16>,
}

/// The pools of a run, by index: `[0]` is the usual one.
#[derive(Debug, Clone)]
pub struct Pools(Vec<Pool>);

impl Pools {
    pub fn new(usual: Pool) -> Pools {
        Pools(vec![usual])
    }

    /// The index of the pool nondestructive test `def` runs on (`os`: its TEST_OS), added
    /// if it is new.
    pub fn of(&mut self, def: &TestDef, os: &str) -> usize {
        let pool = match (&def.body, def.provision.first()) {
            (Body::Autopkgtest(_), Some(m)) => {
                let (layer, isolated) = extras(def);
                Pool {
                    os: os.to_owned(),
                    memory_mib: m.memory_mib,
                    cpus: m.cpus,
                    layer,
                    isolated,
                    forward: Vec::new(),
                }
            }
            (_, Some(m)) if !m.forward.is_empty() => Pool {
                os: os.to_owned(),
                forward: m.forward.clone(),
                ..self.0[0].clone()
            },
            _ if os == self.0[0].os => return 0,
            _ => Pool {
                os: os.to_owned(),
                ..self.0[0].clone()
            },
        };
        match self.0.iter().position(|p| *p == pool) {
            Some(i) => i,
            None => {
                self.0.push(pool);
                self.0.len() - 1
            }
        }
    }

    pub fn get(&self, i: usize) -> &Pool {
        &self.0[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_test_os_has_a_pool_of_its_own() {
        let usual = Pool {
            os: "busybox".into(),
            memory_mib: Some(300),
            cpus: 1,
            layer: None,
            isolated: false,
            forward: Vec::new(),
        };
        let mut pools = Pools::new(usual.clone());
        let def = TestDef::sample("check-a", "TestA.testB");
        assert_eq!(pools.of(&def, "busybox"), 0);
        assert_eq!(pools.of(&def, "debian-12"), 1);
        assert_eq!(pools.of(&def, "debian-12"), 1);
        assert_eq!(pools.of(&def, "busybox"), 0);
        assert_eq!(
            pools.get(1),
            &Pool {
                os: "debian-12".into(),
                ..usual
            }
        );
        assert_eq!(pools.iter().count(), 2);
        // Tests whose shared machine forwards ports have a pool of their own.
        let mut web = TestDef::sample("check-a", "TestA.testWeb");
        web.provision[0].forward = vec![9090];
        assert_eq!(pools.of(&web, "busybox"), 2);
        assert_eq!(pools.get(2).forward, [9090]);
        assert_eq!(pools.of(&web, "busybox"), 2);
    }
}
