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

#[test]
fn check_probe_logs_in_to_reachable_registries() {
    let registry = Registry::start(USER, PASSWORD);
    let unused = common::servers::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let entry = |name: &str, host: &str, password: &str| {
        format!(
            "[registries.{name}]\nprovider = \"static\"\nregistry = \"{host}\"\nusername = \"{USER}\"\npassword = \"{password}\"\n"
        )
    };
    let text = entry("good", &registry.host(), PASSWORD)
        + &entry("bad", &registry.host(), "wrong-probe-9x9x")
        + &entry("away", &format!("127.0.0.1:{unused}"), PASSWORD)
        + "[registries.open]\nprovider = \"none\"\nregistry = \"localhost:1\"\n";
    fs::write(&config, text).unwrap();
    let private: fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    fs::set_permissions(&config, private).unwrap();
    let out = run(
        BIN,
        &["check", "--probe", "--config", &config.to_string_lossy()],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "one credential is refused: {text}"
    );
    assert!(
        text.contains(&format!(
            "registry good: ok (logged in to {})",
            registry.host()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "registry bad: error: {} refused the credential (401",
            registry.host()
        )),
        "{text}"
    );
    assert!(
        text.contains("registry away: ok (fetched; login not tried, unreachable:"),
        "{text}"
    );
    assert!(
        text.contains("registry open: ok (no credential needed)"),
        "{text}"
    );
    for secret in [PASSWORD, "wrong-probe-9x9x"] {
        assert!(!text.contains(secret) && !stderr(&out).contains(secret));
    }
}
