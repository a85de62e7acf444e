//! kmsroute: declarative, self-healing KMS activation routes for force-tunneled Azure subnets.
//!
//! Layers, top to bottom (each knows only those below it): [`api`] (the custom resource and
//! validation) → [`catalog`] (KMS and cloud endpoints) → [`plan`] (the pure planner over the
//! [`model`] of observed Azure). See `docs/architecture.md`.

pub mod api;
pub mod azure;
pub mod catalog;
pub mod controller;
pub mod demo;
pub mod dns;
pub mod effective;
pub mod emulator;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
pub mod ids;
pub mod model;
pub mod output;
pub mod plan;
pub mod reconcile;
pub mod server;
