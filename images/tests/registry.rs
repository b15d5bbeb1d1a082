//! Pulls from Debian's docker-registry on 127.0.0.1, with images pushed by skopeo from OCI
//! layouts that the tests write.

mod common;

use std::fs;

use common::proxy::{FaultProxy, Tokens};
use common::{
    assert_fsck_clean, debugfs, layer, open_images, store_is_empty, write_layout, Compress, Entry,
    Registry,
};
use images::registry::{self, Options, Silent};
use images::{Digest, Images, Reference};

fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut entries = vec![Entry::dir("bin"), Entry::symlink("bin/sh", "busybox")];
    let mut file = Entry::file("bin/busybox", "").mode(0o755);
    file.data = busybox;
    entries.push(file);
    layer(&entries)
}

#[test]
fn pull_busybox_image_and_reuse_disk() {
    let registry = Registry::start("");
    let layout = tempfile::tempdir().unwrap();
    let extra = layer(&[
        Entry::dir("etc"),
        Entry::file("etc/motd", "hello").owner(100_000, 100_000),
        Entry::whiteout("bin", "nothing"),
    ]);
    let written = write_layout(
        layout.path(),
        "v1",
        &[
            (busybox_layer(), Compress::Gzip),
            (extra, Compress::Zstd),
            (layer(&[]), Compress::None),
        ],
    );
    registry.push_layout(layout.path(), "v1", "tools/busybox:v1");

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/tools/busybox:v1", registry.host())
        .parse()
        .unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    assert_eq!(record.id, written.config);
    assert_eq!(record.manifest, written.manifest);
    assert_eq!(record.tags, vec![reference.to_string()]);
    assert_eq!(
        record.repo_digests,
        vec![format!("{}@{}", reference.name(), written.manifest)]
    );
    for layer in &written.layers {
        assert!(images.store().has_blob(layer), "layer {layer} not stored");
    }

    let image = images.get(&reference.to_string()).unwrap();
    let disk = images.disk(&image).unwrap();
    assert_fsck_clean(&disk);
    assert!(debugfs(&disk, "stat /bin/busybox").contains("Mode:  0755"));
    assert!(debugfs(&disk, "stat /etc/motd").contains("User: 100000"));
    let config = images.runtime_config(&reference.to_string()).unwrap();
    assert_eq!(
        config.cmd,
        Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
    );
    assert_eq!(
        config.env,
        vec!["PATH=/usr/bin:/bin".to_string(), "FOO=bar".to_string()]
    );
    assert_eq!(config.working_dir.as_deref(), Some("/work"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.exposed_ports, vec!["8080/tcp".to_string()]);

    // A second pull reuses blobs and the cached disk.
    let modified = fs::metadata(&disk).unwrap().modified().unwrap();
    let again = images.pull(&reference, &Silent).unwrap();
    assert_eq!(again.id, record.id);
    assert_eq!(
        fs::metadata(&disk).unwrap().modified().unwrap(),
        modified,
        "the disk was rebuilt"
    );
    assert_eq!(images.list().unwrap().len(), 1);

    // Pull by digest finds the same image.
    let by_digest: Reference = format!("{}/tools/busybox@{}", registry.host(), written.manifest)
        .parse()
        .unwrap();
    assert_eq!(images.pull(&by_digest, &Silent).unwrap().id, record.id);

    // rmi removes the image, its blobs and its disk.
    images.remove(&reference.to_string()).unwrap();
    assert!(images.list().unwrap().is_empty());
    assert!(store_is_empty(state.path()), "rmi left files behind");
}

#[test]
fn manifest_list_resolves_platform() {
    let registry = Registry::start("");
    let layout = tempfile::tempdir().unwrap();
    let amd64 = write_layout(
        layout.path(),
        "amd64",
        &[(layer(&[Entry::file("arch", "amd64")]), Compress::Gzip)],
    );
    let arm64 = write_layout(
        layout.path(),
        "arm64",
        &[(layer(&[Entry::file("arch", "arm64")]), Compress::Gzip)],
    );
    let size = |d: &Digest| {
        fs::metadata(common::layout_blob(layout.path(), d))
            .unwrap()
            .len()
    };
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": manifest_type, "digest": arm64.manifest, "size": size(&arm64.manifest), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": manifest_type, "digest": amd64.manifest, "size": size(&amd64.manifest), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": manifest_type, "digest": arm64.manifest, "size": size(&arm64.manifest), "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ],
    });
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_digest = Digest::of(&nested_bytes);
    fs::write(
        common::layout_blob(layout.path(), &nested_digest),
        &nested_bytes,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested_digest, "size": nested_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let output = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("oci:{}:multi", layout.path().display()))
        .arg(format!("docker://{}/multi:latest", registry.host()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/multi", registry.host()).parse().unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    assert_eq!(record.id, amd64.config);
    assert_eq!(
        record.repo_digests,
        vec![format!("{}@{}", reference.name(), nested_digest)]
    );
    let disk = images
        .disk(&images.get(&record.id.to_string()).unwrap())
        .unwrap();
    assert_eq!(debugfs(&disk, "cat /arch"), "amd64");

    let s390x = Images::open(
        state.path(),
        Options {
            auth_file: None,
            platform: "linux/s390x".parse().unwrap(),
            ..Options::default()
        },
    )
    .unwrap();
    let error = s390x.pull(&reference, &Silent).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("linux/arm64/v8") && message.contains("linux/amd64"),
        "{message}"
    );
    assert!(
        !message.contains("unknown"),
        "attestations listed: {message}"
    );
}

#[test]
fn tampered_blob_fails_and_leaves_nothing() {
    let registry = Registry::start("");
    let layout = tempfile::tempdir().unwrap();
    let written = write_layout(
        layout.path(),
        "v1",
        &[(layer(&[Entry::file("f", "original")]), Compress::Gzip)],
    );
    registry.push_layout(layout.path(), "v1", "tamper:v1");

    // Overwrite the layer's data in the registry's storage with other bytes of the same size.
    let hex = written.layers[0].hex();
    let data = registry.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, bytes).unwrap();

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/tamper:v1", registry.host()).parse().unwrap();
    let error = images.pull(&reference, &Silent).unwrap_err();
    let chain = format!("{:?}", error);
    assert!(chain.contains("DigestMismatch"), "{chain}");
    assert!(images.list().unwrap().is_empty());
    assert!(
        store_is_empty(state.path()),
        "a failed pull left files behind"
    );
}

#[test]
fn wrong_diff_id_fails_and_leaves_nothing() {
    let registry = Registry::start("");
    let layout = tempfile::tempdir().unwrap();
    let tar = layer(&[Entry::file("f", "x")]);
    // The config claims another diff id than the layer has.
    let written = write_layout(layout.path(), "v1", &[(tar, Compress::Gzip)]);
    let config_path = common::layout_blob(layout.path(), &written.config);
    let config = fs::read_to_string(&config_path)
        .unwrap()
        .replace(&written.diff_ids[0].hex(), &Digest::of(b"wrong").hex());
    let config_digest = Digest::of(config.as_bytes());
    fs::write(common::layout_blob(layout.path(), &config_digest), &config).unwrap();
    let manifest_path = common::layout_blob(layout.path(), &written.manifest);
    let manifest = fs::read_to_string(&manifest_path)
        .unwrap()
        .replace(&written.config.hex(), &config_digest.hex());
    let manifest_digest = Digest::of(manifest.as_bytes());
    fs::write(
        common::layout_blob(layout.path(), &manifest_digest),
        &manifest,
    )
    .unwrap();
    let index = fs::read_to_string(layout.path().join("index.json"))
        .unwrap()
        .replace(&written.manifest.hex(), &manifest_digest.hex());
    fs::write(layout.path().join("index.json"), index).unwrap();
    registry.push_layout(layout.path(), "v1", "diffid:v1");

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/diffid:v1", registry.host()).parse().unwrap();
    let error = images.pull(&reference, &Silent).unwrap_err();
    assert!(format!("{error:?}").contains("DiffIdMismatch"), "{error:?}");
    assert!(
        store_is_empty(state.path()),
        "a failed pull left files behind"
    );
}

#[test]
fn pull_by_wrong_digest_is_rejected() {
    let registry = Registry::start("");
    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("{}/missing:v1", registry.host()).parse().unwrap();
    let error = images.pull(&reference, &Silent).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("not found (404)") && message.contains("missing:v1"),
        "{message}"
    );

    let unreachable: Reference = format!("127.0.0.1:{}/x:y", common::free_port())
        .parse()
        .unwrap();
    let message = images.pull(&unreachable, &Silent).unwrap_err().to_string();
    assert!(
        message.contains("connection to 127.0.0.1") && message.contains("/x:y"),
        "{message}"
    );
}

/// Starts a proxy in front of `registry` whose `/token` endpoint issues long-lived tokens in
/// the `access_token` field, optionally only for Basic `credentials`.
fn token_proxy(registry: &Registry, credentials: Option<&'static str>) -> FaultProxy {
    let proxy = FaultProxy::start(registry.port);
    proxy.require_tokens(Tokens {
        expires_in: 300,
        max_uses: None,
        credentials,
    });
    proxy
}

#[test]
fn bearer_token_from_access_token_field() {
    let registry = Registry::start("");
    let layout = tempfile::tempdir().unwrap();
    let written = write_layout(
        layout.path(),
        "v1",
        &[(layer(&[Entry::file("f", "tokened")]), Compress::Gzip)],
    );
    registry.push_layout(layout.path(), "v1", "private/app:v1");
    let proxy = token_proxy(&registry, None);

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let reference: Reference = format!("127.0.0.1:{}/private/app:v1", proxy.port)
        .parse()
        .unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    assert_eq!(record.id, written.config);
    // One token, scoped to the repository, serves the whole pull.
    let requests = proxy.token_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].contains("scope=repository%3Aprivate%2Fapp%3Apull"),
        "{requests:?}"
    );
    assert!(
        requests[0].contains("service=test-registry"),
        "{requests:?}"
    );
}

#[test]
fn login_stores_checked_credentials() {
    let registry = Registry::start("");
    let proxy = token_proxy(&registry, Some("alice:secret"));
    let home = tempfile::tempdir().unwrap();
    let auth_file = home.path().join(".docker/config.json");
    let options = Options {
        auth_file: Some(auth_file.clone()),
        ..Options::default()
    };
    let host = format!("127.0.0.1:{}", proxy.port);

    let error = registry::login(&options, &host, "alice", "wrong").unwrap_err();
    assert!(
        matches!(error, registry::Error::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(!auth_file.exists());

    registry::login(&options, &host, "alice", "secret").unwrap();
    let stored = registry::AuthFile::new(&auth_file).get(&host).unwrap();
    assert_eq!(stored, Some(("alice".to_string(), "secret".to_string())));

    // The stored credentials authenticate a pull through the token endpoint.
    let layout = tempfile::tempdir().unwrap();
    write_layout(
        layout.path(),
        "v1",
        &[(layer(&[Entry::file("f", "x")]), Compress::Gzip)],
    );
    registry.push_layout(layout.path(), "v1", "secure/app:v1");
    let state = tempfile::tempdir().unwrap();
    let images = Images::open(state.path(), options.clone()).unwrap();
    images
        .pull(&format!("{host}/secure/app:v1").parse().unwrap(), &Silent)
        .unwrap();

    assert!(registry::logout(&options, &host).unwrap());
    assert_eq!(
        registry::AuthFile::new(&auth_file).get(&host).unwrap(),
        None
    );
}

#[test]
fn concurrent_pulls_of_one_image() {
    let registry = Registry::start("");
    let layout = tempfile::tempdir().unwrap();
    let written = write_layout(
        layout.path(),
        "v1",
        &[
            (busybox_layer(), Compress::Gzip),
            (layer(&[Entry::file("x", "y")]), Compress::Gzip),
        ],
    );
    registry.push_layout(layout.path(), "v1", "shared:v1");
    let reference: Reference = format!("{}/shared:v1", registry.host()).parse().unwrap();

    let state = tempfile::tempdir().unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| open_images(state.path()).pull(&reference, &Silent).unwrap());
        }
    });

    let images = open_images(state.path());
    let list = images.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].tags, vec![reference.to_string()]);
    assert_eq!(list[0].repo_digests.len(), 1);
    // Two layers, config and manifest, once each; one disk; no ingest left.
    assert_eq!(
        fs::read_dir(state.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        4
    );
    assert_eq!(
        fs::read_dir(state.path().join("rootfs")).unwrap().count(),
        1
    );
    assert_eq!(fs::read_dir(state.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(list[0].id, written.config);
    assert_fsck_clean(
        &images
            .disk(&images.get(&reference.to_string()).unwrap())
            .unwrap(),
    );
}
