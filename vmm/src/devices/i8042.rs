//! The minimum of an i8042 keyboard controller that Linux needs to reboot: with `reboot=k` the
//! kernel writes the pulse-reset command 0xfe to the command port. Every read returns 0, so the
//! kernel sees empty buffers and no keyboard.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};

/// Base I/O port of the controller's window (data port).
pub const I8042_DATA_PORT: u64 = 0x60;
/// Size of the window, which covers the command port at 0x64.
pub const I8042_WINDOW_SIZE: u64 = 5;
/// Offset of the command port from the data port.
const COMMAND_OFFSET: u64 = 4;
/// Command that pulses the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// The reset-only keyboard controller.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// Creates a controller that reports a reset through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.signal(VmExit::Reset);
        }
    }
}
