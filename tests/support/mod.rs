//! Shared test harness: the fake Kubernetes API server, the invariants of the estate, the ARM
//! side (emulator, client, example policy) and waiting for conditions. Test files that need
//! only the last two include them by path.
#![allow(dead_code)]
pub mod arm;
pub mod fake_kube;
pub mod invariants;
pub mod wait;
