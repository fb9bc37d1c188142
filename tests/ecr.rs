//! The `ecr` provider against moto's ECR API (GetAuthorizationToken), and a
//! real push to a Docker registry with the token from the mount.

mod common;

use base64::Engine;
use common::servers::{Moto, Registry};
use common::*;
use std::fs;
use std::time::{Duration, SystemTime};

/// What moto's account 123456789012 gets.
const PASSWORD: &str = "123456789012-auth-token";
const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

fn token() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("AWS:{PASSWORD}"))
}

fn mount(moto: &Moto, registry_override: Option<&str>) -> Daemon {
    let registry = registry_override
        .map(|r| format!("registry = \"{r}\"\n"))
        .unwrap_or_default();
    let mut daemon = Daemon::prepare(&format!(
        "[registries.ecr]\nprovider = \"ecr\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{registry}",
        moto.endpoint()
    ));
    daemon.secret(PASSWORD);
    daemon.secret(&token());
    daemon.spawn_with_env(&[
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    daemon
}

fn cat(daemon: &Daemon, path: &str) -> std::process::Output {
    run("cat", &[&daemon.path(path).to_string_lossy()])
}

fn expires_at(daemon: &Daemon) -> SystemTime {
    let text = fs::read_to_string(daemon.path("registries/ecr/expires_at")).unwrap();
    humantime::parse_rfc3339(&text).unwrap_or_else(|_| panic!("not RFC 3339: {text:?}"))
}

#[test]
fn the_files_show_what_get_authorization_token_returned() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = mount(&moto, None);
    assert_eq!(
        cat(&daemon, "registries/ecr/token").stdout,
        token().as_bytes()
    );
    assert_eq!(cat(&daemon, "registries/ecr/username").stdout, b"AWS");
    assert_eq!(
        cat(&daemon, "registries/ecr/password").stdout,
        PASSWORD.as_bytes()
    );
    assert_eq!(
        cat(&daemon, "registries/ecr/registry").stdout,
        HOST.as_bytes()
    );
    let left = expires_at(&daemon)
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(11 * 3600) && left <= Duration::from_secs(12 * 3600),
        "{left:?}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&cat(&daemon, "docker/config.json").stdout).unwrap();
    assert_eq!(
        config["auths"][HOST]["auth"],
        token(),
        "docker config carries the token"
    );
    let auth: serde_json::Value =
        serde_json::from_slice(&cat(&daemon, "registries/ecr/auth.json").stdout).unwrap();
    assert_eq!(auth["username"], "AWS");
    assert_eq!(moto.calls(), 1, "all of that from one call");
}

#[test]
fn cold_concurrent_readers_cause_exactly_one_call() {
    let moto = Moto::start(Duration::from_secs(3600));
    let daemon = mount(&moto, None);
    let token_path = daemon.path("registries/ecr/token");
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..256)
            .map(|_| scope.spawn(|| run("cat", &[&token_path.to_string_lossy()])))
            .collect();
        for reader in readers {
            let out = reader.join().unwrap();
            assert_eq!(out.stdout, token().as_bytes(), "{}", stderr(&out));
        }
    });
    assert_eq!(moto.calls(), 1);
}

#[test]
fn the_mounted_ecr_token_pushes_to_a_real_registry() {
    let moto = Moto::start(Duration::from_secs(3600));
    let registry = Registry::start("AWS", PASSWORD);
    let daemon = mount(&moto, Some(&registry.host()));
    let authfile = daemon.path("docker/config.json");
    let out = registry.push(&authfile, daemon.dir.path(), "from-ecr");
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));

    let other = Registry::start("AWS", "a-different-password");
    let daemon = mount(&moto, Some(&other.host()));
    let out = other.push(
        &daemon.path("docker/config.json"),
        daemon.dir.path(),
        "denied",
    );
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
}

#[test]
fn tokens_are_refreshed_before_expiry_without_a_reader_waiting() {
    let moto = Moto::start(Duration::from_secs(4));
    let daemon = mount(&moto, None);
    assert!(cat(&daemon, "registries/ecr/token").status.success());
    let first = expires_at(&daemon);
    wait_for("a background refresh", Duration::from_secs(4), || {
        moto.calls() >= 2
    });
    assert!(
        SystemTime::now() < first,
        "refreshed before the first token expired"
    );
    // Generous: the call is counted when moto receives it, and a loaded
    // machine (the 5 GiB copy test beside this one) slows what follows.
    wait_for(
        "the new expiry to be served",
        Duration::from_secs(6),
        || expires_at(&daemon) > first,
    );
}

#[test]
fn a_failed_refresh_serves_the_still_valid_token() {
    let mut moto = Moto::start(Duration::from_secs(600));
    let daemon = mount(&moto, None);
    assert_eq!(
        cat(&daemon, "registries/ecr/token").stdout,
        token().as_bytes()
    );
    moto.stop();
    let refresh = sh(&format!(
        "echo > {}",
        daemon.path("registries/ecr/refresh").display()
    ));
    assert!(!refresh.status.success(), "the forced refresh fails");
    assert_eq!(
        cat(&daemon, "registries/ecr/token").stdout,
        token().as_bytes()
    );
    let status: serde_json::Value =
        serde_json::from_slice(&cat(&daemon, "status.json").stdout).unwrap();
    assert_eq!(status["registries"]["ecr"]["state"], "error");
    assert!(
        status["registries"]["ecr"]["reason"]
            .as_str()
            .unwrap()
            .contains("GetAuthorizationToken"),
        "{status}"
    );
    assert!(daemon.log().contains("serving the cached credential"));
    moto.restart();
    let refresh = sh(&format!(
        "echo > {}",
        daemon.path("registries/ecr/refresh").display()
    ));
    assert!(refresh.status.success(), "{}", stderr(&refresh));
}

#[test]
fn an_expired_token_is_never_served() {
    let mut moto = Moto::start(Duration::from_secs(3));
    let daemon = mount(&moto, None);
    assert!(cat(&daemon, "registries/ecr/token").status.success());
    moto.stop();
    let expiry = expires_at(&daemon);
    while SystemTime::now() + Duration::from_millis(300) < expiry {
        let out = cat(&daemon, "registries/ecr/token");
        assert_eq!(
            out.stdout,
            token().as_bytes(),
            "served until it expires: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for("reads to fail after expiry", Duration::from_secs(5), || {
        !cat(&daemon, "registries/ecr/token").status.success()
    });
    assert!(SystemTime::now() >= expiry);
    let out = cat(&daemon, "registries/ecr/token");
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
}
