//! docker/config.json accepted by a real client (skopeo) against a real
//! Docker registry with htpasswd auth.

mod common;

use common::servers::Registry;
use common::*;
use std::fs;

const USER: &str = "builder";
const PASSWORD: &str = "registry-pass-4b3c2d";

fn mount_with_password(registry: &Registry, password: &str) -> Daemon {
    let mut daemon = Daemon::prepare(&format!(
        "[registries.local]\nprovider = \"static\"\nregistry = \"{}\"\nusername = \"{USER}\"\npassword = \"{password}\"\n",
        registry.host()
    ));
    daemon.secret(password);
    daemon.spawn();
    daemon
}

#[test]
fn skopeo_pushes_and_inspects_with_the_mounted_authfile() {
    let registry = Registry::start(USER, PASSWORD);
    let daemon = mount_with_password(&registry, PASSWORD);
    let authfile = daemon.path("docker/config.json");
    let out = registry.push(&authfile, daemon.dir.path(), "hello");
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    let destination = format!("docker://{}/test/hello:latest", registry.host());
    let out = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            &authfile.to_string_lossy(),
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
    let registry = Registry::start(USER, PASSWORD);
    let daemon = mount_with_password(&registry, "wrong-pass-1a1a1a");
    let out = registry.push(
        &daemon.path("docker/config.json"),
        daemon.dir.path(),
        "denied",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
}
