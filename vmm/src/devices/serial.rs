//! The 16550A UART at COM1 (port 0x3f8, GSI 4), the guest's console. Output goes to a file or
//! to standard output. The console stream is also scanned for a kernel panic, so the VMM can tell
//! a panic reboot from a requested one.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Base I/O port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const UART_WINDOW_SIZE: u64 = 8;

/// The line Linux prints first on every panic (kernel/panic.c).
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Raises the UART interrupt by writing to an irqfd registered with KVM.
pub struct IrqfdTrigger(pub EventFd);

impl Trigger for IrqfdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Console output that remembers whether the guest printed a kernel panic.
pub struct ConsoleOutput {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    panicked: Arc<AtomicBool>,
}

impl ConsoleOutput {
    /// Wraps `out`; `panicked` is set once a panic line has been seen.
    pub fn new(out: Box<dyn Write + Send>, panicked: Arc<AtomicBool>) -> Self {
        Self {
            out,
            line: Vec::new(),
            panicked,
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.line.clear();
                continue;
            }
            // Only the line prefix up to the marker's length matters.
            if self.line.len() < 256 {
                self.line.push(byte);
            }
            if self.line.ends_with(PANIC_MARKER) {
                self.panicked.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        // The console is best effort: a closed pipe must not stop the guest.
        if let Err(error) = self.out.write_all(buf) {
            tracing::debug!(%error, "console output dropped");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// COM1 on the port I/O bus.
pub struct SerialConsole {
    uart: Serial<IrqfdTrigger, NoEvents, ConsoleOutput>,
}

impl SerialConsole {
    /// Creates the UART that raises `irqfd` and writes to `output`.
    pub fn new(irqfd: EventFd, output: ConsoleOutput) -> Self {
        Self {
            uart: Serial::new(IrqfdTrigger(irqfd), output),
        }
    }

    /// Flushes buffered console output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if let Err(error) = self.uart.write(offset as u8, value) {
            tracing::warn!(?error, "serial: failed to write a UART register");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_detects_panic_across_writes() {
        let panicked = Arc::new(AtomicBool::new(false));
        let sink = Shared::default();
        let mut console = ConsoleOutput::new(Box::new(sink.clone()), panicked.clone());

        console.write_all(b"[    1.0] Kernel pan").unwrap();
        assert!(!panicked.load(Ordering::SeqCst));
        console.write_all(b"ic - not syncing: VFS\n").unwrap();
        assert!(panicked.load(Ordering::SeqCst));
        assert_eq!(
            sink.0.lock().unwrap().as_slice(),
            b"[    1.0] Kernel panic - not syncing: VFS\n"
        );
    }

    #[test]
    fn console_ignores_ordinary_output() {
        let panicked = Arc::new(AtomicBool::new(false));
        let mut console = ConsoleOutput::new(Box::new(io::sink()), panicked.clone());
        console.write_all(b"Kernel\npanic - not syncing\n").unwrap();
        assert!(!panicked.load(Ordering::SeqCst));
    }

    #[test]
    fn uart_transmits_to_console() {
        let panicked = Arc::new(AtomicBool::new(false));
        let sink = Shared::default();
        let output = ConsoleOutput::new(Box::new(sink.clone()), panicked);
        let mut serial = SerialConsole::new(EventFd::new(0).unwrap(), output);

        for byte in b"hi\n" {
            serial.write(0, &[*byte]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
    }
}
