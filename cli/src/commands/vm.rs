//! `banger vm …`.

use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;

/// `banger vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {}

pub async fn run(_ctx: &Context, command: VmCommand) -> Result<ExitCode> {
    match command {}
}
