//! `banger network …`.

use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;

/// `banger network` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {}

pub async fn run(_ctx: &Context, command: NetworkCommand) -> Result<ExitCode> {
    match command {}
}
