//! Shared test harness: the fake Kubernetes API server, the invariants of the estate, the
//! controller's test settings, the ARM side (emulator, client, example policy) and waiting for
//! conditions. Test files that need only the ARM side and waiting include those two by path.
#![allow(dead_code)]
pub mod arm;
pub mod fake_kube;
pub mod invariants;
pub mod settings;
pub mod wait;
