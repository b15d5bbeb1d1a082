//! The end of a VM. Any vCPU or device may end it. The first reason wins and wakes the main
//! thread, which then tears the process down.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Reason the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reboot (keyboard-controller reset), the normal way a bulkhead guest
    /// ends, because the VM is not restarted.
    Reset,
    /// The guest powered off.
    PowerOff,
    /// A vCPU hit a triple fault. Linux uses one as its last resort when rebooting.
    TripleFault,
    /// A vCPU stopped with an error that the guest cannot recover from.
    VcpuFailed {
        /// Index of the failed vCPU.
        vcpu: u8,
        /// What failed, for the error message.
        reason: String,
    },
}

/// A one-shot, thread-safe record of the first [`VmExit`], with an eventfd to wait on.
pub struct ExitSignal {
    event: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitSignal {
    /// Creates an unsignalled exit.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            event: EventFd::new(0)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `exit` unless an earlier reason is already recorded, and wakes the waiter.
    pub fn signal(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
        }
        drop(reason);
        // Writing 1 to an eventfd only fails when the counter would overflow, which one write
        // per exit cannot reach.
        let _ = self.event.write(1);
    }

    /// Blocks until some thread signals, then returns the first reason.
    pub fn wait(&self) -> VmExit {
        loop {
            if let Some(exit) = self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return exit;
            }
            // A failed read (EINTR) just retries.
            let _ = self.event.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_reason_wins() {
        let exit = ExitSignal::new().unwrap();
        exit.signal(VmExit::Reset);
        exit.signal(VmExit::TripleFault);
        assert_eq!(exit.wait(), VmExit::Reset);
    }

    #[test]
    fn exit_wakes_waiting_thread() {
        let exit = std::sync::Arc::new(ExitSignal::new().unwrap());
        let waiter = {
            let exit = exit.clone();
            std::thread::spawn(move || exit.wait())
        };
        exit.signal(VmExit::PowerOff);
        assert_eq!(waiter.join().unwrap(), VmExit::PowerOff);
    }
}
