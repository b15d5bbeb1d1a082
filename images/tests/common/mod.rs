//! Helpers for the image tests: hand-made layer tars, OCI layouts, debugfs queries and a
//! local docker-registry.
#![allow(dead_code)]

pub mod proxy;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images::digest::Digest;
use images::registry::Options;
use images::Images;
use tar::{EntryType, Header};

/// One hand-made tar entry.
#[derive(Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryType,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub device: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(name: &str, kind: EntryType, mode: u32) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            data: Vec::new(),
            link: Vec::new(),
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            device: (0, 0),
            xattrs: Vec::new(),
        }
    }

    pub fn file(name: &str, data: &str) -> Entry {
        Entry {
            data: data.as_bytes().to_vec(),
            ..Entry::new(name, EntryType::Regular, 0o644)
        }
    }

    pub fn dir(name: &str) -> Entry {
        Entry::new(name, EntryType::Directory, 0o755)
    }

    pub fn symlink(name: &str, target: &str) -> Entry {
        Entry {
            link: target.as_bytes().to_vec(),
            ..Entry::new(name, EntryType::Symlink, 0o777)
        }
    }

    pub fn hard_link(name: &str, target: &str) -> Entry {
        Entry {
            link: target.as_bytes().to_vec(),
            ..Entry::new(name, EntryType::Link, 0o644)
        }
    }

    pub fn whiteout(dir: &str, name: &str) -> Entry {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        Entry::file(&path, "")
    }

    pub fn opaque(dir: &str) -> Entry {
        Entry::file(&format!("{dir}/.wh..wh..opq"), "")
    }

    pub fn device(name: &str, kind: EntryType, major: u32, minor: u32, mode: u32) -> Entry {
        Entry {
            device: (major, minor),
            ..Entry::new(name, kind, mode)
        }
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

/// Builds an uncompressed layer tar from `entries`, in order and with names exactly as given
/// (including `..`), using PAX records for long names and xattrs.
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if entry.name.len() > 100 {
            pax.push(("path".into(), entry.name.clone()));
        }
        if entry.link.len() > 100 {
            pax.push(("linkpath".into(), entry.link.clone()));
        }
        for (name, value) in &entry.xattrs {
            pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        if !pax.is_empty() {
            builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }

        let mut header = Header::new_ustar();
        let name_len = entry.name.len().min(100);
        header.as_old_mut().name[..name_len].copy_from_slice(&entry.name[..name_len]);
        if !entry.link.is_empty() {
            let link_len = entry.link.len().min(100);
            header.as_old_mut().linkname[..link_len].copy_from_slice(&entry.link[..link_len]);
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(entry.mtime);
        header.set_size(entry.data.len() as u64);
        if matches!(entry.kind, EntryType::Char | EntryType::Block) {
            header.set_device_major(entry.device.0).unwrap();
            header.set_device_minor(entry.device.1).unwrap();
        }
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Compression for a layer blob.
#[derive(Clone, Copy, Debug)]
pub enum Compress {
    None,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], how: Compress) -> Vec<u8> {
    match how {
        Compress::None => tar.to_vec(),
        Compress::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(tar).unwrap();
            encoder.finish().unwrap()
        }
        Compress::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn media_type(how: Compress) -> &'static str {
    match how {
        Compress::None => "application/vnd.oci.image.layer.v1.tar",
        Compress::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compress::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// What an OCI layout written by [`write_layout`] contains.
pub struct Layout {
    pub manifest: Digest,
    pub config: Digest,
    pub diff_ids: Vec<Digest>,
    pub layers: Vec<Digest>,
}

/// Writes an OCI image layout at `dir` with one image of `layers` (tar bytes and compression),
/// tagged `ref_name`, with a config that has `Cmd`, `Env` and `ExposedPorts`.
pub fn write_layout(dir: &Path, ref_name: &str, layers: &[(Vec<u8>, Compress)]) -> Layout {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        digest
    };

    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for (tar, how) in layers {
        let blob = compress(tar, *how);
        let digest = put(&blob);
        diff_ids.push(Digest::of(tar));
        layer_digests.push(digest);
        descriptors.push(serde_json::json!({"mediaType": media_type(*how), "digest": digest, "size": blob.len()}));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {
            "Cmd": ["/bin/sh", "-c", "echo hi"],
            "Env": ["PATH=/usr/bin:/bin", "FOO=bar"],
            "WorkingDir": "/work",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put(&manifest_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Layout {
        manifest: manifest_digest,
        config: config_digest,
        diff_ids,
        layers: layer_digests,
    }
}

/// Runs a debugfs request against a disk and returns its stdout.
pub fn debugfs(disk: &Path, request: &str) -> String {
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "debugfs {request}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that `e2fsck -fn` finds no problem in the disk.
pub fn assert_fsck_clean(disk: &Path) {
    let output = Command::new("e2fsck")
        .arg("-fn")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "e2fsck -fn {}: {}{}",
        disk.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A docker-registry on 127.0.0.1 with storage in a temporary directory, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry, with `extra_config` appended to the YAML config, and waits until
    /// it accepts connections.
    pub fn start(extra_config: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra_config}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry runs (install the docker-registry package)");
        let registry = Registry { child, port, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not listen on port {} within 30 s",
            self.port
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the OCI layout at `dir` (its `ref_name` image) as `name` with skopeo.
    pub fn push_layout(&self, dir: &Path, ref_name: &str, name: &str) {
        let output = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(format!("oci:{}:{ref_name}", dir.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Returns the blob path of `digest` inside an OCI layout.
pub fn layout_blob(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// Opens an image store at `root` that reads no credentials file.
pub fn open_images(root: &Path) -> Images {
    Images::open(
        root,
        Options {
            auth_file: None,
            ..Options::default()
        },
    )
    .unwrap()
}

/// Returns whether the store at `root` has no blob, no disk and no ingest directory.
pub fn store_is_empty(root: &Path) -> bool {
    let count = |dir: &str| std::fs::read_dir(root.join(dir)).map_or(0, |d| d.count());
    count("blobs/sha256") == 0 && count("rootfs") == 0 && count("tmp") == 0
}
