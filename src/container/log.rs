//! The container's output log: a sequence of records, each a stream byte (1 stdout, 2 stderr),
//! a little-endian `u32` length and the bytes. The supervisor appends; `logs` reads and can
//! follow the file while the container runs.

use std::fs::File;
use std::io::{self, Read, Write};

/// Stream byte of standard output.
pub const STDOUT: u8 = 1;
/// Stream byte of standard error.
pub const STDERR: u8 = 2;

/// Appends one record.
pub fn append(log: &mut impl Write, stream: u8, data: &[u8]) -> io::Result<()> {
    let mut record = Vec::with_capacity(5 + data.len());
    record.push(stream);
    record.extend_from_slice(&(data.len() as u32).to_le_bytes());
    record.extend_from_slice(data);
    log.write_all(&record)
}

/// Reads whole records from `file`. Returns `None` at the end of the written part, leaving a
/// partly written record for a later call.
pub struct Reader {
    file: File,
    pending: Vec<u8>,
}

impl Reader {
    /// Reads records from the start of `file`.
    pub fn new(file: File) -> Self {
        Self {
            file,
            pending: Vec::new(),
        }
    }

    /// Returns the next complete record, or `None` when none is complete yet.
    pub fn next_record(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some(record) = self.take_record() {
                return Ok(Some(record));
            }
            let mut chunk = [0u8; 64 * 1024];
            let read = self.file.read(&mut chunk)?;
            if read == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&chunk[..read]);
        }
    }

    fn take_record(&mut self) -> Option<(u8, Vec<u8>)> {
        if self.pending.len() < 5 {
            return None;
        }
        let len = u32::from_le_bytes(self.pending[1..5].try_into().expect("4 bytes")) as usize;
        if self.pending.len() < 5 + len {
            return None;
        }
        let stream = self.pending[0];
        let data = self.pending[5..5 + len].to_vec();
        self.pending.drain(..5 + len);
        Some((stream, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_round_trip_with_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut writer = File::create(&path).unwrap();
        append(&mut writer, STDOUT, b"hello\n").unwrap();
        append(&mut writer, STDERR, b"oops").unwrap();
        // Half of a third record: the reader must wait for the rest.
        writer.write_all(&[STDOUT, 3, 0]).unwrap();

        let mut reader = Reader::new(File::open(&path).unwrap());
        assert_eq!(
            reader.next_record().unwrap(),
            Some((STDOUT, b"hello\n".to_vec()))
        );
        assert_eq!(
            reader.next_record().unwrap(),
            Some((STDERR, b"oops".to_vec()))
        );
        assert_eq!(reader.next_record().unwrap(), None);

        writer.write_all(&[0, 0, b'a', b'b', b'c']).unwrap();
        assert_eq!(
            reader.next_record().unwrap(),
            Some((STDOUT, b"abc".to_vec()))
        );
    }
}
