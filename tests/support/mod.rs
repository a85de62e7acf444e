//! Shared test harness: the fake Kubernetes API server, and the invariants of the estate.
#![allow(dead_code)]
pub mod fake_kube;
pub mod invariants;
