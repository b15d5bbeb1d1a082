//! bulkhead-vmm: a KVM virtual machine monitor that boots one Linux microVM.
//!
//! The VM has a serial console on COM1, a reset-only i8042 for reboots, and virtio-blk disks on
//! the virtio-mmio transport, announced to the guest on the kernel command line. It exits when
//! the guest reboots or powers off. See [`builder::run`] for the boot recipe.

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exit;
pub mod host;
pub mod memory;
pub mod vcpu;
