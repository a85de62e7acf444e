//! Shared test harness: the fake Kubernetes API server.
pub mod fake_kube;
