//! Frame reading and writing over any byte stream.

use std::io::{self, Read, Write};

use crate::codec::Frame;
use crate::{Error, Result, MAX_FRAME_LEN};

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    body: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream. Reads are unbuffered beyond one frame, so after a frame the stream is
    /// positioned exactly after it (a relay connection switches to raw bytes there).
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            body: Vec::new(),
        }
    }

    /// Reads the next frame, or returns `None` when the stream ends cleanly between frames.
    ///
    /// # Errors
    /// Fails when the stream fails or ends inside a frame, when the length prefix exceeds
    /// [`MAX_FRAME_LEN`], or when the body does not decode as `T`.
    pub fn read<T: Frame>(&mut self) -> Result<Option<T>> {
        let mut prefix = [0u8; 4];
        if !read_exact_or_eof(&mut self.inner, &mut prefix)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(prefix);
        if len > MAX_FRAME_LEN {
            return Err(Error::FrameTooLong(len));
        }

        self.body.resize(len as usize, 0);
        self.inner.read_exact(&mut self.body)?;
        Ok(Some(T::decode(&self.body)?))
    }

    /// Returns the wrapped stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Fills `buf`, or returns `false` when the stream ends before the first byte.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// Writes frames to a byte stream.
pub struct FrameWriter<W> {
    inner: W,
    frame: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            frame: Vec::new(),
        }
    }

    /// Encodes `message` and writes it as one frame, then flushes the stream.
    ///
    /// # Errors
    /// Fails when the stream fails, or with [`Error::FrameTooLong`] when the encoded message
    /// exceeds [`MAX_FRAME_LEN`]; then nothing is written.
    pub fn write<T: Frame>(&mut self, message: &T) -> Result<()> {
        self.frame.clear();
        self.frame.extend_from_slice(&[0; 4]);
        message.encode(&mut self.frame);

        let len = u32::try_from(self.frame.len() - 4).unwrap_or(u32::MAX);
        if len > MAX_FRAME_LEN {
            return Err(Error::FrameTooLong(len));
        }
        self.frame[..4].copy_from_slice(&len.to_le_bytes());
        self.inner.write_all(&self.frame)?;
        self.inner.flush()?;
        Ok(())
    }

    /// Returns the wrapped stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Request, Stream};

    #[test]
    fn frames_round_trip_through_stream() {
        let mut writer = FrameWriter::new(Vec::new());
        writer.write(&Request::CloseStdin { id: 4 }).unwrap();
        writer.write(&Request::Shutdown).unwrap();
        let bytes = writer.into_inner();

        let mut reader = FrameReader::new(bytes.as_slice());
        assert_eq!(
            reader.read::<Request>().unwrap(),
            Some(Request::CloseStdin { id: 4 })
        );
        assert_eq!(reader.read::<Request>().unwrap(), Some(Request::Shutdown));
        assert_eq!(reader.read::<Request>().unwrap(), None);
    }

    #[test]
    fn eof_inside_frame_is_an_error() {
        let bytes = [9u8, 0, 0, 0, 0x84];
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(reader.read::<Event>(), Err(Error::Io(_))));
    }

    #[test]
    fn oversized_prefix_is_rejected() {
        let bytes = (MAX_FRAME_LEN + 1).to_le_bytes();
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(
            reader.read::<Event>(),
            Err(Error::FrameTooLong(len)) if len == MAX_FRAME_LEN + 1
        ));
    }

    #[test]
    fn oversized_message_is_not_written() {
        let mut writer = FrameWriter::new(Vec::new());
        let event = Event::Output {
            id: 1,
            stream: Stream::Stdout,
            data: vec![0; MAX_FRAME_LEN as usize],
        };
        assert!(matches!(writer.write(&event), Err(Error::FrameTooLong(_))));
        assert!(writer.into_inner().is_empty());
    }
}
