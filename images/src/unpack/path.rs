//! Normalisation of tar entry names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// Normalises a tar name to a path relative to the root: leading `/` and `./` go, `.` and
/// empty components are dropped and `..` removes the previous component. Returns an empty
/// path for the root itself, and [`Error::Escape`] for names that climb above the root.
pub fn normalize(name: &[u8]) -> Result<PathBuf> {
    let mut components: Vec<&[u8]> = Vec::new();
    for component in name.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if components.pop().is_none() {
                    return Err(Error::Escape(String::from_utf8_lossy(name).into_owned()));
                }
            }
            other => components.push(other),
        }
    }
    let mut path = PathBuf::new();
    for component in components {
        path.push(OsStr::from_bytes(component));
    }
    Ok(path)
}

/// Splits a normalised, non-empty path into its parent and final name.
pub(super) fn split(path: &Path) -> (&Path, &OsStr) {
    let name = path
        .file_name()
        .expect("a normalised non-root path has a file name");
    (path.parent().unwrap_or(Path::new("")), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cases() {
        let cases: &[(&[u8], &str)] = &[
            (b"a/b", "a/b"),
            (b"./a/b/", "a/b"),
            (b"/abs/path", "abs/path"),
            (b"a//b/./c", "a/b/c"),
            (b"a/../b", "b"),
            (b"./", ""),
            (b"/", ""),
            (b"with space/new\nline", "with space/new\nline"),
        ];
        for (i, (input, expected)) in cases.iter().enumerate() {
            assert_eq!(normalize(input).unwrap(), Path::new(expected), "case {i}");
        }
    }

    #[test]
    fn normalize_rejects_escapes() {
        for input in [&b"../x"[..], b"a/../../x", b"/../etc/passwd", b"./.."] {
            assert!(
                matches!(normalize(input), Err(Error::Escape(_))),
                "{input:?}"
            );
        }
    }
}
