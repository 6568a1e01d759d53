//! `banger image …`.

use std::process::ExitCode;

use anyhow::Result;

use crate::context::Context;

/// `banger image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {}

pub async fn run(_ctx: &Context, command: ImageCommand) -> Result<ExitCode> {
    match command {}
}
