//! Download progress: one bar per layer on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::digest::Digest;

/// Receives progress of a pull.
pub trait Progress: Sync {
    /// Reports a step of the pull as one line.
    fn message(&self, line: &str);
    /// Starts tracking the download of a blob of `size` bytes.
    fn blob(&self, digest: &Digest, size: u64) -> Box<dyn BlobProgress + '_>;
}

/// Receives progress of one blob download.
pub trait BlobProgress: Send {
    /// Adds `bytes` downloaded; `restart` resets the count first (a resumed download that the
    /// server answered in full).
    fn advance(&self, bytes: u64, restart: bool);
    /// Marks the download finished with `status` (`done`, `exists`).
    fn finish(&self, status: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn message(&self, _line: &str) {}

    fn blob(&self, _digest: &Digest, _size: u64) -> Box<dyn BlobProgress + '_> {
        Box::new(Silent)
    }
}

impl BlobProgress for Silent {
    fn advance(&self, _bytes: u64, _restart: bool) {}
    fn finish(&self, _status: &str) {}
}

/// Writes plain lines to stderr: a start and an end line per blob.
pub struct Lines;

impl Progress for Lines {
    fn message(&self, line: &str) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    fn blob(&self, digest: &Digest, size: u64) -> Box<dyn BlobProgress + '_> {
        let _ = writeln!(
            std::io::stderr(),
            "{}: downloading {size} bytes",
            digest.short()
        );
        Box::new(LineBlob(digest.short()))
    }
}

struct LineBlob(String);

impl BlobProgress for LineBlob {
    fn advance(&self, _bytes: u64, _restart: bool) {}

    fn finish(&self, status: &str) {
        let _ = writeln!(std::io::stderr(), "{}: {status}", self.0);
    }
}

/// Draws one indicatif bar per blob on stderr.
pub struct Bars {
    multi: MultiProgress,
}

impl Progress for Bars {
    fn message(&self, line: &str) {
        let _ = self.multi.println(line);
    }

    fn blob(&self, digest: &Digest, size: u64) -> Box<dyn BlobProgress + '_> {
        let bar = self.multi.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template("{prefix}: {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("the template is valid");
        bar.set_style(style);
        bar.set_prefix(digest.short());
        Box::new(BarBlob(bar))
    }
}

struct BarBlob(ProgressBar);

impl BlobProgress for BarBlob {
    fn advance(&self, bytes: u64, restart: bool) {
        if restart {
            self.0.set_position(0);
        }
        self.0.inc(bytes);
    }

    fn finish(&self, status: &str) {
        self.0.finish_with_message(status.to_string());
    }
}

/// Returns [`Bars`] when stderr is a terminal and [`Lines`] otherwise.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars {
            multi: MultiProgress::new(),
        })
    } else {
        Box::new(Lines)
    }
}
