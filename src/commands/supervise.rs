//! `bulkhead supervise ID`: the detached supervisor that `run -d` starts. Not for direct use.

use std::process::ExitCode;

use anyhow::Result;

use super::Global;
use crate::container;
use crate::runtime::supervisor::{self, Attach};

/// Arguments of `supervise`.
#[derive(clap::Args)]
pub struct Args {
    /// Full id of the container to run.
    pub id: String,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let container = container::find(&global.root, &args.id)?;
    supervisor::run(&container, Attach::Detached)?;
    Ok(ExitCode::SUCCESS)
}
