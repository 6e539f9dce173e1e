//! i8042 keyboard controller with a keyboard that can press one chord.
//!
//! A microVM needs two things from it: the CPU-reset command (how Linux
//! reboots without ACPI) and Ctrl-Alt-Del, the host's way to ask the guest
//! to shut down (as Firecracker's SendCtrlAltDel). Linux's keyboard driver
//! turns that chord into SIGINT for init. Just enough of the controller is
//! emulated for Linux's i8042 driver to find it: the control register, the
//! output port, self tests, and an output buffer raising IRQ 1.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::stop::{StopReason, VmStop};

pub const I8042_PORT: u64 = 0x60;
/// Data port 0x60 through command port 0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's ISA interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;

const OFS_DATA: u64 = 0;
const OFS_COMMAND: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// The next byte on the data port is a command's parameter.
const STATUS_COMMAND_DATA: u8 = 0x08;
const STATUS_KBD_UNLOCKED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_TRANSLATE: u8 = 0x40;

const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;

/// Ctrl, Alt, Delete key presses in scan-code set 2 (what the keyboard
/// sends) and set 1 (what the guest reads when it asked the controller to
/// translate).
const CTRL_ALT_DEL_SET2: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
const CTRL_ALT_DEL_SET1: [u8; 4] = [0x1d, 0x38, 0xe0, 0x53];

const BUFFER_SIZE: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    #[error(
        "the guest has no keyboard driver listening (it never enabled the i8042 keyboard \
         interrupt), so it cannot see Ctrl-Alt-Del"
    )]
    NoDriver,
    #[error("the i8042 output buffer is full: the guest is not reading its keyboard")]
    BufferFull,
}

pub struct I8042 {
    stop: VmStop,
    irq: EventFd,
    status: u8,
    control: u8,
    output_port: u8,
    /// The command waiting for its parameter byte on the data port.
    pending: Option<u8>,
    buffer: VecDeque<u8>,
    /// Set once the guest has enabled the keyboard interrupt itself: only
    /// then is someone there to see a key press.
    driver_listening: bool,
}

impl I8042 {
    pub fn new(stop: VmStop, irq: EventFd) -> Self {
        I8042 {
            stop,
            irq,
            status: STATUS_KBD_UNLOCKED | STATUS_SYSTEM_FLAG,
            control: CTR_KBD_INT | CTR_SYSTEM_FLAG,
            output_port: 0,
            pending: None,
            buffer: VecDeque::with_capacity(BUFFER_SIZE),
            driver_listening: false,
        }
    }

    /// True once the guest's driver enabled the keyboard interrupt and has
    /// not disabled it since.
    pub fn keyboard_listening(&self) -> bool {
        self.driver_listening
            && self.control & CTR_KBD_INT != 0
            && self.control & CTR_KBD_DISABLED == 0
    }

    /// Presses Ctrl-Alt-Del (no releases, as Firecracker does).
    pub fn ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if !self.keyboard_listening() {
            return Err(I8042Error::NoDriver);
        }
        if BUFFER_SIZE - self.buffer.len() < CTRL_ALT_DEL_SET2.len() {
            return Err(I8042Error::BufferFull);
        }
        let keys = if self.control & CTR_TRANSLATE != 0 {
            CTRL_ALT_DEL_SET1
        } else {
            CTRL_ALT_DEL_SET2
        };
        for byte in keys {
            self.push(byte);
        }
        self.raise_irq();
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.buffer.len() < BUFFER_SIZE {
            self.buffer.push_back(byte);
        }
        self.status |= STATUS_OUTPUT_FULL;
    }

    /// A controller reply replaces whatever was waiting to be read.
    fn reply(&mut self, byte: u8) {
        self.buffer.clear();
        self.push(byte);
    }

    fn pop(&mut self) -> u8 {
        let byte = self.buffer.pop_front().unwrap_or(0);
        if self.buffer.is_empty() {
            self.status &= !STATUS_OUTPUT_FULL;
        }
        byte
    }

    fn raise_irq(&self) {
        if self.control & CTR_KBD_INT == 0 {
            return;
        }
        if let Err(e) = self.irq.write(1) {
            log::warn!("i8042: cannot raise the keyboard interrupt: {e}");
        }
    }

    fn command(&mut self, command: u8) {
        match command {
            CMD_RESET_CPU => {
                log::info!("guest requested a reset through the i8042 controller");
                self.stop.request(StopReason::GuestReset);
            }
            CMD_READ_CTR => self.reply(self.control),
            CMD_READ_OUTP => self.reply(self.output_port),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => {
                self.pending = Some(command);
                self.status |= STATUS_COMMAND_DATA;
            }
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_KBD_TEST => self.reply(KBD_TEST_OK),
            CMD_KBD_DISABLE => self.control |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.control &= !CTR_KBD_DISABLED,
            other => log::debug!("i8042: ignoring controller command {other:#x}"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_COMMAND_DATA;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => {
                self.control = byte;
                if byte & CTR_KBD_INT != 0 {
                    self.driver_listening = true;
                }
            }
            Some(_) => self.output_port = byte,
            None => {
                // A command for the keyboard itself (LEDs, scan-code set,
                // identify): a dumb keyboard acknowledges everything.
                self.reply(KBD_ACK);
                self.raise_irq();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            OFS_DATA => {
                let value = self.pop();
                if !self.buffer.is_empty() {
                    // One interrupt per byte, as a real controller does.
                    self.raise_irq();
                }
                value
            }
            OFS_COMMAND => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else { return };
        match offset {
            OFS_DATA => self.data(*byte),
            OFS_COMMAND => self.command(*byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, VmStop, EventFd) {
        let stop = VmStop::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(stop.clone(), irq.try_clone().unwrap());
        (dev, stop, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    /// What Linux's i8042 driver does to enable the keyboard port.
    fn enable_keyboard(dev: &mut I8042) {
        dev.write(OFS_COMMAND, &[CMD_READ_CTR]);
        assert_ne!(read(dev, OFS_COMMAND) & STATUS_OUTPUT_FULL, 0);
        let ctr = read(dev, OFS_DATA);
        dev.write(OFS_COMMAND, &[CMD_WRITE_CTR]);
        assert_ne!(read(dev, OFS_COMMAND) & STATUS_COMMAND_DATA, 0);
        dev.write(OFS_DATA, &[(ctr | CTR_KBD_INT) & !CTR_KBD_DISABLED]);
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let (mut dev, stop, _) = device();
        dev.write(0, &[0xfe]);
        assert!(!stop.is_requested(), "0xfe on the data port is not a reset");
        dev.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::GuestReset));
    }

    #[test]
    fn ctrl_alt_del_needs_a_listening_driver() {
        let (mut dev, _, irq) = device();
        assert_eq!(dev.ctrl_alt_del(), Err(I8042Error::NoDriver));
        enable_keyboard(&mut dev);
        assert!(dev.keyboard_listening());
        dev.ctrl_alt_del().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut got = Vec::new();
        while read(&mut dev, OFS_COMMAND) & STATUS_OUTPUT_FULL != 0 {
            got.push(read(&mut dev, OFS_DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL_SET2);
        // One more interrupt per byte still waiting after a read.
        assert_eq!(irq.read().unwrap(), 3);
        dev.write(OFS_COMMAND, &[CMD_KBD_DISABLE]);
        assert_eq!(dev.ctrl_alt_del(), Err(I8042Error::NoDriver));
    }

    #[test]
    fn a_guest_that_never_reads_fills_the_buffer_without_harm() {
        let (mut dev, _, _) = device();
        enable_keyboard(&mut dev);
        for _ in 0..BUFFER_SIZE / 4 {
            dev.ctrl_alt_del().unwrap();
        }
        assert_eq!(dev.ctrl_alt_del(), Err(I8042Error::BufferFull));
    }

    #[test]
    fn controller_commands_answer() {
        let (mut dev, _, _) = device();
        dev.write(OFS_COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, OFS_DATA), SELF_TEST_OK);
        dev.write(OFS_COMMAND, &[CMD_WRITE_OUTP]);
        dev.write(OFS_DATA, &[0x42]);
        dev.write(OFS_COMMAND, &[CMD_READ_OUTP]);
        assert_eq!(read(&mut dev, OFS_DATA), 0x42);
        dev.write(OFS_DATA, &[0xf2]);
        assert_eq!(read(&mut dev, OFS_DATA), KBD_ACK);
        let mut wide = [0u8; 2];
        dev.read(OFS_DATA, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
