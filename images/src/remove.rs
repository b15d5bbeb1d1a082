//! Removal of large directory trees, such as a staging tree of 100 000 files.
//!
//! Unlinking a file whose data blocks are allocated can wait on the filesystem for each file.
//! On the ext4 (mounted with `discard`) of the machine in docs/benchmarks.md, a serial `rm -rf`
//! of 10 000 one-byte files took 11 s, four parallel ones 1.9 s and sixteen 1.2 s. So one
//! thread walks the tree and eight threads, between those two counts, unlink its files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

/// Threads that unlink files. They mostly wait on the filesystem, not on a CPU.
const UNLINK_THREADS: usize = 8;
/// Paths queued between the walker and the unlinking threads, which bounds the memory used.
const QUEUE_LENGTH: usize = 4096;

/// Removes `root` and everything below it, without following symlinks. A missing `root` is
/// not an error. Directories are removed last, deepest first.
pub(crate) fn remove_tree(root: &Path) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return fs::remove_file(root),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }

    let (sender, receiver) = mpsc::sync_channel::<PathBuf>(QUEUE_LENGTH);
    let receiver = Mutex::new(receiver);
    let unlink_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let dirs = std::thread::scope(|scope| {
        for _ in 0..UNLINK_THREADS {
            scope.spawn(|| unlink_queued(&receiver, &unlink_error));
        }
        // Dropping the sender after the walk ends the unlinking threads.
        walk(root, sender)
    })?;
    if let Some(error) = unlink_error
        .into_inner()
        .expect("no unlinking thread panics")
    {
        return Err(error);
    }

    for dir in dirs.iter().rev() {
        fs::remove_dir(dir)?;
    }
    Ok(())
}

/// Sends every non-directory below `root` to `sender` and returns the directories, each after
/// its parent.
fn walk(root: &Path, sender: mpsc::SyncSender<PathBuf>) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            // The type comes from the directory entry (or lstat), so symlinks are not followed.
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else if sender.send(entry.path()).is_err() {
                break;
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Unlinks the paths from `receiver` until the sender is gone, keeping the first error.
fn unlink_queued(
    receiver: &Mutex<mpsc::Receiver<PathBuf>>,
    first_error: &Mutex<Option<io::Error>>,
) {
    loop {
        let next = receiver.lock().expect("no unlinking thread panics").recv();
        let Ok(path) = next else {
            return;
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error
                    .lock()
                    .expect("no unlinking thread panics")
                    .get_or_insert(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tree_spares_symlink_targets() {
        let work = tempfile::tempdir().unwrap();
        let outside = work.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("kept"), "x").unwrap();

        let root = work.path().join("root");
        for dir in ["a/b/c", "d"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for i in 0..50 {
            fs::write(root.join(format!("a/b/c/f{i}")), "x").unwrap();
            fs::write(root.join(format!("d/f{i}")), "x").unwrap();
        }
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();

        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(outside.join("kept").exists());
        remove_tree(&root).unwrap();
    }

    #[test]
    fn single_file_is_removed() {
        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("f");
        fs::write(&file, "x").unwrap();
        remove_tree(&file).unwrap();
        assert!(!file.exists());
    }
}
