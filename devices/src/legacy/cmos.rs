//! MC146818-style CMOS RTC at ports 0x70 (index) and 0x71 (data): the
//! guest's wall clock at boot (Linux's rtc-cmos + RTC_HCTOSYS), without NTP.
//!
//! vm-superio's RTC is the ARM PL031, so x86 gets this small one. The time
//! registers always read the host's current UTC time (BCD, 24-hour); a
//! guest setting the clock changes nothing on the host or in later reads.
//! The rest of the 128 bytes are plain RAM. No interrupts are raised.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

pub const CMOS_PORT: u64 = 0x70;
pub const CMOS_PORT_LEN: u64 = 2;
pub const CMOS_IRQ: u32 = 8;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;
/// Status A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set.
const STATUS_A_VALUE: u8 = 0x26;
/// Status B: 24-hour mode, BCD.
const STATUS_B_VALUE: u8 = 0x02;
/// Status D: valid RAM and time.
const STATUS_D_VALUE: u8 = 0x80;
const INDEX_MASK: u8 = 0x7f;

/// A calendar time in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday, as the RTC counts.
    pub weekday: u8,
}

impl DateTime {
    /// Civil date from seconds since 1970-01-01 UTC (Howard Hinnant's
    /// days-to-civil algorithm).
    pub fn from_unix(secs: u64) -> DateTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        let small = |v: u64| u8::try_from(v).unwrap_or(0);
        DateTime {
            year: u32::try_from(year).unwrap_or(u32::MAX),
            month: small(month),
            day: small(day),
            hour: small(rem / 3600),
            minute: small(rem / 60 % 60),
            second: small(rem % 60),
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: small((days + 4) % 7 + 1),
        }
    }
}

fn bcd(v: u32) -> u8 {
    let v = v % 100;
    u8::try_from((v / 10) << 4 | (v % 10)).unwrap_or(0)
}

/// Where the current time comes from (the host's clock, or a fixed one in
/// tests).
pub type Clock = Box<dyn Fn() -> u64 + Send>;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: Clock,
}

fn host_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(Box::new(host_clock))
    }
}

impl Cmos {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_clock(clock: Clock) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            clock,
        }
    }

    fn register(&self, index: u8) -> u8 {
        let now = || DateTime::from_unix((self.clock)());
        match index {
            SECONDS => bcd(now().second.into()),
            MINUTES => bcd(now().minute.into()),
            HOURS => bcd(now().hour.into()),
            DAY_OF_WEEK => bcd(now().weekday.into()),
            DAY_OF_MONTH => bcd(now().day.into()),
            MONTH => bcd(now().month.into()),
            YEAR => bcd(now().year),
            CENTURY => bcd(now().year / 100),
            STATUS_A => STATUS_A_VALUE,
            STATUS_B => STATUS_B_VALUE,
            // No interrupt flags: reading clears nothing.
            STATUS_C => 0,
            STATUS_D => STATUS_D_VALUE,
            _ => self.ram[usize::from(index & INDEX_MASK)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (1, [byte]) => *byte = self.register(self.index),
            // The index port reads back as on most chipsets: the last index.
            (0, [byte]) => *byte = self.index,
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 is the NMI mask on real hardware; herd has no NMI source.
            (0, [byte]) => self.index = byte & INDEX_MASK,
            (1, [byte]) => match self.index {
                SECONDS..=YEAR | STATUS_A..=STATUS_D | CENTURY => {
                    log::debug!(
                        "cmos: guest write {byte:#x} to register {:#x} ignored",
                        self.index
                    );
                }
                index => self.ram[usize::from(index)] = *byte,
            },
            _ => log::debug!("cmos: {}-byte write at offset {offset} ignored", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(0, &[index | 0x80]);
        let mut b = [0u8];
        cmos.read(1, &mut b);
        b[0]
    }

    #[test]
    fn calendar_conversion() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2024-02-29 23:59:59 UTC, a Thursday.
        assert_eq!(
            DateTime::from_unix(1_709_251_199),
            DateTime {
                year: 2024,
                month: 2,
                day: 29,
                hour: 23,
                minute: 59,
                second: 59,
                weekday: 5
            }
        );
        // 2026-12-01 15:30:07 UTC, a Tuesday.
        assert_eq!(
            DateTime::from_unix(1_796_139_007),
            DateTime {
                year: 2026,
                month: 12,
                day: 1,
                hour: 15,
                minute: 30,
                second: 7,
                weekday: 3
            }
        );
    }

    #[test]
    fn time_registers_read_bcd_of_the_clock() {
        let mut cmos = Cmos::with_clock(Box::new(|| 1_796_139_007));
        assert_eq!(read_reg(&mut cmos, SECONDS), 0x07);
        assert_eq!(read_reg(&mut cmos, MINUTES), 0x30);
        assert_eq!(read_reg(&mut cmos, HOURS), 0x15);
        assert_eq!(read_reg(&mut cmos, DAY_OF_MONTH), 0x01);
        assert_eq!(read_reg(&mut cmos, MONTH), 0x12);
        assert_eq!(read_reg(&mut cmos, YEAR), 0x26);
        assert_eq!(read_reg(&mut cmos, CENTURY), 0x20);
        assert_eq!(read_reg(&mut cmos, STATUS_A) & 0x80, 0, "UIP must be clear");
        assert_eq!(read_reg(&mut cmos, STATUS_B), STATUS_B_VALUE);
        assert_eq!(read_reg(&mut cmos, STATUS_D), STATUS_D_VALUE);
    }

    #[test]
    fn ram_keeps_writes_and_clock_ignores_them() {
        let mut cmos = Cmos::with_clock(Box::new(|| 1_796_139_007));
        cmos.write(0, &[0x40]);
        cmos.write(1, &[0xab]);
        assert_eq!(read_reg(&mut cmos, 0x40), 0xab);
        cmos.write(0, &[HOURS]);
        cmos.write(1, &[0x03]);
        assert_eq!(read_reg(&mut cmos, HOURS), 0x15);
        // Garbage: wide accesses, every index with and without the NMI bit.
        cmos.write(0, &[1, 2, 3, 4]);
        cmos.write(1, &[1, 2]);
        let mut wide = [0u8; 2];
        cmos.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        for index in 0..=u8::MAX {
            cmos.write(0, &[index]);
            cmos.write(1, &[index]);
            let mut b = [0u8];
            cmos.read(1, &mut b);
        }
        assert_eq!(read_reg(&mut cmos, YEAR), 0x26);
    }
}
