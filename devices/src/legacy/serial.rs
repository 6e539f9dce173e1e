//! 8250 UART on COM1, emulated by vm-superio.

use std::io::Write;

use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::EventFdTrigger;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Signals an eventfd each time the guest empties the receive FIFO, so
/// input that did not fit can be offered again.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A full counter still wakes the reader; nothing else can fail.
        let _ = self.0.write(1);
    }
}

/// The guest's console. Output goes to whatever writer the VMM chose
/// (terminal, log file, nothing); input is pushed in by the VMM's event loop.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, InputDrained, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let drained = InputDrained(EventFd::new(libc::EFD_NONBLOCK)?);
        Ok(SerialDevice {
            serial: Serial::with_events(interrupt, drained, out),
        })
    }

    /// Readable once the guest has emptied its receive FIFO (after input
    /// that did not fit; see `enqueue_input`).
    pub fn input_drained(&self) -> &EventFd {
        &self.serial.events().0
    }

    /// Queues host input for the guest; returns how many bytes fit in the
    /// receive FIFO (the rest must be offered again later).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                log::warn!("serial: cannot deliver input to the guest: {e:?}");
                0
            }
        }
    }

    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// The interrupt line, so the VMM can wire it to the guest's IRQ 4.
    pub fn interrupt(&self) -> &EventFdTrigger {
        self.serial.interrupt_evt()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.serial.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.serial.write(offset, *byte) {
                // A closed terminal or a full disk must not stop the guest.
                log::debug!("serial: output failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_writer_and_input_reaches_guest() {
        let out = SharedBuf::default();
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut serial = SerialDevice::new(irq, Box::new(out.clone())).unwrap();
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Enable the received-data interrupt, then deliver a byte.
        serial.write(1, &[0x01]);
        assert_eq!(serial.enqueue_input(b"x"), 1);
        let mut byte = [0u8];
        serial.read(0, &mut byte);
        assert_eq!(byte, [b'x']);
        assert!(serial.interrupt().eventfd().read().unwrap() >= 1);
        // The FIFO is empty again: whoever holds more input hears of it.
        assert_eq!(serial.input_drained().read().unwrap(), 1);
        let fifo = serial.fifo_capacity();
        assert_eq!(serial.enqueue_input(&vec![b'y'; fifo + 10]), fifo);
        assert_eq!(serial.enqueue_input(b"z"), 0);
        for _ in 0..fifo - 1 {
            serial.read(0, &mut byte);
        }
        assert!(serial.input_drained().read().is_err(), "not empty yet");
        serial.read(0, &mut byte);
        assert_eq!(serial.input_drained().read().unwrap(), 1);
        // Multi-byte accesses are not 8250 accesses: reads float high.
        let mut word = [0u8; 2];
        serial.read(0, &mut word);
        assert_eq!(word, [0xff, 0xff]);
    }
}
