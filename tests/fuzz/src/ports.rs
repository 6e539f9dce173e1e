//! Port I/O target: the legacy devices and ACPI registers on one I/O bus,
//! laid out as herd lays them out (8250 serial, i8042, CMOS RTC, boot timer,
//! exit device, ACPI sleep/reset), driven by guest port reads and writes of
//! any width, plus host-side console input and Ctrl-Alt-Del.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::acpi::{AcpiSleepReset, ACPI_SLEEP_RESET_PORT, ACPI_SLEEP_RESET_PORT_LEN};
use devices::legacy::{
    BootTimer, Cmos, ExitDevice, GuestReady, SerialDevice, BOOT_TIMER_PORT, CMOS_PORT,
    CMOS_PORT_LEN, COM1_PORT, COM1_PORT_LEN, EXIT_DEVICE_PORT, I8042, I8042_PORT, I8042_PORT_LEN,
};
use devices::{Bus, EventFdTrigger, VmStop};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::input::Input;

pub const OP_WRITE: u8 = 0;
pub const OP_READ: u8 = 1;
pub const OP_CONSOLE_INPUT: u8 = 2;
pub const OP_CTRL_ALT_DEL: u8 = 3;
const OP_COUNT: u8 = 4;
const MAX_OPS: usize = 512;

/// Port bases a port selector byte below their count picks; anything else
/// is a raw 16-bit port.
pub const PORTS: [u64; 6] = [
    COM1_PORT,
    I8042_PORT,
    BOOT_TIMER_PORT,
    EXIT_DEVICE_PORT,
    CMOS_PORT,
    ACPI_SLEEP_RESET_PORT,
];

fn evt() -> EventFd {
    match EventFd::new(EFD_NONBLOCK) {
        Ok(evt) => evt,
        Err(e) => panic!("fuzz harness: eventfd: {e}"),
    }
}

fn port(input: &mut Input) -> u64 {
    let sel = input.u8();
    let offset = u64::from(input.u8() % 8);
    match PORTS.get(usize::from(sel)) {
        Some(base) => base + offset,
        None => u64::from(input.u16()),
    }
}

pub fn port_io(data: &[u8]) {
    let stop = match VmStop::new() {
        Ok(stop) => stop,
        Err(e) => panic!("fuzz harness: VmStop: {e}"),
    };
    let serial = match SerialDevice::new(EventFdTrigger::new(evt()), Box::new(std::io::sink())) {
        Ok(serial) => Arc::new(Mutex::new(serial)),
        Err(e) => panic!("fuzz harness: serial: {e}"),
    };
    let i8042 = Arc::new(Mutex::new(I8042::new(stop.clone(), evt())));
    let now = Instant::now();
    let timer = BootTimer::new(
        now,
        now,
        Arc::new(Mutex::new(None)),
        Arc::new(GuestReady::default()),
    );
    let mut bus = Bus::new();
    let inserted = [
        bus.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN),
        bus.insert(i8042.clone(), I8042_PORT, I8042_PORT_LEN),
        bus.insert(Arc::new(Mutex::new(timer)), BOOT_TIMER_PORT, 1),
        bus.insert(
            Arc::new(Mutex::new(ExitDevice::new(stop.clone()))),
            EXIT_DEVICE_PORT,
            1,
        ),
        bus.insert(Arc::new(Mutex::new(Cmos::new())), CMOS_PORT, CMOS_PORT_LEN),
        bus.insert(
            Arc::new(Mutex::new(AcpiSleepReset::new(stop))),
            ACPI_SLEEP_RESET_PORT,
            ACPI_SLEEP_RESET_PORT_LEN,
        ),
    ];
    if let Some(Err(e)) = inserted.into_iter().find(Result::is_err) {
        panic!("fuzz harness: bus layout: {e}");
    }

    let mut input = Input::new(data);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % OP_COUNT {
            OP_WRITE => {
                let port = port(&mut input);
                let len = usize::from(input.u8() % 5);
                let bytes = input.bytes(len);
                bus.write(port, bytes);
            }
            OP_READ => {
                let port = port(&mut input);
                let len = usize::from(input.u8() % 5);
                let mut buf = [0u8; 4];
                bus.read(port, &mut buf[..len]);
            }
            OP_CONSOLE_INPUT => {
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                let taken = serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .enqueue_input(bytes);
                assert!(taken <= bytes.len(), "serial took more input than offered");
            }
            _ => {
                let _ = i8042
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ctrl_alt_del();
            }
        }
    }
}
