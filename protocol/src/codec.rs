//! Byte layout of frames.
//!
//! Every frame is a 4-byte little-endian length `N` followed by `N` bytes of body. `N` is at
//! most [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN). The body starts with a one-byte tag naming the
//! message, followed by the message's fields in declaration order:
//!
//! | field type        | encoding                                                  |
//! |-------------------|-----------------------------------------------------------|
//! | `u8`              | 1 byte                                                    |
//! | `u16`, `u32`      | little-endian, 2 or 4 bytes                               |
//! | `i32`             | little-endian two's complement, 4 bytes                   |
//! | bytes, string     | `u32` length, then the bytes (strings are UTF-8)          |
//! | list              | `u32` count, then each element                            |
//! | `Option<T>`       | `u8` 0 (absent) or 1 followed by `T`                      |
//! | `bool`            | `u8` 0 or 1                                               |
//!
//! A decoder rejects unknown tags, truncated fields and trailing bytes. Tags `0x01..=0x3f` are
//! host requests on the control connection, `0x81..=0xbf` agent events on it, `0x41` the relay
//! request and `0xc1..=0xc2` the relay responses.

use thiserror::Error;

/// A message that can be encoded into, and decoded from, one frame body.
pub trait Frame: Sized {
    /// Appends the frame body (tag and fields, without the length prefix) to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes one frame body.
    ///
    /// # Errors
    /// Returns [`DecodeError`] for an unknown tag, a truncated field, invalid UTF-8 or bytes left
    /// over after the last field.
    fn decode(body: &[u8]) -> Result<Self, DecodeError>;
}

/// Reasons a frame body does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is shorter than its fields require.
    #[error("frame body truncated at byte {0}")]
    Truncated(usize),
    /// The tag names no message of the expected kind.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// A field has a value outside its range.
    #[error("invalid value {value} for field {field}")]
    InvalidValue {
        /// Name of the field.
        field: &'static str,
        /// The value read.
        value: u32,
    },
    /// A string field is not UTF-8.
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Appends fields to a frame body.
pub(crate) struct Encoder<'a>(pub(crate) &'a mut Vec<u8>);

impl Encoder<'_> {
    pub(crate) fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }

    pub(crate) fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn i32(&mut self, value: i32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) -> &mut Self {
        let len = u32::try_from(value.len()).expect("field longer than 4 GiB");
        self.u32(len);
        self.0.extend_from_slice(value);
        self
    }

    pub(crate) fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    pub(crate) fn bytes_list(&mut self, values: &[Vec<u8>]) -> &mut Self {
        let count = u32::try_from(values.len()).expect("list longer than 4 Gi elements");
        self.u32(count);
        for value in values {
            self.bytes(value);
        }
        self
    }

    pub(crate) fn option<T: ?Sized>(
        &mut self,
        value: Option<&T>,
        encode: impl FnOnce(&mut Self, &T),
    ) -> &mut Self {
        match value {
            None => {
                self.u8(0);
            }
            Some(value) => {
                self.u8(1);
                encode(self, value);
            }
        }
        self
    }
}

/// Reads fields from a frame body.
pub(crate) struct Decoder<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self { body, pos: 0 }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.body.len())
            .ok_or(DecodeError::Truncated(self.pos))?;
        let slice = &self.body[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(i32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    pub(crate) fn bytes_list(&mut self) -> Result<Vec<Vec<u8>>, DecodeError> {
        let count = self.u32()?;
        // Each element takes at least its 4-byte length, which bounds the allocation by the body.
        let mut values = Vec::with_capacity((count as usize).min(self.remaining() / 4));
        for _ in 0..count {
            values.push(self.bytes()?);
        }
        Ok(values)
    }

    pub(crate) fn option<T>(
        &mut self,
        decode: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => decode(self).map(Some),
            value => Err(DecodeError::InvalidValue {
                field: "option flag",
                value: value.into(),
            }),
        }
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    /// Checks that every byte of the body was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(DecodeError::TrailingBytes(left)),
        }
    }
}
