//! The `kmsroute` command line: `args` (what can be typed), `commands` (which subcommand
//! runs), one file per subcommand (`plan`, `apply`, `validate`, `controller` for `run`,
//! `emulator`, `info` for `crd`/`endpoints`/`demo`), `error` (what stops one, and its exit
//! code), `support` (what they share).

pub(crate) mod apply;
pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod controller;
pub(crate) mod emulator;
pub(crate) mod error;
pub(crate) mod info;
pub(crate) mod plan;
pub(crate) mod support;
pub(crate) mod validate;
