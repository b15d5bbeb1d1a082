//! SHA-256 content digests (`sha256:<64 hex digits>`) and a hashing writer.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Errors from parsing a digest string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Only `sha256` digests are supported.
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
    /// The hex part is not 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    Invalid(String),
}

/// Result alias for digest parsing.
pub type Result<T> = std::result::Result<T, Error>;

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Computes the digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// Finishes a SHA-256 hasher.
    pub fn from_sha256(hasher: Sha256) -> Self {
        Digest(hasher.finalize().into())
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, as `docker images` shows image ids.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((algorithm, hex_part)) = s.split_once(':') else {
            return Err(Error::Invalid(s.to_string()));
        };
        if algorithm != "sha256" {
            return Err(Error::Algorithm(s.to_string()));
        }
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::Invalid(s.to_string()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| Error::Invalid(s.to_string()))?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes and counts every byte that passes through it, in either direction.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Continues from a hasher state that already covers `count` bytes.
    pub fn resume(inner: T, hasher: Sha256, count: u64) -> Self {
        Hashing {
            inner,
            hasher,
            count,
        }
    }

    /// Bytes seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner reader or writer.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Returns the inner value, the digest and the byte count.
    pub fn finish(self) -> (T, Digest, u64) {
        (
            self.inner,
            Digest(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Computes the OCI chain id of a layer stack from its diff ids, bottom layer first:
/// `ChainID(L0) = DiffID(L0)` and `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
/// An image without layers gets the digest of the empty string.
pub fn chain_id(diff_ids: &[Digest]) -> Digest {
    let mut iter = diff_ids.iter();
    let Some(first) = iter.next() else {
        return Digest::of(b"");
    };
    iter.fold(*first, |chain, diff| {
        Digest::of(format!("{chain} {diff}").as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn digest_rejects_bad_input() {
        for bad in [
            "sha256:abc",
            "md5:00",
            "sha256:",
            "nocolon",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn chain_id_follows_oci_formula() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(chain_id(&[a]), a);
        assert_eq!(chain_id(&[a, b]), Digest::of(format!("{a} {b}").as_bytes()));
    }
}
