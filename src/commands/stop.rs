//! `bulkhead stop [-t SECONDS] CONTAINER...`: sends the stop signal, then kills the microVM
//! after the grace period.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{control, Global};
use crate::container;

/// Arguments of `stop`.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds to wait for the process to exit before the microVM is killed.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,

    /// Containers by name or id.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    Ok(control::for_each(&args.containers, |name| {
        stop_one(global, name, args.time)
    }))
}

fn stop_one(global: &Global, name: &str, seconds: u64) -> Result<()> {
    let container = container::find(&global.root, name)?;
    if !control::is_running(&container.state()?) {
        return Ok(());
    }
    control::request(&container, &format!("stop {seconds}"))
        .with_context(|| format!("failed to stop container {name}"))?;
    // The supervisor also needs the guest's shutdown time after the VM or process ends.
    control::wait_exited(&container, Duration::from_secs(seconds + 30))?;
    Ok(())
}
