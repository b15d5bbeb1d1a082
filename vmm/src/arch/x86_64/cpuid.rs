//! CPUID as each vCPU sees it: what KVM supports on this host, with the topology and identity
//! fields set for a guest of `count` single-threaded cores.

use kvm_bindings::CpuId;

/// Leaf 1 ECX bit 31: the CPU runs under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: the logical processor count in EBX is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 ECX bit 3: energy-performance bias, an MSR KVM does not emulate.
const LEAF6_ECX_EPB: u32 = 1 << 3;
/// Level types of the extended topology leaves (0xb and 0x1f).
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Adjusts `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) for vCPU `id` of `count`.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8) {
    let core_bits = bits_for(count as u32);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX: initial APIC id (31:24), logical processors per package (23:16) and the
                // CLFLUSH line size in quadwords (15:8).
                entry.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // EAX 31:26: addressable core ids per package, minus one.
                entry.eax = (entry.eax & 0x03ff_ffff) | ((u32::from(count) - 1) << 26);
            }
            0x6 => entry.ecx &= !LEAF6_ECX_EPB,
            0xb | 0x1f => {
                // One thread per core, `count` cores per package.
                let (shift, processors, level) = match entry.index {
                    0 => (0, 1, TOPOLOGY_LEVEL_SMT),
                    1 => (core_bits, u32::from(count), TOPOLOGY_LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = processors;
                entry.ecx = (level << 8) | entry.index;
                entry.edx = u32::from(id);
            }
            0x8000_0008 => {
                // AMD: ECX 7:0 is the core count minus one, 15:12 the APIC id size.
                entry.ecx = (entry.ecx & !0xf0ff) | (u32::from(count) - 1) | (core_bits << 12);
            }
            _ => {}
        }
    }
}

/// Number of APIC id bits needed to number `count` processors.
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn sample() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                edx: LEAF1_EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut cpuid = sample();
        filter(&mut cpuid, 3, 4);
        let leaf1 = cpuid.as_slice()[0];

        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn single_cpu_clears_htt() {
        let mut cpuid = sample();
        filter(&mut cpuid, 0, 1);
        assert_eq!(cpuid.as_slice()[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_cores() {
        let mut cpuid = sample();
        filter(&mut cpuid, 2, 3);
        let smt = cpuid.as_slice()[1];
        let core = cpuid.as_slice()[2];

        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx),
            (0, 1, TOPOLOGY_LEVEL_SMT, 2)
        );
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8, core.edx),
            (2, 3, TOPOLOGY_LEVEL_CORE, 2)
        );
    }

    #[test]
    fn apic_id_bits_table() {
        for (count, bits) in [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (32, 5)] {
            assert_eq!(bits_for(count), bits, "count {count}");
        }
    }
}
