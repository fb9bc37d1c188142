//! Registry credentials, docker/config.json and secrets through a real mount.

mod common;

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use std::fs;

const LITERAL: &str = "lit-3f9c1e-secret";
const FROM_FILE: &str = "file-8a7b6c-secret";
const FROM_ENV: &str = "env-5d4e3f-secret";
const GENERIC: &str = "wandb-1a2b3c-secret";

fn config() -> String {
    format!(
        r#"
[mount]
file_mode = "0400"
dir_mode = "0500"
[registries.hub]
provider = "static"
registry = "docker.io"
username = "hubuser"
password = "{LITERAL}"
[registries.ghcr]
provider = "static"
registry = "ghcr.io/org"
username = "ghuser"
password = {{ file = "@DIR@/ghcr-token" }}
[registries.ngc]
provider = "static"
registry = "nvcr.io"
username = "$oauthtoken"
password = {{ env = "CREDFS_TEST_NGC_KEY" }}
[registries.open]
provider = "none"
registry = "localhost:5000"
[registries.ecr]
provider = "ecr"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:9"
[secrets.wandb]
api_key = "{GENERIC}"
"#
    )
}

fn start() -> Daemon {
    let mut daemon = Daemon::prepare(&config());
    fs::write(
        daemon.dir.path().join("ghcr-token"),
        format!("{FROM_FILE}\n"),
    )
    .unwrap();
    for secret in [LITERAL, FROM_FILE, FROM_ENV, GENERIC] {
        daemon.secret(secret);
    }
    daemon.spawn_with_env(&[
        ("CREDFS_TEST_NGC_KEY", FROM_ENV),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_MAX_ATTEMPTS", "1"),
    ]);
    daemon
}

fn read(daemon: &Daemon, path: &str) -> Vec<u8> {
    let out = run("cat", &[&daemon.path(path).to_string_lossy()]);
    assert!(out.status.success(), "cat {path}: {}", stderr(&out));
    out.stdout
}

#[test]
fn tokens_are_the_exact_secret_bytes_from_every_source() {
    let daemon = start();
    assert_eq!(read(&daemon, "registries/hub/token"), LITERAL.as_bytes());
    assert_eq!(
        read(&daemon, "registries/ghcr/token"),
        FROM_FILE.as_bytes(),
        "one newline dropped"
    );
    assert_eq!(read(&daemon, "registries/ngc/token"), FROM_ENV.as_bytes());
    assert_eq!(read(&daemon, "registries/ngc/username"), b"$oauthtoken");
    assert_eq!(
        read(&daemon, "registries/ngc/password"),
        FROM_ENV.as_bytes()
    );
    assert_eq!(read(&daemon, "registries/ghcr/registry"), b"ghcr.io/org");
    assert_eq!(read(&daemon, "registries/hub/expires_at"), b"");
    let auth: Value = serde_json::from_slice(&read(&daemon, "registries/hub/auth.json")).unwrap();
    assert_eq!(
        auth,
        json!({"username": "hubuser", "password": LITERAL, "registry": "docker.io", "expires_at": null})
    );
    assert_eq!(read(&daemon, "registries/open/token"), b"");
    assert_eq!(read(&daemon, "secrets/wandb/api_key"), GENERIC.as_bytes());
}

#[test]
fn readers_that_trust_st_size_get_every_byte() {
    let daemon = start();
    let token = daemon.path("registries/hub/token");
    let size = fs::metadata(&token).unwrap().len();
    assert_eq!(size, LITERAL.len() as u64);
    let out = sh(&format!(
        "head -c \"$(stat -c %s {0})\" {0}",
        token.display()
    ));
    assert_eq!(out.stdout, LITERAL.as_bytes());
    let script = format!(
        "import sys; sys.stdout.write(open({:?}).read())",
        token.to_string_lossy()
    );
    assert_eq!(run("python3", &["-c", &script]).stdout, LITERAL.as_bytes());
}

#[test]
fn docker_config_lists_every_registry_with_credentials() {
    let daemon = start();
    let config: Value = serde_json::from_slice(&read(&daemon, "docker/config.json")).unwrap();
    let auths = config["auths"].as_object().expect("auths");
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(
        auths["docker.io"]["auth"],
        b64(format!("hubuser:{LITERAL}"))
    );
    assert_eq!(
        auths["https://index.docker.io/v1/"]["auth"],
        b64(format!("hubuser:{LITERAL}"))
    );
    assert_eq!(
        auths["ghcr.io/org"]["auth"],
        b64(format!("ghuser:{FROM_FILE}"))
    );
    assert_eq!(
        auths["nvcr.io"]["auth"],
        b64(format!("$oauthtoken:{FROM_ENV}"))
    );
    assert!(
        !auths.contains_key("localhost:5000"),
        "an open registry has no credential"
    );
    assert_eq!(auths.len(), 4);
}

#[test]
fn an_unreachable_provider_fails_with_eio_and_status_says_why() {
    let daemon = start();
    let out = run(
        "cat",
        &[&daemon.path("registries/ecr/token").to_string_lossy()],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let status: Value = serde_json::from_slice(&read(&daemon, "status.json")).unwrap();
    assert_eq!(status["registries"]["ecr"]["state"], "error");
    assert!(
        status["registries"]["ecr"]["reason"]
            .as_str()
            .unwrap()
            .contains("GetAuthorizationToken")
    );
    // One failing registry does not fail the others.
    assert_eq!(read(&daemon, "registries/hub/token"), LITERAL.as_bytes());
}

#[test]
fn status_reports_every_entry_and_no_secret() {
    let mut daemon = start();
    read(&daemon, "registries/hub/token");
    read(&daemon, "docker/config.json");
    let text = String::from_utf8(read(&daemon, "status.json")).unwrap();
    let status: Value = serde_json::from_str(&text).unwrap();
    assert!(status["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status["registries"]["hub"]["state"], "ok");
    assert_eq!(status["registries"]["hub"]["provider"], "static");
    assert_eq!(status["secrets"]["wandb"]["keys"], json!(["api_key"]));
    daemon.assert_no_secret_in(&text, "status.json");
    let summary = run(BIN, &["status", &daemon.mnt.to_string_lossy()]);
    let summary_text = String::from_utf8_lossy(&summary.stdout).to_string();
    assert!(summary_text.contains("hub"), "{summary_text}");
    assert_eq!(
        summary.status.code(),
        Some(1),
        "the ecr registry is in error once read"
    );
    daemon.assert_no_secret_in(&summary_text, "credfs status");
    assert!(daemon.stop().success());
}

#[test]
fn writes_outside_projects_are_refused() {
    let daemon = start();
    for path in [
        "registries/hub/token",
        "secrets/wandb/api_key",
        "docker/config.json",
        "status.json",
    ] {
        assert_eq!(
            open_errno(&daemon.path(path), "os.O_WRONLY"),
            libc::EACCES,
            "writing {path}"
        );
    }
    for path in [
        "registries/hub/new",
        "secrets/wandb/new",
        "docker/new",
        "new",
        "projects/new.zip",
    ] {
        assert_eq!(
            open_errno(&daemon.path(path), "os.O_WRONLY | os.O_CREAT"),
            libc::EACCES,
            "creating {path}"
        );
    }
    assert_eq!(
        read(&daemon, "registries/hub/token"),
        LITERAL.as_bytes(),
        "unchanged"
    );
    let out = run("mkdir", &[&daemon.path("registries/x").to_string_lossy()]);
    assert!(!out.status.success());
}

#[test]
fn the_tree_lists_what_the_config_names() {
    let daemon = start();
    let names = |dir: &str| {
        let mut names: Vec<String> = fs::read_dir(daemon.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(""),
        ["docker", "projects", "registries", "secrets", "status.json"]
    );
    assert_eq!(names("registries"), ["ecr", "ghcr", "hub", "ngc", "open"]);
    assert_eq!(
        names("registries/hub"),
        [
            "auth.json",
            "expires_at",
            "password",
            "refresh",
            "registry",
            "token",
            "username"
        ]
    );
    assert_eq!(names("secrets/wandb"), ["api_key"]);
    let missing = fs::metadata(daemon.path("registries/nope")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    let inode =
        |p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(daemon.path(p)).unwrap());
    assert_eq!(
        inode("registries/hub/token"),
        inode("registries/hub/token"),
        "stable inode numbers"
    );
}

#[test]
fn writing_refresh_fetches_anew_and_reports_failure() {
    let daemon = start();
    let refresh = daemon.path("registries/hub/refresh");
    let out = sh(&format!("echo now > {}", refresh.display()));
    assert!(out.status.success(), "{} {}", stderr(&out), daemon.log());
    assert!(daemon.log().contains("refresh requested"));
    let failing = sh(&format!(
        "echo now > {}",
        daemon.path("registries/ecr/refresh").display()
    ));
    assert!(!failing.status.success());
    // dash's echo says "I/O error" for EIO.
    assert!(
        stderr(&failing).contains("I/O error"),
        "{}",
        stderr(&failing)
    );
    assert_eq!(
        read(&daemon, "registries/hub/refresh"),
        b"",
        "nothing to read"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&refresh).unwrap().mode() & 0o777, 0o200);
}
