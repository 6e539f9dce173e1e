//! Per-vCPU CPUID: KVM's supported set, with the identity and topology
//! fields each vCPU must report differently.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE_BIT: u32 = 1 << 24;
const ECX_HYPERVISOR_BIT: u32 = 1 << 31;
const EDX_HTT_BIT: u32 = 1 << 28;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_THREAD: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// Tells the guest its local APIC timer has TSC-deadline mode. Without it
/// Linux spends 100 ms of every boot measuring the APIC timer against the
/// TSC (`calibrate_APIC_clock`), which Firecracker, Cloud Hypervisor and
/// QEMU guests all skip.
pub fn advertise_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for entry in entries.iter_mut().filter(|e| e.function == LEAF_FEATURES) {
        entry.ecx |= ECX_TSC_DEADLINE_BIT;
    }
}

/// Rewrites `entries` for vCPU `cpu_id` of `cpu_count`, modelled as one
/// socket with one thread per core, APIC id = vCPU index.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpu_count: u8) {
    let apic_id = u32::from(cpu_id);
    let count = u32::from(cpu_count).max(1);
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors
                // per package, [15:8] CLFLUSH line size in quadwords.
                entry.ebx = (apic_id << 24) | (count.min(255) << 16) | (8 << 8);
                entry.ecx |= ECX_HYPERVISOR_BIT;
                if count > 1 {
                    entry.edx |= EDX_HTT_BIT;
                } else {
                    entry.edx &= !EDX_HTT_BIT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads
                // sharing this cache - 1 (one thread per core, so 0 for
                // L1/L2 and all cores for the shared last level).
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((count - 1).min(63) << 26) | (sharing << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                entry.edx = apic_id;
                let (shift, logical, level_type) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_THREAD),
                    1 => (id_bits(count), count, LEVEL_TYPE_CORE),
                    _ => (0, 0, LEVEL_TYPE_INVALID),
                };
                entry.eax = shift;
                entry.ebx = logical;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
            }
            LEAF_AMD_EXT_APIC_ID => {
                // EAX: extended APIC id; EBX: core id, one thread per core.
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        normalize(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR_BIT, 0);
        assert_ne!(e[0].edx & EDX_HTT_BIT, 0);
        assert!(e[1..].iter().all(|l| l.edx == 3));
        assert_eq!((e[1].ebx, (e[1].ecx >> 8) & 0xff), (1, LEVEL_TYPE_THREAD));
        assert_eq!((e[2].eax, e[2].ebx), (2, 4));
        assert_eq!((e[2].ecx >> 8) & 0xff, LEVEL_TYPE_CORE);
        assert_eq!((e[3].ecx >> 8) & 0xff, LEVEL_TYPE_INVALID);
    }

    #[test]
    fn tsc_deadline_is_set_in_leaf_1_only() {
        let mut e = vec![entry(1, 0), entry(7, 0)];
        advertise_tsc_deadline(&mut e);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE_BIT, 0);
        assert_eq!(e[1].ecx, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![kvm_cpuid_entry2 {
            function: 1,
            edx: EDX_HTT_BIT,
            ..Default::default()
        }];
        normalize(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT_BIT, 0);
        assert_eq!(e[0].ebx >> 24, 0);
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let l1 = kvm_cpuid_entry2 {
            function: 4,
            eax: (1 << 5) | 0x1,
            ..Default::default()
        };
        let l3 = kvm_cpuid_entry2 {
            function: 4,
            index: 3,
            eax: (3 << 5) | 0x3,
            ..Default::default()
        };
        let mut e = vec![l1, l3];
        normalize(&mut e, 0, 6);
        assert_eq!(e[0].eax >> 26, 5);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 5);
        assert_eq!(e[1].eax & 0x1f, 0x3);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }
}
