//! Containers on disk: one directory per container under `<root>/containers/<id>/` holding
//! `config.json` (what to run, written once), `state.json` (where it is in its lifecycle,
//! replaced atomically), the writable disk `upper.ext4`, `console.log`, `vmm.log` and the
//! framed output log `container.log`. Sockets live under `/run/bulkhead/<short id>/`, because
//! Unix socket paths are limited to 107 bytes.

pub mod log;
pub mod state;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use state::{ContainerConfig, ContainerState, PortMapping, Status};

/// Length of the short id that `ps` shows and that names the socket directory.
pub const SHORT_ID_LEN: usize = 12;
/// Directory for the sockets of running containers.
const RUN_DIR: &str = "/run/bulkhead";

/// The files of one container.
#[derive(Debug, Clone)]
pub struct Container {
    /// Full 64-hex-digit id.
    pub id: String,
    /// State directory.
    pub dir: PathBuf,
    /// Directory of the container's sockets.
    pub run_dir: PathBuf,
}

impl Container {
    fn at(root: &Path, id: &str) -> Self {
        Self {
            id: id.to_owned(),
            dir: containers_dir(root).join(id),
            run_dir: Path::new(RUN_DIR).join(&id[..SHORT_ID_LEN]),
        }
    }

    /// Creates the directories of a new container with a fresh random id.
    pub fn create(root: &Path) -> Result<Self> {
        let id = random_id().context("failed to generate a container id")?;
        let container = Self::at(root, &id);
        fs::create_dir_all(containers_dir(root))
            .with_context(|| format!("failed to create {}", containers_dir(root).display()))?;
        fs::create_dir(&container.dir)
            .with_context(|| format!("failed to create {}", container.dir.display()))?;
        fs::create_dir_all(&container.run_dir)
            .with_context(|| format!("failed to create {}", container.run_dir.display()))?;
        Ok(container)
    }

    /// The short id shown to users.
    pub fn short_id(&self) -> &str {
        &self.id[..SHORT_ID_LEN]
    }

    /// The hybrid vsock socket of the container's VM.
    pub fn vsock_path(&self) -> PathBuf {
        self.run_dir.join("vsock.sock")
    }

    /// The supervisor's control socket, for `stop`, `kill` and `rm -f`.
    pub fn control_path(&self) -> PathBuf {
        self.run_dir.join("supervisor.sock")
    }

    /// The container's writable disk.
    pub fn upper_disk(&self) -> PathBuf {
        self.dir.join("upper.ext4")
    }

    /// The guest's serial console output.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The VMM's own messages.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    /// The container's stdout and stderr, framed by [`log`].
    pub fn output_log(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// Reads `config.json`.
    pub fn config(&self) -> Result<ContainerConfig> {
        read_json(&self.dir.join("config.json"))
    }

    /// Writes `config.json` atomically.
    pub fn write_config(&self, config: &ContainerConfig) -> Result<()> {
        write_json_atomic(&self.dir.join("config.json"), config)
    }

    /// Reads `state.json`.
    pub fn state(&self) -> Result<ContainerState> {
        read_json(&self.dir.join("state.json"))
    }

    /// Writes `state.json` atomically, under the container's lock.
    pub fn write_state(&self, state: &ContainerState) -> Result<()> {
        let _lock = self.lock()?;
        write_json_atomic(&self.dir.join("state.json"), state)
    }

    /// Updates `state.json` under the container's lock.
    pub fn update_state(&self, change: impl FnOnce(&mut ContainerState)) -> Result<ContainerState> {
        let _lock = self.lock()?;
        let mut state = self.state()?;
        change(&mut state);
        write_json_atomic(&self.dir.join("state.json"), &state)?;
        Ok(state)
    }

    /// Takes the container's exclusive lock until the returned file is dropped.
    pub fn lock(&self) -> Result<File> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("failed to lock {}", path.display()));
        }
        Ok(file)
    }

    /// Removes every file and socket of the container.
    pub fn remove_files(&self) -> Result<()> {
        remove_dir_if_exists(&self.run_dir)?;
        remove_dir_if_exists(&self.dir)
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to remove {}", dir.display())),
    }
}

fn containers_dir(root: &Path) -> PathBuf {
    root.join("containers")
}

/// Lists every container, oldest first.
pub fn list(root: &Path) -> Result<Vec<(Container, ContainerConfig)>> {
    let dir = containers_dir(root);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to list {}", dir.display())),
    };
    let mut containers = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_container_id(&id) {
            continue;
        }
        let container = Container::at(root, &id);
        // A directory without config.json is a container whose creation was interrupted.
        if let Ok(config) = container.config() {
            containers.push((container, config));
        }
    }
    containers.sort_by_key(|(_, config)| config.created);
    Ok(containers)
}

/// Finds a container by name, full id or unique id prefix.
pub fn find(root: &Path, name_or_id: &str) -> Result<Container> {
    let containers = list(root)?;
    if let Some((container, _)) = containers
        .iter()
        .find(|(_, config)| config.name == name_or_id)
    {
        return Ok(container.clone());
    }
    let matches: Vec<&Container> = containers
        .iter()
        .map(|(container, _)| container)
        .filter(|container| !name_or_id.is_empty() && container.id.starts_with(name_or_id))
        .collect();
    match matches.as_slice() {
        [container] => Ok((*container).clone()),
        [] => bail!("no such container: {name_or_id}"),
        _ => bail!("container id prefix {name_or_id} is ambiguous; give more characters"),
    }
}

fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Returns `count` random bytes from the kernel.
pub fn random_bytes(count: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; count];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display()))
}

/// Writes `value` as JSON to a temporary file, syncs it and renames it over `path`, so readers
/// see either the old or the new content.
fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let temporary = path.with_extension("json.tmp");
    let write = || -> io::Result<()> {
        let mut file = File::create(&temporary)?;
        serde_json::to_writer_pretty(&mut file, value)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_64_hex() {
        let id = random_id().unwrap();
        assert!(is_container_id(&id), "{id}");
        assert!(!is_container_id("upper.ext4"));
        assert!(!is_container_id(&id[..63]));
    }

    #[test]
    fn find_by_name_and_prefix() {
        let root = tempfile::tempdir().unwrap();
        let mut made = Vec::new();
        for name in ["web", "db"] {
            let container = Container::create(root.path()).unwrap();
            let config = ContainerConfig {
                name: name.into(),
                ..ContainerConfig::default()
            };
            container.write_config(&config).unwrap();
            made.push(container);
        }

        assert_eq!(find(root.path(), "db").unwrap().id, made[1].id);
        assert_eq!(find(root.path(), &made[0].id[..10]).unwrap().id, made[0].id);
        assert!(find(root.path(), "nope").is_err());
        for container in made {
            container.remove_files().unwrap();
        }
    }
}
