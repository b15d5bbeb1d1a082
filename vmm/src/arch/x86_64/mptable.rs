//! The MultiProcessor Specification table (version 1.4), which tells Linux how many vCPUs exist
//! and how the IOAPIC pins map to ISA interrupts, without ACPI.
//!
//! Layout at [`MPTABLE_START`]: the 16-byte floating pointer, then the configuration table header
//! and its entries (processors, the ISA bus, the IOAPIC, one I/O interrupt per IOAPIC pin and the
//! two local interrupt pins).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, BASE_MEMORY_END, IOAPIC_PINS, IOAPIC_START, MPTABLE_START};

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SHORT_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const MP_SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Interrupt types of I/O and local interrupt entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Destination APIC id meaning "every local APIC".
const ALL_LOCAL_APICS: u8 = 0xff;
/// CPU signature of a family 6 processor; Linux only prints it.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags of the processor entry: FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;

/// Largest vCPU count whose table fits between [`MPTABLE_START`] and the end of base memory.
pub const MAX_CPUS: u8 = 32;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// The vCPU count is 0 or above [`MAX_CPUS`].
    #[error("{0} vCPUs cannot be described in the MP table; use 1 to {MAX_CPUS}")]
    CpuCount(u8),
    /// Writing into guest memory failed.
    #[error("failed to write the MP table into guest memory")]
    WriteGuestMemory,
}

/// Result alias for MP table setup.
pub type Result<T> = std::result::Result<T, MptableError>;

/// Builds the floating pointer and configuration table bytes for `cpus` vCPUs, as they are
/// written at [`MPTABLE_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..cpus {
        let mut flags = CPU_ENABLED;
        if cpu == 0 {
            flags |= CPU_BOOTSTRAP;
        }
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }

    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;

    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;

    for pin in 0..IOAPIC_PINS as u8 {
        // Flags 0: polarity and trigger mode conform to the bus (edge, active high on ISA).
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        entry_count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[
            ENTRY_LOCAL_INTERRUPT,
            kind,
            0,
            0,
            0,
            0,
            ALL_LOCAL_APICS,
            lint,
        ]);
        entry_count += 1;
    }

    debug_assert_eq!(
        entries.len(),
        usize::from(cpus) * PROCESSOR_ENTRY_SIZE
            + (entry_count as usize - usize::from(cpus)) * SHORT_ENTRY_SIZE
    );

    let table_start = MPTABLE_START + FLOATING_POINTER_SIZE as u64;
    let table_length = HEADER_SIZE + entries.len();

    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_length as u16).to_le_bytes());
    header.push(MP_SPEC_REVISION);
    header.push(0); // Checksum, patched below.
    header.extend_from_slice(b"BULKHEAD");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer.
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size.
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // Extended table length.
    header.extend_from_slice(&[0, 0]); // Extended table checksum, reserved.
    debug_assert_eq!(header.len(), HEADER_SIZE);

    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut pointer = Vec::with_capacity(FLOATING_POINTER_SIZE);
    pointer.extend_from_slice(b"_MP_");
    pointer.extend_from_slice(&(table_start as u32).to_le_bytes());
    pointer.push(1); // Length in 16-byte units.
    pointer.push(MP_SPEC_REVISION);
    pointer.push(0); // Checksum, patched below.
    pointer.extend_from_slice(&[0; 5]); // Feature bytes: 0 means a configuration table follows.
    pointer[10] = checksum(&pointer);

    let mut bytes = pointer;
    bytes.extend_from_slice(&table);
    debug_assert!(MPTABLE_START + bytes.len() as u64 <= BASE_MEMORY_END);
    Ok(bytes)
}

/// Writes the MP table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn write(memory: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let bytes = build(cpus)?;
    memory
        .write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::WriteGuestMemory)
}

/// Returns the byte that makes `bytes` sum to zero modulo 256, as the MP spec requires.
fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, byte| acc.wrapping_add(*byte));
    0u8.wrapping_sub(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, byte| acc.wrapping_add(*byte))
    }

    #[test]
    fn mptable_checksums_are_zero() {
        for cpus in [1u8, 2, 7, MAX_CPUS] {
            let bytes = build(cpus).unwrap();
            assert_eq!(
                byte_sum(&bytes[..16]),
                0,
                "floating pointer for {cpus} vCPUs"
            );
            assert_eq!(
                byte_sum(&bytes[16..]),
                0,
                "configuration table for {cpus} vCPUs"
            );
        }
    }

    #[test]
    fn mptable_lists_every_cpu_once() {
        let bytes = build(4).unwrap();
        let table = &bytes[16..];
        let entry_count = u16::from_le_bytes([table[34], table[35]]);
        let processors = &table[HEADER_SIZE..HEADER_SIZE + 4 * PROCESSOR_ENTRY_SIZE];

        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(entry_count as u32, 4 + 1 + 1 + IOAPIC_PINS + 2);
        for (cpu, entry) in processors.chunks(PROCESSOR_ENTRY_SIZE).enumerate() {
            assert_eq!(entry[0], ENTRY_PROCESSOR);
            assert_eq!(entry[1] as usize, cpu, "APIC id");
            let bootstrap = entry[3] & CPU_BOOTSTRAP != 0;
            assert_eq!(
                bootstrap,
                cpu == 0,
                "only vCPU 0 is the bootstrap processor"
            );
        }
    }

    #[test]
    fn mptable_length_matches_header() {
        let bytes = build(3).unwrap();
        let table = &bytes[16..];
        let length = u16::from_le_bytes([table[4], table[5]]) as usize;
        let pointer = u32::from_le_bytes(bytes[4..8].try_into().unwrap());

        assert_eq!(length, table.len());
        assert_eq!(pointer as u64, MPTABLE_START + 16);
        assert_eq!(
            table.len(),
            HEADER_SIZE
                + 3 * PROCESSOR_ENTRY_SIZE
                + (2 + IOAPIC_PINS as usize + 2) * SHORT_ENTRY_SIZE
        );
    }

    #[test]
    fn mptable_rejects_bad_cpu_counts() {
        assert_eq!(build(0), Err(MptableError::CpuCount(0)));
        assert_eq!(
            build(MAX_CPUS + 1),
            Err(MptableError::CpuCount(MAX_CPUS + 1))
        );
    }

    #[test]
    fn mptable_fits_in_base_memory() {
        let bytes = build(MAX_CPUS).unwrap();
        assert!(MPTABLE_START + bytes.len() as u64 <= BASE_MEMORY_END);
    }
}
