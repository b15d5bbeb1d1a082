//! Pseudo-terminals for processes started with a TTY.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use bulkhead_protocol::WindowSize;
use nix::pty::{openpty, Winsize};

nix::ioctl_write_ptr_bad!(set_winsize_ioctl, libc::TIOCSWINSZ, libc::winsize);

/// End-of-file character written to the terminal when the host closes stdin, the `VEOF` default
/// of Linux (`^D`). A canonical-mode reader sees end of file when it starts a line.
pub const EOF_CHAR: u8 = 0x04;

/// A new terminal pair.
pub struct Pty {
    /// The side the agent reads and writes.
    pub master: File,
    /// The side that becomes the process's stdin, stdout and stderr.
    pub slave: OwnedFd,
}

fn winsize(size: WindowSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a terminal pair with the window size `size`.
///
/// # Errors
/// Fails when no pseudo-terminal can be allocated (for example without `/dev/ptmx`).
pub fn open(size: WindowSize) -> io::Result<Pty> {
    let pty = openpty(Some(&winsize(size)), None)?;
    Ok(Pty {
        master: File::from(pty.master),
        slave: pty.slave,
    })
}

/// Sets the window size of the terminal whose master is `master`; the kernel sends `SIGWINCH`
/// to the terminal's foreground process group.
///
/// # Errors
/// Fails when `master` is not a terminal.
pub fn resize(master: &File, size: WindowSize) -> io::Result<()> {
    let size = winsize(size);
    // SAFETY: `master` is an open descriptor for the lifetime of the call and TIOCSWINSZ only
    // reads the `winsize` that the pointer refers to, which outlives the call.
    unsafe { set_winsize_ioctl(master.as_raw_fd(), &size) }?;
    Ok(())
}

/// Makes the terminal on stdin the controlling terminal of a new session. Runs in the forked
/// child before exec, so it calls only async-signal-safe functions.
pub fn make_controlling_terminal() -> io::Result<()> {
    // SAFETY: setsid has no memory effects; it fails only when the caller leads a process group,
    // which a freshly forked child does not.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal the terminal) and touches no
    // memory of the caller.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
