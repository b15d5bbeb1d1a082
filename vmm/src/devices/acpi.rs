//! The ACPI fixed-hardware registers the guest needs to power off and reset, on I/O ports.
//!
//! The FADT announces a PM1a event block (status and enable, 2 bytes each), a PM1a control block
//! (2 bytes) and a reset register. To power off, Linux clears the status bits, then writes the
//! control register twice: first `SLP_TYP` alone, then `SLP_TYP | SLP_EN`, with `SLP_TYP` taken
//! from the DSDT's `_S5`. To reset, it writes the FADT's reset value to the reset register.
//!
//! Status reads as 0, because nothing here raises an event. Control reads back with `SCI_EN`
//! set: the platform is always in ACPI mode, which is also why the FADT has no SMI command port.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

/// First port of the PM1a event block: the status register, then the enable register.
pub const PM1A_EVENT_PORT: u16 = 0x600;
/// Length of the PM1a event block.
pub const PM1_EVENT_LEN: u8 = 4;
/// The PM1a control register.
pub const PM1A_CONTROL_PORT: u16 = 0x604;
/// Length of the PM1a control block.
pub const PM1_CONTROL_LEN: u8 = 2;
/// The reset register.
pub const RESET_PORT: u16 = 0x606;
/// Value the guest writes to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// Sleep type of the soft-off state S5, as the DSDT's `_S5` reports it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// First port of the device's window.
pub const ACPI_PM_PORT: u64 = PM1A_EVENT_PORT as u64;
/// Size of the window: both PM1a blocks and the reset register.
pub const ACPI_PM_WINDOW_SIZE: u64 = RESET_PORT as u64 + 1 - ACPI_PM_PORT;

/// Offset of the enable register in the window.
const ENABLE_OFFSET: usize = PM1_EVENT_LEN as usize / 2;
/// Offset of the control register in the window.
const CONTROL_OFFSET: usize = (PM1A_CONTROL_PORT - PM1A_EVENT_PORT) as usize;
/// Offset of the reset register in the window.
const RESET_OFFSET: usize = (RESET_PORT - PM1A_EVENT_PORT) as usize;
/// PM1 control `SCI_EN`: events raise the SCI rather than an SMI.
const SCI_ENABLE: u16 = 1 << 0;
/// PM1 control `SLP_TYP` field: bits 10 to 12.
const SLEEP_TYPE_SHIFT: u16 = 10;
/// Mask of `SLP_TYP` after the shift.
const SLEEP_TYPE_MASK: u16 = 0b111;
/// PM1 control `SLP_EN`: starts the transition to the sleep type in `SLP_TYP`.
const SLEEP_ENABLE: u16 = 1 << 13;

/// The PM1a status, enable and control registers and the reset register.
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
    enable: u16,
    control: u16,
}

impl AcpiPm {
    /// Creates the registers, reporting power-off and reset through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            exit,
            enable: 0,
            control: SCI_ENABLE,
        }
    }

    /// Returns the 16-bit register that `offset` falls in, and the byte of it that `offset` names.
    fn register(&mut self, offset: usize) -> Option<(&mut u16, usize)> {
        match offset {
            o if (ENABLE_OFFSET..ENABLE_OFFSET + 2).contains(&o) => {
                Some((&mut self.enable, o - ENABLE_OFFSET))
            }
            o if (CONTROL_OFFSET..CONTROL_OFFSET + 2).contains(&o) => {
                Some((&mut self.control, o - CONTROL_OFFSET))
            }
            _ => None,
        }
    }

    fn control_written(&mut self) {
        let sleep_type = (self.control >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if self.control & SLEEP_ENABLE == 0 {
            return;
        }
        // SLP_EN is write-only: it reads back as 0.
        self.control &= !SLEEP_ENABLE;
        if sleep_type == u16::from(S5_SLEEP_TYPE) {
            self.exit.signal(VmExit::PowerOff);
        } else {
            tracing::debug!(sleep_type, "ignoring a sleep request other than S5");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (index, byte) in data.iter_mut().enumerate() {
            let offset = offset as usize + index;
            *byte = match self.register(offset) {
                Some((register, half)) => register.to_le_bytes()[half],
                None => 0,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut control_written = false;
        for (index, &value) in data.iter().enumerate() {
            let offset = offset as usize + index;
            if offset == RESET_OFFSET {
                if value == RESET_VALUE {
                    self.exit.signal(VmExit::Reset);
                }
                continue;
            }
            // Status bits are write-1-to-clear and always clear, so status writes change nothing.
            if let Some((register, half)) = self.register(offset) {
                let mut bytes = register.to_le_bytes();
                bytes[half] = value;
                *register = u16::from_le_bytes(bytes);
                control_written |= offset >= CONTROL_OFFSET;
            }
        }
        if control_written {
            self.control |= SCI_ENABLE;
            self.control_written();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_of(port: u16) -> u64 {
        u64::from(port) - ACPI_PM_PORT
    }

    /// Runs the writes `(port, bytes)` in order and returns the exit they caused, if any.
    fn run_writes(writes: &[(u16, &[u8])]) -> Option<VmExit> {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        for (port, bytes) in writes {
            pm.write(offset_of(*port), bytes);
        }
        // A distinct reason makes `wait` return at once; it wins only when the writes
        // signalled nothing.
        exit.signal(VmExit::TripleFault);
        match exit.wait() {
            VmExit::TripleFault => None,
            other => Some(other),
        }
    }

    fn control(sleep_type: u16, enable: bool) -> [u8; 2] {
        let value = (sleep_type << SLEEP_TYPE_SHIFT) | if enable { SLEEP_ENABLE } else { 0 };
        value.to_le_bytes()
    }

    #[test]
    fn register_writes_end_the_vm_or_not() {
        let s5 = u16::from(S5_SLEEP_TYPE);
        let (s5_type, s5_enable) = (control(s5, false), control(s5, true));
        let s3_enable = control(3, true);
        type Case<'a> = (&'a str, Vec<(u16, &'a [u8])>, Option<VmExit>);
        let cases: [Case; 7] = [
            (
                "Linux's S5 sequence",
                vec![
                    (PM1A_EVENT_PORT, &[0xff, 0xff]),
                    (PM1A_CONTROL_PORT, &s5_type),
                    (PM1A_CONTROL_PORT, &s5_enable),
                ],
                Some(VmExit::PowerOff),
            ),
            (
                "S5 written a byte at a time",
                vec![
                    (PM1A_CONTROL_PORT, &s5_enable[..1]),
                    (PM1A_CONTROL_PORT + 1, &s5_enable[1..]),
                ],
                Some(VmExit::PowerOff),
            ),
            (
                "S5 without SLP_EN",
                vec![(PM1A_CONTROL_PORT, &s5_type)],
                None,
            ),
            (
                "S3 with SLP_EN",
                vec![(PM1A_CONTROL_PORT, &s3_enable)],
                None,
            ),
            ("status clear", vec![(PM1A_EVENT_PORT, &[0xff, 0xff])], None),
            (
                "reset value",
                vec![(RESET_PORT, &[RESET_VALUE])],
                Some(VmExit::Reset),
            ),
            ("other reset value", vec![(RESET_PORT, &[0x0e])], None),
        ];
        for (name, writes, expected) in cases {
            assert_eq!(run_writes(&writes), expected, "{name}");
        }
    }

    #[test]
    fn registers_read_back() {
        let mut pm = AcpiPm::new(Arc::new(ExitSignal::new().unwrap()));
        let mut word = [0xff; 2];
        pm.read(offset_of(PM1A_EVENT_PORT), &mut word);
        assert_eq!(word, [0, 0], "status is clear");

        pm.write(
            offset_of(PM1A_EVENT_PORT) + ENABLE_OFFSET as u64,
            &[0x20, 0x01],
        );
        pm.read(offset_of(PM1A_EVENT_PORT) + ENABLE_OFFSET as u64, &mut word);
        assert_eq!(word, [0x20, 0x01], "enable keeps what was written");

        pm.read(offset_of(PM1A_CONTROL_PORT), &mut word);
        assert_eq!(
            u16::from_le_bytes(word),
            SCI_ENABLE,
            "the platform is in ACPI mode"
        );

        pm.write(offset_of(PM1A_CONTROL_PORT), &control(3, true));
        pm.read(offset_of(PM1A_CONTROL_PORT), &mut word);
        assert_eq!(
            u16::from_le_bytes(word),
            SCI_ENABLE | (3 << SLEEP_TYPE_SHIFT),
            "SLP_EN reads back as 0"
        );
    }
}
