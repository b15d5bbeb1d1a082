//! Command lookup: which file a process's `argv[0]` names, and the Docker exit code when none.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::syscall::{FileKind, Syscall};

/// `PATH` given to processes whose environment has none; the default of Docker and runc.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code for a failure of the agent to set a process up, as `docker run` reports it.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit code for a command that exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code for a command that does not exist.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A process that could not be started: its exit code and the message for its stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// Exit code reported for the process.
    pub code: i32,
    /// Why it could not start, without a trailing newline.
    pub message: String,
}

impl StartError {
    pub fn setup(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_SETUP_FAILED,
            message: message.into(),
        }
    }
}

/// Finds the executable that `program` names: the path itself when it contains a `/`,
/// otherwise the first executable regular file of that name in `path_var`.
///
/// # Errors
/// Returns exit code 127 when nothing is found, and 126 when a path names a directory or a
/// file without execute permission.
pub fn lookup(sys: &dyn Syscall, program: &[u8], path_var: &[u8]) -> Result<PathBuf, StartError> {
    let shown = String::from_utf8_lossy(program);
    if program.is_empty() {
        return Err(StartError {
            code: EXIT_NOT_FOUND,
            message: "exec: \"\": executable file not found in $PATH".into(),
        });
    }

    if program.contains(&b'/') {
        let path = Path::new(OsStr::from_bytes(program));
        let (code, reason) = match sys.file_kind(path) {
            Some(FileKind::File { executable: true }) => return Ok(path.to_owned()),
            None => (EXIT_NOT_FOUND, "no such file or directory"),
            Some(FileKind::Directory) => (EXIT_NOT_EXECUTABLE, "is a directory"),
            Some(FileKind::File { executable: false }) => {
                (EXIT_NOT_EXECUTABLE, "permission denied")
            }
        };
        return Err(StartError {
            code,
            message: format!("exec: \"{shown}\": {reason}"),
        });
    }

    for dir in path_var.split(|byte| *byte == b':') {
        // An empty PATH entry means the working directory (POSIX).
        let dir = if dir.is_empty() { b".".as_slice() } else { dir };
        let candidate = Path::new(OsStr::from_bytes(dir)).join(OsStr::from_bytes(program));
        if sys.file_kind(&candidate) == Some(FileKind::File { executable: true }) {
            return Ok(candidate);
        }
    }
    Err(StartError {
        code: EXIT_NOT_FOUND,
        message: format!("exec: \"{shown}\": executable file not found in $PATH"),
    })
}

/// Maps an errno of execve(2) to the exit code Docker reports for it.
pub fn exec_error(program: &[u8], err: &std::io::Error) -> StartError {
    let code = match err.raw_os_error() {
        Some(libc::ENOENT) => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    };
    StartError {
        code,
        message: format!("exec: \"{}\": {err}", String::from_utf8_lossy(program)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Recorder;

    fn sys() -> Recorder {
        Recorder::default()
            .with_file("/bin/sh", FileKind::File { executable: true })
            .with_file("/usr/bin/data", FileKind::File { executable: false })
            .with_file("/bin/data", FileKind::File { executable: true })
            .with_file("/usr/bin/only-data", FileKind::File { executable: false })
            .with_file("/bin", FileKind::Directory)
            .with_file("./local", FileKind::File { executable: true })
    }

    #[test]
    fn lookup_table() {
        let sys = sys();
        let path = b"/usr/bin:/bin";
        type Case<'a> = (&'a [u8], &'a [u8], Result<&'a str, i32>);
        let cases: [Case; 9] = [
            (b"sh", path, Ok("/bin/sh")),
            (b"/bin/sh", path, Ok("/bin/sh")),
            (b"data", path, Ok("/bin/data")),
            (b"only-data", path, Err(EXIT_NOT_FOUND)),
            (b"missing", path, Err(EXIT_NOT_FOUND)),
            (b"/missing", path, Err(EXIT_NOT_FOUND)),
            (b"/bin", path, Err(EXIT_NOT_EXECUTABLE)),
            (b"/usr/bin/data", path, Err(EXIT_NOT_EXECUTABLE)),
            (b"local", b"/usr/bin::/bin", Ok("./local")),
        ];
        for (i, (program, path_var, expected)) in cases.into_iter().enumerate() {
            let result = lookup(&sys, program, path_var)
                .map_err(|err| err.code)
                .map(|found| found.display().to_string());
            assert_eq!(result, expected.map(str::to_owned), "case {i}");
        }
    }

    #[test]
    fn lookup_messages_name_the_program() {
        let err = lookup(&sys(), b"nope", b"/bin").unwrap_err();
        assert_eq!(
            err.message,
            "exec: \"nope\": executable file not found in $PATH"
        );
        let err = lookup(&sys(), b"/usr/bin/data", b"").unwrap_err();
        assert_eq!(err.message, "exec: \"/usr/bin/data\": permission denied");
    }

    #[test]
    fn exec_error_maps_errno() {
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        let enoexec = std::io::Error::from_raw_os_error(libc::ENOEXEC);
        assert_eq!(exec_error(b"x", &enoent).code, EXIT_NOT_FOUND);
        assert_eq!(exec_error(b"x", &enoexec).code, EXIT_NOT_EXECUTABLE);
    }
}
