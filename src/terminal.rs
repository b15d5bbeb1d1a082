//! The caller's terminal for `run -t`: its size, and raw mode while the container owns it.

use bulkhead_protocol::WindowSize;

/// Returns the size of the terminal on stdout, if stdout is a terminal.
pub fn window_size() -> Option<WindowSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives for the call.
    let result = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (result == 0 && size.ws_row > 0).then_some(WindowSize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}

/// Raw mode on stdin, restored on drop, so keys such as Ctrl-C reach the container's terminal.
pub struct RawMode {
    original: libc::termios,
}

impl RawMode {
    /// Switches stdin to raw mode; `None` when stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it and fails on a non-terminal.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `original` is a valid termios for tcgetattr to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return None;
        }
        let mut raw = original;
        // SAFETY: cfmakeraw only modifies the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios derived from the terminal's own settings.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.original) };
    }
}
