//! x86_64 guest layout and boot state: the memory map, the zero page, the MP table, the ACPI
//! tables, CPUID and the registers that put a vCPU into 64-bit mode at the kernel's entry point.
//!
//! The guest physical address space looks like this:
//!
//! ```text
//! 0x0000_0500  GDT                       0x0000_7000  zero page (struct boot_params)
//! 0x0000_0520  IDT (empty)               0x0000_8ff0  boot stack pointer
//! 0x0000_9000  PML4, PDPT, PD            0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (reserved)       0x000e_0000  ACPI tables (outside RAM)
//! 0x0010_0000  high memory: kernel, then RAM
//! 0xd000_0000  MMIO gap: virtio-mmio devices, IOAPIC, LAPIC, up to 4 GiB
//! 0x1_0000_0000  RAM above the gap, when the guest has more than 3.25 GiB
//! ```

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
