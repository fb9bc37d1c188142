//! docker/config.json accepted by a real client (skopeo) against a real
//! Docker registry with htpasswd auth.

mod common;

use common::*;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const USER: &str = "builder";
const PASSWORD: &str = "registry-pass-4b3c2d";

struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_registry() -> Registry {
    for program in ["docker-registry", "htpasswd", "skopeo", "umoci"] {
        require_program(program);
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = run(
        "htpasswd",
        &["-Bbc", &htpasswd.to_string_lossy(), USER, PASSWORD],
    );
    assert!(out.status.success(), "htpasswd: {}", stderr(&out));
    let port = free_port();
    let config = dir.path().join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}, secret: x}}\nauth: {{htpasswd: {{realm: basic-realm, path: {}}}}}\n",
            dir.path().join("data").display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("docker-registry");
    wait_for("docker-registry to listen", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Registry {
        child,
        port,
        _dir: dir,
    }
}

fn mount_with_password(registry: &Registry, password: &str) -> Daemon {
    let mut daemon = Daemon::prepare(&format!(
        "[registries.local]\nprovider = \"static\"\nregistry = \"127.0.0.1:{}\"\nusername = \"{USER}\"\npassword = \"{password}\"\n",
        registry.port
    ));
    daemon.secret(password);
    daemon.spawn();
    daemon
}

fn build_image(dir: &Path) -> String {
    let layout = dir.join("oci");
    let layout_s = layout.to_string_lossy().to_string();
    let out = run("umoci", &["init", "--layout", &layout_s]);
    assert!(out.status.success(), "umoci init: {}", stderr(&out));
    let out = run("umoci", &["new", "--image", &format!("{layout_s}:latest")]);
    assert!(out.status.success(), "umoci new: {}", stderr(&out));
    format!("oci:{layout_s}:latest")
}

/// `skopeo copy` of a fresh image to the registry with the mount's
/// docker/config.json: (output, authfile, destination).
fn push_through_mount(
    registry: &Registry,
    daemon: &Daemon,
    repo: &str,
) -> (std::process::Output, String, String) {
    let authfile = daemon
        .path("docker/config.json")
        .to_string_lossy()
        .to_string();
    let image = build_image(daemon.dir.path());
    let destination = format!("docker://127.0.0.1:{}/test/{repo}:latest", registry.port);
    let out = run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--authfile",
            &authfile,
            &image,
            &destination,
        ],
    );
    (out, authfile, destination)
}

#[test]
fn skopeo_pushes_and_inspects_with_the_mounted_authfile() {
    let registry = start_registry();
    let daemon = mount_with_password(&registry, PASSWORD);
    let (out, authfile, destination) = push_through_mount(&registry, &daemon, "hello");
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    let out = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            &authfile,
            &destination,
        ],
    );
    assert!(out.status.success(), "skopeo inspect: {}", stderr(&out));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        inspected["Name"].as_str().unwrap().ends_with("/test/hello"),
        "{inspected}"
    );
    // The same credential works from the separate files, as `docker login` would take it.
    let user = fs::read_to_string(daemon.path("registries/local/username")).unwrap();
    let pass = fs::read_to_string(daemon.path("registries/local/password")).unwrap();
    let creds = format!("{user}:{pass}");
    let out = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &creds,
            &destination,
        ],
    );
    assert!(out.status.success(), "skopeo --creds: {}", stderr(&out));
}

#[test]
fn a_wrong_credential_is_unauthorized() {
    let registry = start_registry();
    let daemon = mount_with_password(&registry, "wrong-pass-1a1a1a");
    let (out, _, _) = push_through_mount(&registry, &daemon, "denied");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
}
