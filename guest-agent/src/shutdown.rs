//! Orderly shutdown: stop every process, flush the disks and power off.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::mount::INIT_MOUNTS;
use crate::syscall::Syscall;

/// Time the processes get between `SIGTERM` and `SIGKILL`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(5);

/// What happens after the processes are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Unmount and power the VM off.
    PowerOff,
    /// Exit the agent with status 0 (runs outside a VM).
    Exit,
}

/// Returns true while any process other than the agent exists in its PID namespace.
fn others_exist() -> bool {
    // kill(-1, 0) from PID 1 reaches every other process of the namespace, zombies included,
    // and fails with ESRCH when there is none.
    kill(Pid::from_raw(-1), None) != Err(Errno::ESRCH)
}

fn wait_for_others(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while others_exist() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Stops every process, syncs and finishes as `finish` says. Runs once: a second caller blocks
/// forever while the first one shuts down.
pub fn run(sys: &dyn Syscall, finish: Finish) -> ! {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    info!("shutting down");

    // The signal thread keeps reaping, so exited processes do not linger as zombies.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !wait_for_others(GRACE_PERIOD) {
        warn!("processes still running after the grace period; sending SIGKILL");
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        wait_for_others(GRACE_PERIOD);
    }
    sys.sync();

    if finish == Finish::Exit {
        info!("shutdown complete");
        std::process::exit(0);
    }

    for spec in INIT_MOUNTS.iter().rev() {
        if let Err(err) = sys.umount(Path::new(spec.target), MntFlags::MNT_DETACH) {
            warn!(target = spec.target, error = %err, "unmount failed");
        }
    }
    // The overlay root cannot be unmounted while it is the root; read-only makes its upper
    // layer consistent on disk.
    // NOTE: the writable disk under the overlay is not reachable by path after the root switch,
    // so it is synced but not remounted read-only; ext4's journal covers the rest.
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(err) = sys.mount(None, Path::new("/"), None, flags, None) {
        warn!(error = %err, "remounting the root read-only failed");
    }
    sys.sync();

    info!("powering off");
    let err = sys.power_off();
    // PID 1 must not exit: the kernel would panic. Without a power-off there is nothing left
    // to do but wait.
    warn!(error = %err, "power-off failed");
    loop {
        std::thread::park();
    }
}
