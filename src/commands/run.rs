//! `bulkhead run [OPTIONS] IMAGE [CMD [ARG...]]`: creates a container from an image and runs it
//! in its own microVM, in the foreground or detached (`-d`).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{open_images, Global, RegistryArgs};
use crate::container::state::now;
use crate::container::{self, Container, ContainerConfig, ContainerState, Status};
use crate::runtime::ports;
use crate::runtime::supervisor::{self, Attach};

/// Default vCPU count of a container.
const DEFAULT_CPUS: &str = "1";
/// Default guest memory: enough for the guest kernel, the agent and a small Python service.
const DEFAULT_MEMORY: &str = "256m";
/// Smallest accepted guest memory in MiB; the kernel and agent need about this much.
const MIN_MEMORY_MIB: u64 = 64;

/// Arguments of `run`.
#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    pub detach: bool,

    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,

    /// Keep stdin attached and pass it to the process.
    #[arg(short, long)]
    pub interactive: bool,

    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,

    /// Container name; by default the short id.
    #[arg(long)]
    pub name: Option<String>,

    /// Set an environment variable, KEY=VALUE, or KEY to copy it from this environment.
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,

    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,

    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// User inside the container: name, uid, name:group or uid:gid.
    #[arg(short, long)]
    pub user: Option<String>,

    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,

    /// Publish a container port: [IP:]HOSTPORT:CONTAINERPORT[/tcp].
    #[arg(short, long = "publish", value_name = "[IP:]HOSTPORT:CONTAINERPORT")]
    pub publish: Vec<String>,

    /// Number of vCPUs (a fraction is rounded up), 1 to 32.
    #[arg(long, default_value = DEFAULT_CPUS)]
    pub cpus: String,

    /// Guest memory, a number of bytes with an optional b, k, m or g suffix.
    #[arg(short, long, default_value = DEFAULT_MEMORY)]
    pub memory: String,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Image reference.
    pub image: String,

    /// Command and arguments, replacing the image's Cmd.
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let container = create(global, &args)?;

    if args.detach {
        return match start_detached(global, &container)? {
            DetachedStart::Started => {
                println!("{}", container.id);
                Ok(ExitCode::SUCCESS)
            }
            DetachedStart::Failed { code, message } => {
                eprintln!("bulkhead: {message}");
                Ok(ExitCode::from(code))
            }
        };
    }

    let code = supervisor::run(&container, Attach::Foreground)?;
    Ok(ExitCode::from(
        u8::try_from(code).unwrap_or(supervisor::EXIT_BULKHEAD_FAILED as u8),
    ))
}

/// Resolves the image (pulling it when missing), builds the container's config and writes it.
fn create(global: &Global, args: &Args) -> Result<Container> {
    let cpus = parse_cpus(&args.cpus)?;
    let memory_mib = parse_memory(&args.memory)?;
    let ports = args
        .publish
        .iter()
        .map(|spec| ports::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    if args.tty && args.detach && args.interactive {
        bail!("-d with -i and -t needs `attach`, which bulkhead does not have yet; drop -i or -d");
    }
    if let Some(name) = &args.name {
        validate_name(name)?;
        if container::find(&global.root, name).is_ok() {
            bail!("the container name {name:?} is already in use; remove that container or pick another name");
        }
    }

    // A host that cannot run the VM fails before anything is pulled or created.
    vmm::host::open_kvm().context("cannot run microVMs on this host")?;

    let images = open_images(global, &args.registry)?;
    let image = match images.get(&args.image) {
        Ok(image) => image,
        Err(::images::Error::Store(::images::store::Error::ImageNotFound(_))) => {
            eprintln!("Unable to find image '{}' locally", args.image);
            let reference: ::images::Reference = args.image.parse()?;
            let progress = ::images::registry::progress::for_stderr();
            images
                .pull(&reference, &*progress)
                .with_context(|| format!("failed to pull {reference}"))?;
            images.get(&args.image)?
        }
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read image {}", args.image))
        }
    };
    let defaults = ::images::summarize(&image.config);
    let disk = images
        .disk(&image)
        .context("failed to build the image's root disk")?;

    let argv = combine_command(
        defaults.entrypoint.clone(),
        defaults.cmd.clone(),
        args.entrypoint.as_deref(),
        &args.command,
    );
    if argv.is_empty() {
        bail!("no command specified: the image {} has no Entrypoint or Cmd; give one after the image name", args.image);
    }
    let env = merge_env(&defaults.env, &args.env_files, &args.env, &|name| {
        std::env::var(name).ok()
    })?;
    let stop_signal = defaults
        .stop_signal
        .as_deref()
        .map(parse_signal)
        .transpose()?
        .unwrap_or(libc::SIGTERM);

    let container = Container::create(&global.root)?;
    let config = ContainerConfig {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| container.short_id().to_owned()),
        image: args.image.clone(),
        image_id: image.record.id.to_string(),
        image_disk: disk.display().to_string(),
        argv,
        env,
        working_dir: args
            .workdir
            .clone()
            .or(defaults.working_dir)
            .unwrap_or_default(),
        user: args.user.clone().or(defaults.user).unwrap_or_default(),
        tty: args.tty,
        interactive: args.interactive,
        ports,
        cpus,
        memory_mib,
        auto_remove: args.rm,
        stop_signal,
        created: now(),
    };
    container.write_state(&ContainerState::default())?;
    container.write_config(&config)?;
    Ok(container)
}

/// Starts the supervisor as a detached process and waits until the process runs or fails.
/// How the start of a detached container ended.
enum DetachedStart {
    /// The process started; it may even have finished already.
    Started,
    /// The process never started: Docker's status (126, 127, else 125) and the reason.
    Failed { code: u8, message: String },
}

fn start_detached(global: &Global, container: &Container) -> Result<DetachedStart> {
    let exe = std::env::current_exe().context("cannot find the bulkhead executable")?;
    let log = std::fs::File::create(container.dir.join("supervisor.log"))?;
    let mut command = Command::new(exe);
    command
        .arg("--root")
        .arg(&global.root)
        .arg("supervise")
        .arg(&container.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and only detaches the child from our session.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .context("failed to start the container supervisor")?;

    loop {
        if !container.dir.exists() {
            let _ = child.wait();
            bail!("the container exited during start and --rm removed it; run it without -d to see its output");
        }
        let state = container.state()?;
        match state.status {
            // A quick process can run and exit before this loop looks: it still started.
            Status::Exited if state.started.is_some() && state.error.is_none() => {
                let _ = child.wait();
                return Ok(DetachedStart::Started);
            }
            Status::Exited => {
                let _ = child.wait();
                let code = match state.exit_code {
                    Some(code @ (126 | 127)) => code as u8,
                    _ => supervisor::EXIT_BULKHEAD_FAILED as u8,
                };
                let message = start_failure(container, &state).to_string();
                return Ok(DetachedStart::Failed { code, message });
            }
            Status::Running if state.started.is_some() => return Ok(DetachedStart::Started),
            _ => {}
        }
        if let Some(status) = child.try_wait()? {
            if container.state()?.status != Status::Exited {
                bail!(
                    "the container supervisor ended during start ({status}); see {}",
                    container.dir.join("supervisor.log").display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Explains a detached container that ended before its process started: the recorded error,
/// or the process's own stderr (the agent writes why a command is not found or not executable).
fn start_failure(container: &Container, state: &ContainerState) -> anyhow::Error {
    if let Some(error) = &state.error {
        return anyhow!(error.clone());
    }
    let mut stderr = Vec::new();
    if let Ok(file) = std::fs::File::open(container.output_log()) {
        let mut reader = container::log::Reader::new(file);
        while let Ok(Some((stream, data))) = reader.next_record() {
            if stream == container::log::STDERR {
                stderr.extend_from_slice(&data);
            }
        }
    }
    let code = state
        .exit_code
        .map_or("unknown".to_owned(), |c| c.to_string());
    let output = String::from_utf8_lossy(&stderr).trim().to_owned();
    if output.is_empty() {
        anyhow!(
            "the container {} exited with status {code} during start",
            container.short_id()
        )
    } else {
        anyhow!(
            "the container {} exited with status {code} during start: {output}",
            container.short_id()
        )
    }
}

/// Combines Entrypoint and Cmd as Docker does: `--entrypoint` replaces the image's entrypoint
/// and drops its Cmd; command-line arguments replace the Cmd.
fn combine_command(
    image_entrypoint: Option<Vec<String>>,
    image_cmd: Option<Vec<String>>,
    entrypoint: Option<&str>,
    command: &[String],
) -> Vec<String> {
    let (entrypoint, default_cmd) = match entrypoint {
        Some("") => (Vec::new(), Vec::new()),
        Some(entrypoint) => (vec![entrypoint.to_owned()], Vec::new()),
        None => (
            image_entrypoint.unwrap_or_default(),
            image_cmd.unwrap_or_default(),
        ),
    };
    let cmd = if command.is_empty() {
        default_cmd
    } else {
        command.to_vec()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Merges the image's Env, then `--env-file` lines, then `-e` values; later ones win per key.
/// A `KEY` without `=` takes its value from `lookup` (this process's environment).
///
/// When `lookup` has no value, Docker's two rules apply (docker/cli `opts.ValidateEnv` and
/// `opts.ParseEnvFile`, moby's `ReplaceOrAppendEnvValues`): a `-e KEY` removes KEY, so the
/// container has no KEY even when the image sets one, while an env-file line `KEY` is ignored.
fn merge_env(
    image_env: &[String],
    env_files: &[PathBuf],
    env_args: &[String],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let mut entries: Vec<String> = image_env.to_vec();
    let remove = |entries: &mut Vec<String>, key: &str| {
        entries.retain(|existing| existing.split('=').next() != Some(key));
    };
    let set = |entries: &mut Vec<String>, entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        remove(entries, &key);
        entries.push(entry);
    };

    for path in env_files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read env file {}", path.display()))?;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(entry) = env_entry(line, lookup) {
                set(&mut entries, entry);
            } else if line.starts_with('=') {
                bail!(
                    "invalid line {} in env file {}: {line:?} has no variable name",
                    index + 1,
                    path.display()
                );
            }
        }
    }
    for value in env_args {
        if value.starts_with('=') || value.is_empty() {
            bail!("invalid environment variable {value:?}: use KEY=VALUE or KEY");
        }
        match env_entry(value, lookup) {
            Some(entry) => set(&mut entries, entry),
            None => remove(&mut entries, value),
        }
    }
    Ok(entries)
}

/// `KEY=VALUE` as is; `KEY` alone takes its value from `lookup`, or is `None` without one.
fn env_entry(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if value.starts_with('=') {
        return None;
    }
    if value.contains('=') {
        return Some(value.to_owned());
    }
    lookup(value).map(|v| format!("{value}={v}"))
}

fn parse_cpus(value: &str) -> Result<u8> {
    let cpus: f64 = value
        .parse()
        .ok()
        .filter(|c: &f64| c.is_finite() && *c > 0.0)
        .ok_or_else(|| anyhow!("invalid --cpus {value:?}: use a positive number such as 1 or 2"))?;
    let rounded = cpus.ceil();
    if rounded > f64::from(vmm::arch::x86_64::mptable::MAX_CPUS) {
        bail!(
            "invalid --cpus {value}: a microVM has at most {} vCPUs",
            vmm::arch::x86_64::mptable::MAX_CPUS
        );
    }
    Ok(rounded as u8)
}

/// Parses Docker's memory syntax into MiB.
fn parse_memory(value: &str) -> Result<u64> {
    let invalid = || anyhow!("invalid --memory {value:?}: use a size such as 512m or 1g");
    let lower = value.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(index) => lower.split_at(index),
        None => (lower.as_str(), "b"),
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(invalid()),
    };
    let mib = number.checked_mul(multiplier).ok_or_else(invalid)? >> 20;
    if mib < MIN_MEMORY_MIB {
        bail!("invalid --memory {value}: a microVM needs at least {MIN_MEMORY_MIB}m");
    }
    Ok(mib)
}

/// Parses a signal name (`SIGTERM`, `TERM`) or number.
pub fn parse_signal(value: &str) -> Result<i32> {
    if let Ok(number) = value.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
    }
    let name = value.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let table = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("TERM", libc::SIGTERM),
        ("STOP", libc::SIGSTOP),
        ("CONT", libc::SIGCONT),
        ("WINCH", libc::SIGWINCH),
        ("ALRM", libc::SIGALRM),
        ("PIPE", libc::SIGPIPE),
    ];
    table
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, number)| *number)
        .ok_or_else(|| anyhow!("invalid signal {value:?}: use a name such as SIGTERM or a number"))
}

fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        bail!("invalid container name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_combine_like_docker() {
        let entrypoint = Some(strings(&["/entry"]));
        let cmd = Some(strings(&["default"]));
        let cases: [(Option<&str>, &[&str], &[&str]); 4] = [
            (None, &[], &["/entry", "default"]),
            (None, &["mine", "-x"], &["/entry", "mine", "-x"]),
            (Some("/other"), &[], &["/other"]),
            (Some("/other"), &["arg"], &["/other", "arg"]),
        ];
        for (index, (override_entrypoint, command, expected)) in cases.into_iter().enumerate() {
            let argv = combine_command(
                entrypoint.clone(),
                cmd.clone(),
                override_entrypoint,
                &strings(command),
            );
            assert_eq!(argv, strings(expected), "case {index}");
        }
        assert_eq!(
            combine_command(None, Some(strings(&["sh"])), None, &[]),
            strings(&["sh"])
        );
    }

    #[test]
    fn env_later_sources_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# comment\nB=from-file\nC=x=y\n\n").unwrap();

        let env = merge_env(
            &strings(&["A=image", "B=image"]),
            &[file],
            &strings(&["A=arg", "D=1=2"]),
            &|_| None,
        )
        .unwrap();

        assert_eq!(env, strings(&["B=from-file", "C=x=y", "A=arg", "D=1=2"]));
    }

    #[test]
    fn env_names_without_value_use_lookup() {
        let lookup = |name: &str| match name {
            "SET" => Some("from-cli".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        /// Image Env, env-file text, `-e` values and the merged result.
        type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a [&'a str]);
        let cases: [Case; 7] = [
            (&[], "", &["SET"], &["SET=from-cli"]),
            (&[], "", &["EMPTY"], &["EMPTY="]),
            (&[], "", &["UNSET"], &[]),
            (&["UNSET=image", "K=v"], "", &["UNSET"], &["K=v"]),
            (&["SET=image"], "SET\n", &[], &["SET=from-cli"]),
            (&["UNSET=image"], "UNSET\n", &[], &["UNSET=image"]),
            (&[], "UNSET=file\n", &["UNSET"], &[]),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, (image_env, file_text, env_args, expected)) in cases.into_iter().enumerate() {
            let file = dir.path().join(format!("env-{i}"));
            std::fs::write(&file, file_text).unwrap();
            let env = merge_env(&strings(image_env), &[file], &strings(env_args), &lookup);
            assert_eq!(env.unwrap(), strings(expected), "case {i}");
        }
    }

    #[test]
    fn env_rejects_missing_name() {
        let message = merge_env(&[], &[], &strings(&["=x"]), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"=x\""), "{message}");
    }

    #[test]
    fn memory_sizes_parse() {
        let cases = [
            ("256m", Some(256)),
            ("1g", Some(1024)),
            ("1G", Some(1024)),
            ("268435456", Some(256)),
            ("1024k", None),
            ("lots", None),
            ("16m", None),
            ("512mb", Some(512)),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_memory(value).ok(), expected, "value {value}");
        }
    }

    #[test]
    fn cpus_parse_and_round_up() {
        let cases = [
            ("1", Some(1)),
            ("1.5", Some(2)),
            ("32", Some(32)),
            ("0", None),
            ("33", None),
            ("-1", None),
            ("two", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_cpus(value).ok(), expected, "value {value}");
        }
    }

    #[test]
    fn signals_parse() {
        let cases = [
            ("SIGTERM", Some(15)),
            ("term", Some(15)),
            ("KILL", Some(9)),
            ("9", Some(9)),
            ("SIGNOPE", None),
            ("0", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_signal(value).ok(), expected, "value {value}");
        }
    }

    #[test]
    fn container_names_validate() {
        for name in ["web", "web-1", "a.b_c", "9lives"] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
        for name in ["", "-x", "has space", "slash/name"] {
            assert!(validate_name(name).is_err(), "{name}");
        }
    }
}
