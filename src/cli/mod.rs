//! The `kmsroute` command line, split by concern: `args` (what can be typed), `commands`
//! (what each subcommand does), `support` (what they share).

pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod support;
