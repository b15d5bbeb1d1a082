//! vCPU threads. Each thread runs `KVM_RUN` in a loop and routes port I/O and MMIO exits to the
//! buses; any exit that ends the guest is reported through the shared [`ExitSignal`].

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, VmExit};

/// The port I/O and MMIO buses that every vCPU dispatches to.
pub struct Buses {
    /// Port I/O devices: the serial console and the keyboard controller.
    pub pio: Bus,
    /// MMIO devices: the virtio-mmio transports.
    pub mmio: Bus,
}

/// What the run loop does after handling one exit.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Enter the guest again.
    Continue,
    /// Stop this vCPU because the VM is ending.
    Stop(VmExit),
}

/// One vCPU, ready to run.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    buses: Arc<Buses>,
    exit: Arc<ExitSignal>,
}

impl Vcpu {
    /// Wraps a configured vCPU.
    pub fn new(index: u8, fd: VcpuFd, buses: Arc<Buses>, exit: Arc<ExitSignal>) -> Self {
        Self {
            index,
            fd,
            buses,
            exit,
        }
    }

    /// Starts the vCPU on its own thread, named `vcpuN`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let vcpu = self.index;
        loop {
            match self.run_once() {
                Step::Continue => {}
                Step::Stop(exit) => {
                    tracing::debug!(vcpu, ?exit, "vCPU stopped");
                    self.exit.signal(exit);
                    return;
                }
            }
        }
    }

    fn run_once(&mut self) -> Step {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            // A signal interrupted KVM_RUN, or the vCPU is not runnable yet: enter again.
            Err(error) if matches!(error.errno(), libc::EINTR | libc::EAGAIN) => {
                return Step::Continue;
            }
            Err(error) => {
                return Step::Stop(VmExit::VcpuFailed {
                    vcpu: index,
                    reason: format!("KVM_RUN failed: {error}"),
                })
            }
        };
        handle_exit(index, &self.buses, exit)
    }
}

fn handle_exit(index: u8, buses: &Buses, exit: VcpuExit<'_>) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                // Nothing decodes this port: the bus floats high, as on a PC.
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                tracing::trace!(vcpu = index, port, "write to an unclaimed I/O port");
            }
        }
        VcpuExit::MmioRead(address, data) => {
            if !buses.mmio.read(address, data) {
                tracing::debug!(vcpu = index, address, "read from unclaimed MMIO");
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(address, data) => {
            if !buses.mmio.write(address, data) {
                tracing::debug!(vcpu = index, address, "write to unclaimed MMIO");
            }
        }
        VcpuExit::Shutdown => return Step::Stop(VmExit::TripleFault),
        VcpuExit::SystemEvent(kind, _) => {
            let exit = match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                other => VmExit::VcpuFailed {
                    vcpu: index,
                    reason: format!("unexpected system event {other}"),
                },
            };
            return Step::Stop(exit);
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Step::Stop(VmExit::VcpuFailed {
                vcpu: index,
                reason: format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                ),
            })
        }
        VcpuExit::InternalError => {
            return Step::Stop(VmExit::VcpuFailed {
                vcpu: index,
                reason: "KVM internal error: the host could not emulate a guest instruction"
                    .to_owned(),
            })
        }
        VcpuExit::Hlt => {
            // With the in-kernel local APIC, KVM handles HLT itself, so this exit means the
            // guest halted with nothing left to wake it.
            return Step::Stop(VmExit::VcpuFailed {
                vcpu: index,
                reason: "the vCPU halted for good".to_owned(),
            });
        }
        other => {
            return Step::Stop(VmExit::VcpuFailed {
                vcpu: index,
                reason: format!("unexpected KVM exit {other:?}"),
            })
        }
    }
    Step::Continue
}
