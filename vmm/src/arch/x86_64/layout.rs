//! Fixed guest physical addresses. The boot path relies on them, so they change together.

/// GDT with the null, code, data and TSS descriptors that the boot vCPU state uses.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// `struct boot_params`, the "zero page" of the Linux x86 boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: one PML4, one PDPT and one page directory of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table referenced by the PML4.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory with 512 entries of 2 MiB, so the first 1 GiB is identity-mapped.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command-line length including the NUL byte. Linux x86 reads at most 2048 bytes.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the last KiB of base memory, where Linux scans for the MP floating pointer.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of base memory (640 KiB).
pub const BASE_MEMORY_END: u64 = 0xa0000;
/// Start of the ACPI tables, in the BIOS area that Linux scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// End of the BIOS area and of the ACPI tables.
pub const ACPI_END: u64 = HIMEM_START;
/// Start of high memory, where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap. RAM that does not fit below it moves above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Base of the virtio-mmio device windows, one window per device.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Address of the IOAPIC, as the MP table announces it.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Address of the local APIC of every vCPU.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS on Intel hosts. They sit just below the BIOS area.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// One page for the EPT identity map on Intel hosts, right before the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = KVM_TSS_START - 0x1000;
/// Number of IOAPIC pins, and so of legacy GSIs.
pub const IOAPIC_PINS: u32 = 24;
/// GSI of the serial console (COM1).
pub const SERIAL_GSI: u32 = 4;
/// GSI of the ACPI system control interrupt, which the FADT names and nothing raises.
pub const SCI_GSI: u32 = 9;
/// GSIs handed to virtio-mmio devices, in order. Only ISA IRQs qualify, because the guest maps
/// IRQs 0 to 15 to the same IOAPIC pins whether it reads the MP table or the MADT. With ACPI it
/// maps pins 16 to 23 to IRQ numbers of its own choosing, which a device announced on the
/// command line cannot know. IRQs 0 to 4 are the timer, keyboard, cascade, COM2 and COM1; 9 is the SCI.
pub const VIRTIO_GSIS: [u32; 10] = [5, 6, 7, 8, 10, 11, 12, 13, 14, 15];
