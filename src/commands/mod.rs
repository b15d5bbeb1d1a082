//! One module per subcommand. Each has an `Args` struct for clap and a `run` function that
//! returns the process exit code.

mod control;
pub mod doctor;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod load;
pub mod login;
pub mod logout;
pub mod logs;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod stop;
pub mod supervise;
pub mod tag;

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Platform picked from multi-platform images unless `--platform` says otherwise.
const DEFAULT_PLATFORM: &str = "linux/amd64";

/// Options shared by every subcommand.
pub struct Global {
    /// State directory.
    pub root: PathBuf,
}

/// Registry options of the commands that talk to registries.
#[derive(clap::Args, Clone)]
pub struct RegistryArgs {
    /// Use plain HTTP for this registry (host[:port]); repeatable. Loopback registries
    /// always use plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// Platform to pick from multi-platform images, as os/arch[/variant].
    #[arg(long, default_value = DEFAULT_PLATFORM)]
    pub platform: String,
}

impl Default for RegistryArgs {
    fn default() -> Self {
        RegistryArgs {
            insecure_registries: Vec::new(),
            platform: DEFAULT_PLATFORM.to_string(),
        }
    }
}

impl RegistryArgs {
    /// Builds the registry options, adding the `insecure-registries` of `<root>/daemon.json`.
    pub fn options(&self, root: &Path) -> anyhow::Result<::images::registry::Options> {
        let mut options = ::images::registry::Options {
            insecure: self.insecure_registries.clone(),
            platform: self.platform.parse().map_err(anyhow::Error::msg)?,
            ..Default::default()
        };
        let config_path = root.join("daemon.json");
        match std::fs::read(&config_path) {
            Ok(bytes) => {
                let config: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("invalid JSON in {}", config_path.display()))?;
                if let Some(list) = config.get("insecure-registries").and_then(|v| v.as_array()) {
                    options
                        .insecure
                        .extend(list.iter().filter_map(|v| v.as_str()).map(String::from));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read {}", config_path.display()))
            }
        }
        Ok(options)
    }
}

/// Opens the image store of the state directory.
pub fn open_images(global: &Global, registry: &RegistryArgs) -> anyhow::Result<::images::Images> {
    let options = registry.options(&global.root)?;
    ::images::Images::open(&global.root, options).with_context(|| {
        format!(
            "failed to open the image store in {}",
            global.root.display()
        )
    })
}

/// Formats a byte count as Docker does (`1.23MB`, decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[unit]
    }
}
