//! ACPI tables for guests that boot with ACPI: RSDP, XSDT, FADT
//! (hardware-reduced, with herd's sleep and reset registers), MADT (a local
//! APIC per vCPU and the IOAPIC) and a DSDT describing the legacy devices,
//! the virtio-mmio devices, the power button and the S5 sleep state.
//!
//! Built with rust-vmm's acpi_tables crate and written to 0xe0000, where
//! Linux scans for the RSDP on a BIOS machine; the MP table stays in the
//! EBDA for kernels built without ACPI or booted with `acpi=off`.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use devices::acpi::{
    ACPI_SLEEP_RESET_PORT, POWER_BUTTON_GSI, RESET_REGISTER_OFFSET, RESET_VALUE, S5_SLEEP_TYPE,
    SLEEP_REGISTER_OFFSET,
};
use devices::legacy::{CMOS_IRQ, CMOS_PORT, COM1_IRQ, COM1_PORT, I8042_PORT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{ACPI_TABLES_END, ACPI_TABLES_START, APIC_START, IOAPIC_START};

const OEM_ID: [u8; 6] = *b"HERD  ";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags (FADT offset 109): an i8042 is present
/// (so Linux keeps its keyboard controller, which reboot fallbacks and
/// Ctrl-Alt-Del use), no VGA, no MSI, no PCIe ASPM to control.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// Tables start on 8-byte boundaries (the RSDP needs 16).
const ALIGN: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({0} bytes) do not fit between 0xe0000 and 1 MiB")]
    TooLarge(u64),
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    Write(GuestMemoryError),
}

/// A virtio-mmio device as the DSDT announces it.
#[derive(Clone, Copy, Debug)]
pub struct AcpiMmioDevice {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn io_port(offset: u64) -> u16 {
    u16::try_from(ACPI_SLEEP_RESET_PORT + offset).unwrap_or(u16::MAX)
}

fn port_u16(port: u64) -> u16 {
    u16::try_from(port).unwrap_or(u16::MAX)
}

fn edge_irq(gsi: u32) -> aml::Interrupt {
    // Consumer, edge-triggered, active high, exclusive: what herd's irqfds
    // on the IOAPIC deliver.
    aml::Interrupt::new(true, true, false, false, gsi)
}

/// The AML of one virtio-mmio device; Linux's virtio_mmio driver binds
/// `LNRO0005`.
fn virtio_device(index: usize, dev: &AcpiMmioDevice) -> Vec<u8> {
    let name = format!("_SB_.V{index:03X}");
    let uid = u32::try_from(index).unwrap_or(u32::MAX);
    let base = u32::try_from(dev.base).unwrap_or(u32::MAX);
    let size = u32::try_from(dev.size).unwrap_or(0);
    bytes_of(&aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CCA".into(), &aml::ONE),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::Memory32Fixed::new(true, base, size),
                    &edge_irq(dev.gsi),
                ]),
            ),
        ],
    ))
}

/// A legacy ISA device: PNP id, I/O range, IRQ.
fn isa_device(path: &str, hid: &str, ranges: &[(u64, u8)], irq: u32) -> Vec<u8> {
    let ios: Vec<aml::IO> = ranges
        .iter()
        .map(|&(port, len)| aml::IO::new(port_u16(port), port_u16(port), 1, len))
        .collect();
    let irq = edge_irq(irq);
    let mut resources: Vec<&dyn Aml> = ios.iter().map(|io| io as &dyn Aml).collect();
    resources.push(&irq);
    bytes_of(&aml::Device::new(
        path.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(hid)),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(resources)),
        ],
    ))
}

/// The power button (PNP0C0C) and the GED (ACPI0013) whose interrupt
/// makes the guest notify it: Notify(PWRB, 0x80) is "button pressed".
fn power_button() -> Vec<u8> {
    let mut out = bytes_of(&aml::Device::new(
        "_SB_.PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    ));
    out.extend(bytes_of(&aml::Device::new(
        "_SB_.GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&edge_irq(POWER_BUTTON_GSI)]),
            ),
            &aml::Method::new(
                "_EVT".into(),
                1,
                true,
                vec![&aml::Notify::new(&aml::Path::new("\\_SB_.PWRB"), &0x80u8)],
            ),
        ],
    )));
    out
}

pub fn dsdt(virtio: &[AcpiMmioDevice]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"HERDDSDT", OEM_REVISION);
    // S5 (soft off) with the SLP_TYP the sleep register turns into a
    // power-off; one element is enough since ACPI 5.
    dsdt.append_slice(&bytes_of(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE]),
    )));
    dsdt.append_slice(&isa_device(
        "_SB_.COM1",
        "PNP0501",
        &[(COM1_PORT, 8)],
        COM1_IRQ,
    ));
    dsdt.append_slice(&isa_device(
        "_SB_.PS2_",
        "PNP0303",
        &[(I8042_PORT, 1), (I8042_PORT + 4, 1)],
        1,
    ));
    dsdt.append_slice(&isa_device(
        "_SB_.RTC_",
        "PNP0B00",
        &[(CMOS_PORT, 2)],
        CMOS_IRQ,
    ));
    dsdt.append_slice(&power_button());
    for (index, dev) in virtio.iter().enumerate() {
        dsdt.append_slice(&virtio_device(index, dev));
    }
    dsdt.as_slice().to_vec()
}

pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |offset| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(io_port(offset)),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, *b"HERDFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No legacy power button: ours is the GED-driven PNP0C0C device.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io(RESET_REGISTER_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io(SLEEP_REGISTER_OFFSET);
    fadt.sleep_status_reg = io(SLEEP_REGISTER_OFFSET);
    fadt.iapc_boot_arch =
        (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_PCIE_ASPM_CONTROLS)
            .into();
    bytes_of(&fadt.finalize())
}

pub fn madt(cpu_count: u8) -> Vec<u8> {
    let lapic = u32::try_from(APIC_START).unwrap_or(0);
    let mut madt = MADT::new(
        OEM_ID,
        *b"HERDAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(lapic),
    );
    for cpu in 0..cpu_count {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // Same IOAPIC id as in the MP table: the first one after the CPUs.
    let ioapic = u32::try_from(IOAPIC_START).unwrap_or(0);
    madt.add_structure(IoApic::new(cpu_count, ioapic, 0));
    bytes_of(&madt)
}

fn align(addr: u64) -> u64 {
    addr.div_ceil(ALIGN) * ALIGN
}

/// Writes every table and returns the RSDP's address.
pub fn setup(
    mem: &GuestMemoryMmap,
    cpu_count: u8,
    virtio: &[AcpiMmioDevice],
) -> Result<GuestAddress, AcpiError> {
    let rsdp_addr = ACPI_TABLES_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt(virtio);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpu_count);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, *b"HERDXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(AcpiError::TooLarge(end - ACPI_TABLES_START));
    }
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    for (addr, bytes) in [
        (rsdp_addr, &rsdp),
        (dsdt_addr, &dsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (xsdt_addr, &xsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The table at `addr`, checked: signature and checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, addr, 8);
        assert_eq!(&head[..4], sig);
        let t = read(mem, addr, u32_at(&head, 4) as usize);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        t
    }

    #[test]
    fn tables_chain_from_the_rsdp_and_checksum() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let virtio = [
            AcpiMmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                gsi: 5,
            },
            AcpiMmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                gsi: 6,
            },
        ];
        let rsdp_addr = setup(&mem, 2, &virtio).unwrap();
        assert_eq!(rsdp_addr.0 % 16, 0);
        let rsdp = read(&mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
        // FADT: hardware-reduced, reset register supported, X_DSDT set.
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
        // RESET_REG is an 8-bit I/O register at the device's reset port.
        assert_eq!(fadt[116], 1);
        assert_eq!(fadt[117], 8);
        assert_eq!(
            u64_at(&fadt, 120),
            ACPI_SLEEP_RESET_PORT + RESET_REGISTER_OFFSET
        );
        assert_eq!(fadt[128], RESET_VALUE);
        // SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
        assert_eq!(u64_at(&fadt, 244 + 4), ACPI_SLEEP_RESET_PORT);
        assert_eq!(u64_at(&fadt, 256 + 4), ACPI_SLEEP_RESET_PORT);
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        for needle in [
            &b"_S5_"[..],
            b"LNRO0005",
            b"ACPI0013",
            b"PWRB",
            b"V001",
            b"COM1",
            b"RTC_",
        ] {
            assert!(
                dsdt.windows(needle.len()).any(|w| w == needle),
                "DSDT lacks {}",
                String::from_utf8_lossy(needle)
            );
        }
        // MADT: two enabled local APICs with ids 0 and 1, then the IOAPIC.
        assert_eq!(u64::from(u32_at(&madt, 36)), APIC_START);
        let entries = &madt[44..];
        assert_eq!(entries.len(), 8 + 8 + 12);
        assert_eq!(&entries[..4], &[0, 8, 0, 0]);
        assert_eq!(&entries[8..12], &[0, 8, 1, 1]);
        assert_eq!(u32_at(entries, 4) & 1, 1);
        assert_eq!(&entries[16..19], &[1, 12, 2]);
        assert_eq!(u64::from(u32_at(entries, 20)), IOAPIC_START);
    }

    #[test]
    fn largest_vm_fits() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let virtio: Vec<_> = (0..19)
            .map(|i| AcpiMmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + u32::try_from(i).unwrap(),
            })
            .collect();
        setup(&mem, super::super::mptable::MAX_CPUS, &virtio).unwrap();
    }
}
