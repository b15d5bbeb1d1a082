//! `bulkhead rm [-f] CONTAINER...`: removes containers; `-f` kills running ones first.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};

use super::{control, Global};
use crate::container;

/// Arguments of `rm`.
#[derive(clap::Args)]
pub struct Args {
    /// Kill a running container before removing it.
    #[arg(short, long)]
    pub force: bool,

    /// Containers by name or id.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let code = control::for_each(&args.containers, |name| {
        remove_one(global, name, args.force)
    });
    // Root disks that `rmi -f` left for the removed containers are deleted now.
    if let Err(error) = super::rmi::collect_garbage(global) {
        eprintln!("bulkhead: {error:#}");
    }
    Ok(code)
}

fn remove_one(global: &Global, name: &str, force: bool) -> Result<()> {
    let container = container::find(&global.root, name)?;
    let state = container.state()?;
    if control::is_running(&state) {
        if !force {
            bail!("container {name} is running: stop it first, or use rm -f");
        }
        if control::request(&container, "kill-vm").is_err() {
            // The supervisor does not respond, so end the processes directly.
            for pid in [state.vmm_pid, state.supervisor_pid].into_iter().flatten() {
                // SAFETY: kill has no memory-safety requirements.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        control::wait_exited(&container, Duration::from_secs(30))?;
    }
    container.remove_files()
}
