//! `credfs get` (thin-edge's protocol, also as a `registry-credentials`
//! symlink) and `docker-credential-credfs` against a mounted tree.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;

const CONFIG: &str = r#"
[registries.ghcr]
provider = "static"
registry = "ghcr.io"
username = "any"
password = "ghcr-wide-1f1f"
[registries.ghcr-org]
provider = "static"
registry = "ghcr.io/org"
username = "org-bot"
password = "ghcr-org-2e2e"
[registries.hub]
provider = "static"
registry = "docker.io"
username = "hubuser"
password = "hub-3d3d"
"#;

fn start() -> Daemon {
    let mut daemon = Daemon::prepare(CONFIG);
    for secret in ["ghcr-wide-1f1f", "ghcr-org-2e2e", "hub-3d3d"] {
        daemon.secret(secret);
    }
    daemon.spawn();
    daemon
}

fn get(daemon: &Daemon, image: &str) -> std::process::Output {
    run(
        BIN,
        &["get", image, "--mount", &daemon.mnt.to_string_lossy()],
    )
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A symlink to the credfs binary under another name.
fn alias(daemon: &Daemon, name: &str) -> String {
    let link = daemon.dir.path().join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(Path::new(BIN), &link).unwrap();
    }
    link.to_string_lossy().into_owned()
}

#[test]
fn get_picks_the_most_specific_registry() {
    let daemon = start();
    assert_eq!(
        json_of(&get(&daemon, "ghcr.io/org/app:1.0")),
        json!({"username": "org-bot", "password": "ghcr-org-2e2e"})
    );
    assert_eq!(
        json_of(&get(&daemon, "ghcr.io/organisation/app")),
        json!({"username": "any", "password": "ghcr-wide-1f1f"})
    );
    assert_eq!(
        json_of(&get(&daemon, "ubuntu:22.04")),
        json!({"username": "hubuser", "password": "hub-3d3d"})
    );
    assert_eq!(
        json_of(&get(&daemon, "library/alpine")),
        json!({"username": "hubuser", "password": "hub-3d3d"})
    );
    let none = get(&daemon, "quay.io/team/app");
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("no registry in")
            && stderr(&none).contains("serves quay.io/team/app"),
        "{}",
        stderr(&none)
    );
    assert!(none.stdout.is_empty());
}

#[test]
fn registry_credentials_can_be_a_symlink_to_credfs() {
    let daemon = start();
    let program = alias(&daemon, "registry-credentials");
    let out = std::process::Command::new(&program)
        .args(["get", "ghcr.io/org/app", "--refresh"])
        .env("CREDFS_MOUNT", &daemon.mnt)
        .output()
        .unwrap();
    assert_eq!(json_of(&out)["username"], "org-bot");
    assert!(
        daemon.log().contains("refresh requested registry=ghcr-org"),
        "--refresh wrote the refresh file"
    );
}

#[test]
fn docker_credential_credfs_speaks_dockers_protocol() {
    let daemon = start();
    let program = alias(&daemon, "docker-credential-credfs");
    let mnt = daemon.mnt.to_string_lossy().to_string();
    let ask = |action: &str, stdin: &str| {
        sh(&format!(
            "printf '%s' '{stdin}' | CREDFS_MOUNT={mnt} {program} {action}"
        ))
    };
    assert_eq!(
        json_of(&ask("get", "https://index.docker.io/v1/")),
        json!({"ServerURL": "https://index.docker.io/v1/", "Username": "hubuser", "Secret": "hub-3d3d"})
    );
    assert_eq!(json_of(&ask("get", "ghcr.io"))["Username"], "any");
    let missing = ask("get", "quay.io");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stdout).trim(),
        "credentials not found in native keychain"
    );
    assert_eq!(
        json_of(&ask("list", "")),
        json!({"ghcr.io": "any", "ghcr.io/org": "org-bot", "docker.io": "hubuser"})
    );
    let store = ask("store", "{}");
    assert_eq!(store.status.code(), Some(1));
    assert!(stderr(&store).contains("read-only"));
    let same = run(BIN, &["docker-credential", "--mount", &mnt, "list"]);
    assert_eq!(
        json_of(&same).as_object().unwrap().len(),
        3,
        "also as a credfs subcommand"
    );
}

#[test]
fn the_small_credfs_helper_binary_speaks_both_protocols() {
    let daemon = start();
    let helper = env!("CARGO_BIN_EXE_credfs-helper");
    let link = |name: &str| {
        let path = daemon.dir.path().join("small").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(helper, &path).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (thin_edge, docker) = (
        link("registry-credentials"),
        link("docker-credential-credfs"),
    );
    let mnt = daemon.mnt.to_string_lossy().to_string();
    let out = sh(&format!(
        "CREDFS_MOUNT={mnt} {thin_edge} get ghcr.io/org/app"
    ));
    assert_eq!(
        json_of(&out),
        json!({"username": "org-bot", "password": "ghcr-org-2e2e"})
    );
    let out = sh(&format!("echo ghcr.io | CREDFS_MOUNT={mnt} {docker} get"));
    assert_eq!(json_of(&out)["Secret"], "ghcr-wide-1f1f");
    let usage = run(helper, &[]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains(
        "run me as registry-credentials, docker-credential-credfs or credfs-kubelet-provider"
    ));
}
