//! `bulkhead kill [-s SIGNAL] CONTAINER...`: sends a signal to the container's process.

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::{control, run::parse_signal, Global};
use crate::container;

/// Arguments of `kill`.
#[derive(clap::Args)]
pub struct Args {
    /// Signal name or number.
    #[arg(short, long, default_value = "SIGKILL")]
    pub signal: String,

    /// Containers by name or id.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let signal = parse_signal(&args.signal)?;
    Ok(control::for_each(&args.containers, |name| {
        let container = container::find(&global.root, name)?;
        if !control::is_running(&container.state()?) {
            bail!("container {name} is not running");
        }
        control::request(&container, &format!("signal {signal}"))
    }))
}
