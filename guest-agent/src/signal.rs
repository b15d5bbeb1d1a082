//! Signals sent to the agent: `SIGCHLD` drives the reaper, and termination signals shut the
//! guest down.
//!
//! The signals are blocked in every thread and taken synchronously by one thread with
//! sigwait(2), so no handler runs at an arbitrary point. The process service unblocks them in
//! each child before exec.

use std::thread;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use tracing::{info, warn};

use crate::process::Processes;

/// Signals handled by the signal thread.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPWR,
    ] {
        set.add(signal);
    }
    set
}

/// Blocks the handled signals in the calling thread, so that threads created afterwards inherit
/// the mask. Must run before the agent starts any thread.
///
/// # Errors
/// Fails when sigprocmask fails, which it does only for invalid arguments.
pub fn block() -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
}

/// Starts the signal thread: it reaps children on `SIGCHLD` and calls `terminate` on `SIGTERM`,
/// `SIGINT`, `SIGHUP` or `SIGPWR`.
pub fn start(processes: Processes, terminate: impl Fn(Signal) + Send + 'static) {
    let run = move || {
        let set = handled();
        // A SIGCHLD that arrived before this thread started is still pending, so the first
        // wait returns it; no exit is missed.
        loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => processes.reap(),
                Ok(signal) => {
                    info!(%signal, "termination signal received");
                    terminate(signal);
                }
                Err(errno) => warn!(error = %errno, "sigwait failed"),
            }
        }
    };
    thread::Builder::new()
        .name("signal".into())
        .spawn(run)
        .expect("failed to start the signal thread");
}
