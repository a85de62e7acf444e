//! kmsroute: declarative, self-healing KMS activation routes for force-tunneled Azure subnets.
//!
//! Layers, each knowing only the ones before it: the foundations ([`ids`], [`model`],
//! [`catalog`], [`effective`], [`dns`]) → [`api`] (the custom resource and its validation) →
//! [`plan`] (the pure planner) → [`azure`] (the ARM port) → [`executor`] (one pass in named phases, and
//! [`output`] for people) → [`controller`] → [`server`]; beside them the [`emulator`] (a
//! stand-in for ARM with its own copies of Azure's rules) and the [`demo`]. See
//! `docs/architecture.md`.

pub mod api;
pub mod azure;
pub mod catalog;
pub mod controller;
pub mod demo;
pub mod dns;
pub mod effective;
pub mod emulator;
pub mod executor;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
pub mod ids;
pub mod logging;
pub mod model;
pub mod output;
pub mod plan;
pub mod server;
