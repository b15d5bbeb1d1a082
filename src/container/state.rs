//! What a container runs (`config.json`) and where it is in its lifecycle (`state.json`).

use serde::{Deserialize, Serialize};

/// A published port: host address and port to guest TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to listen on; `0.0.0.0` for all.
    pub host_ip: String,
    /// Host TCP port.
    pub host_port: u16,
    /// Guest TCP port.
    pub container_port: u16,
}

/// Container settings, fixed when it is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Name, unique among containers.
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    /// The image's id (config digest).
    pub image_id: String,
    /// The image's ext4 root disk.
    pub image_disk: String,
    /// Program and arguments, after Entrypoint and Cmd are combined.
    pub argv: Vec<String>,
    /// Environment, `NAME=value`.
    pub env: Vec<String>,
    /// Working directory in the guest.
    pub working_dir: String,
    /// User in the guest.
    pub user: String,
    /// Whether the process gets a terminal.
    pub tty: bool,
    /// Whether stdin is attached.
    pub interactive: bool,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Signal that `stop` sends first.
    pub stop_signal: i32,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// Lifecycle of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, not started yet.
    #[default]
    Created,
    /// The VM is starting or the process runs.
    Running,
    /// The process or the VM ended.
    Exited,
}

/// Container lifecycle state, updated by its supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Current status.
    pub status: Status,
    /// Process id of the supervisor on the host.
    pub supervisor_pid: Option<u32>,
    /// Process id of bulkhead-vmm on the host.
    pub vmm_pid: Option<u32>,
    /// Start time, seconds since the Unix epoch.
    pub started: Option<u64>,
    /// End time, seconds since the Unix epoch.
    pub finished: Option<u64>,
    /// Exit code as Docker reports it.
    pub exit_code: Option<i32>,
    /// Why the container ended abnormally (VM failure, guest panic, start error).
    pub error: Option<String>,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
