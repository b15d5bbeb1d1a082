//! Boot vCPU state for the Linux 64-bit entry point: identity page tables, a flat GDT, long mode
//! in the control registers, the FPU, a few MSRs and the local APIC's legacy interrupt pins.
//! See "64-bit Boot Protocol" in Documentation/arch/x86/boot.rst.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits: present, writable, and (in a page directory) a 2 MiB page.
const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PDE_HUGE_PAGE: u64 = 0x80;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast string operations, which Linux expects firmware to enable.
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// Offsets of the LVT LINT0 and LINT1 registers in the local APIC page.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery modes (bits 10:8).
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// GDT entries: null, 64-bit code, data, and a TSS descriptor that KVM needs to enter the guest.
const GDT_ENTRIES: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE_SELECTOR: usize = 1;
const DATA_SELECTOR: usize = 2;
const TSS_SELECTOR: usize = 3;

/// Errors while setting the boot state of a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables into guest memory failed.
    #[error("failed to write the boot {0} into guest memory")]
    WriteGuestMemory(&'static str),
    /// A KVM vCPU ioctl failed.
    #[error("KVM_{ioctl} failed")]
    Kvm {
        /// The ioctl, without its KVM_ prefix.
        ioctl: &'static str,
        /// The kernel's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Result alias for vCPU register setup.
pub type Result<T> = std::result::Result<T, RegsError>;

fn kvm_error(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { ioctl, source }
}

/// Builds a GDT descriptor from its flags (access byte and granularity nibble), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes the GDT entry at `index` into the segment register form that KVM takes.
fn segment_from_gdt(index: usize) -> kvm_segment {
    let entry = GDT_ENTRIES[index];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let granularity = (entry >> 55) & 1;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages, and KVM wants it in bytes.
        limit: if granularity == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity page tables for the first 1 GiB into guest memory.
/// The BSP and every AP share them; Linux replaces all three early in boot.
pub fn write_boot_tables(memory: &GuestMemoryMmap) -> Result<()> {
    for (index, entry) in GDT_ENTRIES.iter().enumerate() {
        let address = GuestAddress(BOOT_GDT_START + (index * 8) as u64);
        memory
            .write_obj(*entry, address)
            .map_err(|_| RegsError::WriteGuestMemory("GDT"))?;
    }
    memory
        .write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::WriteGuestMemory("IDT"))?;

    memory
        .write_obj(PDPTE_START | PTE_PRESENT_WRITABLE, GuestAddress(PML4_START))
        .map_err(|_| RegsError::WriteGuestMemory("PML4"))?;
    memory
        .write_obj(PDE_START | PTE_PRESENT_WRITABLE, GuestAddress(PDPTE_START))
        .map_err(|_| RegsError::WriteGuestMemory("PDPT"))?;
    for index in 0..512u64 {
        let entry = (index << 21) | PDE_HUGE_PAGE | PTE_PRESENT_WRITABLE;
        memory
            .write_obj(entry, GuestAddress(PDE_START + index * 8))
            .map_err(|_| RegsError::WriteGuestMemory("page directory"))?;
    }
    Ok(())
}

/// Special registers for long mode with the boot GDT and page tables.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(CODE_SELECTOR);
    let data = segment_from_gdt(DATA_SELECTOR);
    let tss = segment_from_gdt(TSS_SELECTOR);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers for the 64-bit entry: RIP at the entry point and RSI at the zero page.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        // Bit 1 of RFLAGS is reserved and always set.
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Puts `vcpu` into the state the 64-bit boot protocol requires, ready to run at `entry`.
/// Application processors get the same state, but Linux starts them itself with INIT and SIPI.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: GuestAddress) -> Result<()> {
    let sregs = vcpu.get_sregs().map_err(kvm_error("GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(sregs))
        .map_err(kvm_error("SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm_error("SET_REGS"))?;
    setup_fpu_and_msrs(vcpu)
}

/// Sets the FPU control words to their reset values and enables fast strings.
pub fn setup_fpu_and_msrs(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_error("SET_FPU"))?;

    let entries = [kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }];
    let msrs = Msrs::from_entries(&entries).expect("one MSR entry fits in the FAM wrapper");
    vcpu.set_msrs(&msrs).map_err(kvm_error("SET_MSRS"))?;
    Ok(())
}

/// Routes the legacy PIC output to LINT0 as ExtINT and NMIs to LINT1, the wiring the MP table
/// announces and that a PC's firmware leaves behind.
pub fn setup_lapic_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_error("GET_LAPIC"))?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = read_lapic_register(&lapic.regs, offset);
        let value = (value & !0x700) | (mode << 8);
        write_lapic_register(&mut lapic.regs, offset, value);
    }
    vcpu.set_lapic(&lapic).map_err(kvm_error("SET_LAPIC"))
}

fn read_lapic_register(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_lapic_register(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = byte as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn gdt_entry_encodes_64bit_code_segment() {
        let code = segment_from_gdt(CODE_SELECTOR);

        assert_eq!(GDT_ENTRIES[CODE_SELECTOR], 0x00af_9b00_0000_ffff);
        assert_eq!(code.l, 1, "long mode bit");
        assert_eq!(code.db, 0, "a 64-bit code segment has D clear");
        assert_eq!(code.present, 1);
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
    }

    #[test]
    fn gdt_entry_encodes_data_segment() {
        let data = segment_from_gdt(DATA_SELECTOR);

        assert_eq!(data.type_, 0x3);
        assert_eq!(data.db, 1);
        assert_eq!(data.l, 0);
        assert_eq!(data.selector, 16);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let memory = create_guest_memory(64 << 20).unwrap();
        write_boot_tables(&memory).unwrap();

        let pml4: u64 = memory.read_obj(GuestAddress(PML4_START)).unwrap();
        let pdpte: u64 = memory.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 0x3);
        assert_eq!(pdpte, PDE_START | 0x3);
        for index in [0u64, 1, 8, 511] {
            let pde: u64 = memory
                .read_obj(GuestAddress(PDE_START + index * 8))
                .unwrap();
            assert_eq!(pde, (index << 21) | 0x83, "page directory entry {index}");
        }
    }

    #[test]
    fn sregs_enable_long_mode() {
        let sregs = boot_sregs(kvm_sregs::default());

        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.gdt.base, BOOT_GDT_START);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let regs = boot_regs(GuestAddress(0x100_0000));

        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(regs.rflags, 2);
    }

    #[test]
    fn lapic_register_round_trips() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_lapic_register(&mut regs, APIC_LVT_LINT0, 0x0001_0700);
        assert_eq!(read_lapic_register(&regs, APIC_LVT_LINT0), 0x0001_0700);
    }
}
