//! ACPI tables: RSDP, XSDT, FADT with FACS, DSDT and MADT.
//!
//! The guest needs them for what the MP table cannot describe: how to power off and how to reset. The
//! FADT points at the PM1a and reset registers of [`crate::devices::acpi::AcpiPm`], and the DSDT
//! contains the `_S5` object whose sleep type the kernel writes to power off. The MADT repeats the
//! vCPU and IOAPIC layout of the MP table, which stays for guests booted with `acpi=off`.
//!
//! The platform is not hardware-reduced. A hardware-reduced guest drops the legacy PIC and with it
//! the fixed mapping of ISA IRQs 0 to 15 to IOAPIC pins, and the virtio-mmio devices announced on
//! the command line rely on that mapping. So the FADT keeps the fixed-hardware PM1a blocks and an
//! SCI on IRQ 9, an interrupt that never fires.
//!
//! The tables sit in the BIOS area between [`ACPI_START`] and [`ACPI_END`], which the e820 map
//! leaves out of RAM. The RSDP comes first, at a 16-byte boundary where the kernel's legacy scan
//! also finds it; the zero page points at it directly too.

use acpi_tables::aml::{Name, Package};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_START, APIC_START, IOAPIC_START, SCI_GSI};
use super::mptable::MAX_CPUS;
use crate::devices::acpi::{
    PM1A_CONTROL_PORT, PM1A_EVENT_PORT, PM1_CONTROL_LEN, PM1_EVENT_LEN, RESET_PORT, RESET_VALUE,
    S5_SLEEP_TYPE,
};

/// OEM id in every table header.
const OEM_ID: [u8; 6] = *b"BLKHD ";
/// OEM table id in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Tables start at 16-byte boundaries. The RSDP needs it; the others keep it for tidiness.
const TABLE_ALIGN: u64 = 16;
/// The FACS needs a 64-byte boundary.
const FACS_ALIGN: u64 = 64;
/// DSDT revision 2 and above use 64-bit integers in AML.
const DSDT_REVISION: u8 = 2;
/// FADT IA-PC boot architecture flag: no VGA.
const IAPC_BOOT_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IA-PC boot architecture flag: MSIs are unsupported (there is no PCI).
const IAPC_BOOT_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// FADT IA-PC boot architecture flag: no CMOS real-time clock.
const IAPC_BOOT_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count is outside what the MADT describes.
    #[error("{0} vCPUs cannot be described; use 1 to {MAX_CPUS}")]
    CpuCount(u8),
    /// The tables outgrew the BIOS area.
    #[error("the ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Writing the tables to guest memory failed.
    #[error("cannot write the ACPI tables to guest memory")]
    Write,
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, AcpiError>;

/// The tables, each with the guest address it belongs at.
#[derive(Debug)]
pub struct AcpiTables {
    /// Address of the RSDP, which the zero page passes to the kernel.
    pub rsdp_address: u64,
    /// `(address, bytes)` of every table, the RSDP first.
    pub tables: Vec<(u64, Vec<u8>)>,
}

/// Builds the tables for `cpus` vCPUs.
pub fn build(cpus: u8) -> Result<AcpiTables> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(cpus));
    }

    // The tables follow the RSDP in a fixed order, because each address must be known before
    // the table that points at it is built.
    let rsdp_address = ACPI_START;
    let dsdt = dsdt_bytes();
    let madt = madt_bytes(cpus);
    let facs = aml_bytes(&FACS::new());
    let facs_address = (rsdp_address + Rsdp::len() as u64).next_multiple_of(FACS_ALIGN);
    let dsdt_address = align(facs_address + facs.len() as u64);
    let fadt_address = align(dsdt_address + dsdt.len() as u64);
    let madt_address = align(fadt_address + FADT::len() as u64);
    let xsdt_address = align(madt_address + madt.len() as u64);

    let fadt = aml_bytes(&fadt(facs_address, dsdt_address));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_address);
    xsdt.add_entry(madt_address);
    let xsdt = aml_bytes(&xsdt);
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_address));

    let end = xsdt_address + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_START));
    }
    Ok(AcpiTables {
        rsdp_address,
        tables: vec![
            (rsdp_address, rsdp),
            (facs_address, facs),
            (dsdt_address, dsdt),
            (fadt_address, fadt),
            (madt_address, madt),
            (xsdt_address, xsdt),
        ],
    })
}

/// Builds the tables for `cpus` vCPUs, writes them to guest memory and returns the RSDP address.
pub fn write(memory: &GuestMemoryMmap, cpus: u8) -> Result<u64> {
    let acpi = build(cpus)?;
    for (address, bytes) in &acpi.tables {
        memory
            .write_slice(bytes, GuestAddress(*address))
            .map_err(|_| AcpiError::Write)?;
    }
    Ok(acpi.rsdp_address)
}

/// Builds the DSDT, which contains only `\_S5`. Its first element is the sleep type the kernel
/// writes to the PM1a control register to power off.
fn dsdt_bytes() -> Vec<u8> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let s5 = Name::new("_S5_".into(), &Package::new(vec![&S5_SLEEP_TYPE]));
    dsdt.append_slice(&aml_bytes(&s5));
    dsdt.as_slice().to_vec()
}

/// Builds the FADT: PM1a event and control blocks, the SCI, and the reset register, all on I/O
/// ports. Without an SMI command port the guest treats the platform as already in ACPI mode.
fn fadt(facs_address: u64, dsdt_address: u64) -> FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_64(facs_address)
        .dsdt_64(dsdt_address)
        .flag(Flags::ResetRegSup)
        // Set means "no fixed-hardware button", which is the case.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // SCI_GSI is an ISA IRQ, so it fits in 16 bits.
    fadt.sci_int = (SCI_GSI as u16).into();
    fadt.pm1a_evt_blk = u32::from(PM1A_EVENT_PORT).into();
    fadt.pm1_evt_len = PM1_EVENT_LEN;
    fadt.pm1a_cnt_blk = u32::from(PM1A_CONTROL_PORT).into();
    fadt.pm1_cnt_len = PM1_CONTROL_LEN;
    fadt.x_pm1a_evt_blk = io_port(PM1A_EVENT_PORT, 8 * PM1_EVENT_LEN, AccessSize::WordAccess);
    fadt.x_pm1a_cnt_blk = io_port(
        PM1A_CONTROL_PORT,
        8 * PM1_CONTROL_LEN,
        AccessSize::WordAccess,
    );
    fadt.iapc_boot_arch =
        (IAPC_BOOT_VGA_NOT_PRESENT | IAPC_BOOT_MSI_NOT_SUPPORTED | IAPC_BOOT_CMOS_RTC_NOT_PRESENT)
            .into();
    fadt.reset_reg = io_port(RESET_PORT, 8, AccessSize::ByteAccess);
    fadt.reset_value = RESET_VALUE;
    fadt.finalize()
}

/// Builds the MADT: one enabled local APIC per vCPU, with APIC id and processor uid equal to the index,
/// and one IOAPIC whose pins are GSIs 0 to 23.
fn madt_bytes(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // The IOAPIC takes the first APIC id after the vCPUs, as in the MP table.
    madt.add_structure(IoApic::new(cpus, IOAPIC_START as u32, 0));
    aml_bytes(&madt)
}

/// Returns the generic address of an I/O port register `bits` wide.
fn io_port(port: u16, bits: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, bits, 0, access, u64::from(port))
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn align(address: u64) -> u64 {
    address.next_multiple_of(TABLE_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<'a>(acpi: &'a AcpiTables, signature: &[u8]) -> (u64, &'a [u8]) {
        acpi.tables
            .iter()
            .find(|(_, bytes)| bytes.starts_with(signature))
            .map(|(address, bytes)| (*address, bytes.as_slice()))
            .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(signature)))
    }

    fn byte_sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte))
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_and_lengths_hold() {
        let acpi = build(2).unwrap();
        for (address, bytes) in &acpi.tables {
            assert_eq!(address % TABLE_ALIGN, 0);
            // The FACS is the one table without a checksum.
            if !bytes.starts_with(b"FACS") {
                assert_eq!(byte_sum(bytes), 0, "checksum of table at {address:#x}");
            }
            if !bytes.starts_with(b"RSD PTR ") {
                assert_eq!(
                    u32_at(bytes, 4) as usize,
                    bytes.len(),
                    "length at {address:#x}"
                );
            }
        }
        let (_, rsdp) = table(&acpi, b"RSD PTR ");
        assert_eq!(byte_sum(&rsdp[..20]), 0, "RSDP first checksum");
    }

    #[test]
    fn pointers_chain_rsdp_to_dsdt() {
        let acpi = build(1).unwrap();
        let (rsdp_address, rsdp) = table(&acpi, b"RSD PTR ");
        assert_eq!(rsdp_address, acpi.rsdp_address);
        assert_eq!(rsdp_address, ACPI_START);
        let (xsdt_address, xsdt) = table(&acpi, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_address);

        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
        let (fadt_address, fadt) = table(&acpi, b"FACP");
        let (madt_address, _) = table(&acpi, b"APIC");
        assert_eq!(entries, [fadt_address, madt_address]);

        // X_FIRMWARE_CTRL and X_DSDT sit at offsets 132 and 140 of the FADT.
        let (facs_address, _) = table(&acpi, b"FACS");
        let (dsdt_address, _) = table(&acpi, b"DSDT");
        assert_eq!(facs_address % FACS_ALIGN, 0);
        assert_eq!(u64_at(fadt, 132), facs_address);
        assert_eq!(u64_at(fadt, 140), dsdt_address);
    }

    #[test]
    fn fadt_names_the_pm_registers() {
        let acpi = build(1).unwrap();
        let (_, fadt) = table(&acpi, b"FACP");
        let flags = u32_at(fadt, 112);
        assert_eq!(
            flags & Flags::HwReducedAcpi as u32,
            0,
            "not hardware-reduced"
        );
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_eq!(u32::from(u16::from_le_bytes([fadt[46], fadt[47]])), SCI_GSI);
        assert_eq!(u32_at(fadt, 48), 0, "no SMI command port");
        assert_eq!(u32_at(fadt, 56), u32::from(PM1A_EVENT_PORT));
        assert_eq!(u32_at(fadt, 64), u32::from(PM1A_CONTROL_PORT));
        assert_eq!((fadt[88], fadt[89]), (PM1_EVENT_LEN, PM1_CONTROL_LEN));
        // Generic address structures: space id at +0, address at +4.
        let cases = [
            ("reset", 116, RESET_PORT),
            ("X_PM1a_EVT_BLK", 148, PM1A_EVENT_PORT),
            ("X_PM1a_CNT_BLK", 172, PM1A_CONTROL_PORT),
        ];
        for (name, offset, port) in cases {
            assert_eq!(fadt[offset], AddressSpace::SystemIo as u8, "{name} space");
            assert_eq!(u64_at(fadt, offset + 4), u64::from(port), "{name} port");
        }
        assert_eq!(fadt[128], RESET_VALUE);
    }

    #[test]
    fn dsdt_names_s5() {
        let acpi = build(1).unwrap();
        let (_, dsdt) = table(&acpi, b"DSDT");
        // NameOp "_S5_" PackageOp length count BytePrefix value.
        let body = &dsdt[36..];
        assert_eq!(&body[..5], b"\x08_S5_");
        assert_eq!(body[5], 0x12, "a package follows");
        assert_eq!(body[7], 1, "one element");
        assert_eq!(&body[8..10], &[0x0a, S5_SLEEP_TYPE]);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let acpi = build(cpus).unwrap();
            let (_, madt) = table(&acpi, b"APIC");
            assert_eq!(u32_at(madt, 36), APIC_START as u32);
            let mut apic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut offset = 44;
            while offset < madt.len() {
                let (kind, length) = (madt[offset], madt[offset + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(u32_at(madt, offset + 4), 1, "cpu enabled");
                        apic_ids.push(madt[offset + 3]);
                    }
                    1 => ioapics.push((madt[offset + 2], u32_at(madt, offset + 4))),
                    other => panic!("unexpected MADT structure {other}"),
                }
                offset += length;
            }
            assert_eq!(apic_ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(ioapics, [(cpus, IOAPIC_START as u32)]);
        }
    }

    #[test]
    fn bad_cpu_counts_are_rejected() {
        for cpus in [0, MAX_CPUS + 1] {
            assert!(matches!(build(cpus), Err(AcpiError::CpuCount(n)) if n == cpus));
        }
    }

    #[test]
    fn tables_fit_in_bios_area() {
        let acpi = build(MAX_CPUS).unwrap();
        let (address, bytes) = acpi.tables.last().unwrap();
        assert!(address + bytes.len() as u64 <= ACPI_END);
    }
}
