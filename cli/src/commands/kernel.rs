//! `banger kernel …`.

use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;

/// `banger kernel` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {}

pub async fn run(_ctx: &Context, command: KernelCommand) -> Result<ExitCode> {
    match command {}
}
