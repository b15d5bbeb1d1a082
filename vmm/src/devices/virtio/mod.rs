//! VirtIO 1.x devices over the MMIO transport.
//! Specification: <https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html>.

pub mod block;
pub mod mmio;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device id of a block device (section 5.2).
pub const TYPE_BLOCK: u32 = 2;
/// Feature bit: the device complies with VirtIO 1.0 or later (section 6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits of the MMIO transport (section 4.2.2).
pub mod interrupt_status {
    /// A used ring was updated.
    pub const USED_BUFFER: u32 = 1;
    /// The configuration space changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Errors while activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer or other queues than the device needs.
    #[error("the driver configured {0} queues in a way the device cannot use")]
    BadQueues(usize),
}

/// The interrupt line of one virtio-mmio device: the status register and the irqfd behind it.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// Creates an interrupt that raises `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in the interrupt status and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(error) = self.irqfd.write(1) {
            tracing::warn!(%error, "virtio: failed to raise the device interrupt");
        }
    }

    /// Current interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the bits the driver acknowledged.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// A VirtIO device behind the MMIO transport. The transport owns negotiation and queue setup;
/// the device owns its configuration space and the request handling.
pub trait VirtioDevice: Send {
    /// Device id (section 5).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Records the features the driver accepted, a subset of [`VirtioDevice::features`].
    fn ack_features(&mut self, features: u64);
    /// Reads from the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the queues the driver configured.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Handles a driver notification for queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// Returns the device to its state before activation, when the driver resets it.
    fn reset(&mut self);
}
