//! The Linux x86 boot protocol: the e820 memory map and the zero page (`struct boot_params`).
//! See Documentation/arch/x86/boot.rst in the Linux source.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::{BASE_MEMORY_END, CMDLINE_START, HIMEM_START, MPTABLE_START, ZERO_PAGE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// Capacity of the e820 table inside `boot_params`.
const E820_MAX_ENTRIES: usize = 128;

/// Magic "HdrS" in `setup_header.header`.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag` value that marks a valid header.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `type_of_loader` for a boot loader without an assigned id.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Physical alignment the kernel requires, used when the image carries no setup header.
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// `loadflags` bit: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x01;

/// Errors while writing the boot protocol structures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    /// The guest memory layout produced more e820 entries than `boot_params` can hold.
    #[error(
        "the guest memory map needs {0} e820 entries, but boot_params holds {E820_MAX_ENTRIES}"
    )]
    TooManyE820Entries(usize),
    /// Writing the zero page into guest memory failed.
    #[error("failed to write the zero page into guest memory")]
    WriteZeroPage,
}

/// Result alias for boot protocol setup.
pub type Result<T> = std::result::Result<T, BootError>;

/// Where the initial RAM disk sits in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical address of the first byte.
    pub address: GuestAddress,
    /// Length in bytes.
    pub size: u64,
}

/// Builds the e820 map for `memory`: base memory below the MP table, the MP table as reserved,
/// and every region from 1 MiB up as RAM. The hole from 640 KiB to 1 MiB stays unlisted, as on a
/// PC, so the kernel never allocates there.
pub fn e820_map(memory: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: MPTABLE_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: MPTABLE_START,
            size: BASE_MEMORY_END - MPTABLE_START,
            r#type: E820_RESERVED,
        },
    ];

    for region in memory.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Inputs of the zero page.
#[derive(Debug, Clone)]
pub struct ZeroPageConfig {
    /// The setup header from a bzImage, or `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Length of the command line written at [`CMDLINE_START`], including the NUL byte.
    pub cmdline_size: usize,
    /// The initial RAM disk, when there is one.
    pub initrd: Option<InitrdRegion>,
    /// Guest address of the ACPI RSDP, when the VM has ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Fills in `struct boot_params` and writes it to [`ZERO_PAGE_START`].
pub fn write_zero_page(memory: &GuestMemoryMmap, config: &ZeroPageConfig) -> Result<()> {
    let params = build_zero_page(memory, config)?;
    memory
        .write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::WriteZeroPage)
}

/// Builds `struct boot_params` without writing it, so tests can inspect every field.
pub fn build_zero_page(memory: &GuestMemoryMmap, config: &ZeroPageConfig) -> Result<boot_params> {
    let mut params = boot_params::default();

    // A bzImage brings its own header, whose fields (such as the protocol version and the
    // relocation limits) the kernel reads back. An ELF vmlinux has none, so fill in the fields
    // that the 64-bit entry point checks.
    match config.setup_header {
        Some(header) => params.hdr = header,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH;

    // The protocol keeps the command line pointer in 32 bits. CMDLINE_START fits by design.
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = config.cmdline_size as u32;

    if let Some(initrd) = config.initrd {
        // The initrd is placed below 4 GiB, so both values fit in 32 bits.
        params.hdr.ramdisk_image = initrd.address.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }

    // Boot protocol 2.14 field; older kernels ignore it and find the RSDP by scanning.
    if let Some(rsdp) = config.acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }

    let map = e820_map(memory);
    if map.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    // Bounded by E820_MAX_ENTRIES above.
    params.e820_entries = map.len() as u8;

    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    const MIB: u64 = 1 << 20;

    fn ram_entries(map: &[boot_e820_entry]) -> Vec<(u64, u64)> {
        map.iter()
            .filter(|entry| entry.r#type == E820_RAM)
            .map(|entry| (entry.addr, entry.addr + entry.size))
            .collect()
    }

    #[test]
    fn e820_small_guest_is_one_high_region() {
        let memory = create_guest_memory(128 * MIB).unwrap();
        let map = e820_map(&memory);

        assert_eq!(
            ram_entries(&map),
            vec![(0, MPTABLE_START), (HIMEM_START, 128 * MIB)]
        );
        assert_eq!({ map[1].r#type }, E820_RESERVED);
        assert_eq!({ map[1].addr }, MPTABLE_START);
    }

    #[test]
    fn e820_large_guest_skips_mmio_gap() {
        let memory = create_guest_memory(4096 * MIB).unwrap();
        let ram = ram_entries(&e820_map(&memory));

        let gap_start = crate::arch::x86_64::layout::MMIO_GAP_START;
        let gap_end = crate::arch::x86_64::layout::MMIO_GAP_END;
        assert_eq!(ram[1], (HIMEM_START, gap_start));
        assert_eq!(ram[2], (gap_end, gap_end + 4096 * MIB - gap_start));
        let total: u64 = ram.iter().map(|(start, end)| end - start).sum();
        assert_eq!(total, 4096 * MIB - (HIMEM_START - MPTABLE_START));
    }

    #[test]
    fn zero_page_for_elf_kernel() {
        let memory = create_guest_memory(64 * MIB).unwrap();
        let initrd = InitrdRegion {
            address: GuestAddress(0x300_0000),
            size: 0x1234,
        };
        let config = ZeroPageConfig {
            setup_header: None,
            cmdline_size: 42,
            initrd: Some(initrd),
            acpi_rsdp: Some(0xe0000),
        };
        write_zero_page(&memory, &config).unwrap();

        let params: boot_params = memory.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let header = params.hdr;
        assert_eq!({ header.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ header.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ header.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!({ header.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ header.cmdline_size }, 42);
        assert_eq!({ header.ramdisk_image }, 0x300_0000);
        assert_eq!({ header.ramdisk_size }, 0x1234);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!({ params.e820_entries }, 3);
        let last = params.e820_table[2];
        assert_eq!(({ last.addr }, { last.size }), (HIMEM_START, 63 * MIB));
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let memory = create_guest_memory(64 * MIB).unwrap();
        let header = setup_header {
            version: 0x020f,
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            ..Default::default()
        };
        let config = ZeroPageConfig {
            setup_header: Some(header),
            cmdline_size: 1,
            initrd: None,
            acpi_rsdp: None,
        };
        let params = build_zero_page(&memory, &config).unwrap();

        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.loadflags } & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
        assert_eq!({ params.acpi_rsdp_addr }, 0);
    }
}
