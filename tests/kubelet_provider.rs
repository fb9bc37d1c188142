//! The kubelet's image credential provider plugin
//! (`credentialprovider.kubelet.k8s.io/v1`) against a mounted tree: the
//! request JSON on stdin, every field and type of the response checked
//! against the v1 types, as `credfs kubelet-credential-provider` and as a
//! `credfs-kubelet-provider` symlink to either binary.

mod common;

use common::servers::Moto;
use common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";
const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const ECR_PASSWORD: &str = "123456789012-auth-token";
const HELPER: &str = env!("CARGO_BIN_EXE_credfs-helper");

fn config(moto: &Moto) -> String {
    format!(
        r#"
[mount]
allow_other = true
dir_mode = "0555"
[registries.ecr]
provider = "ecr"
region = "us-east-1"
endpoint_url = "{}"
[registries.ghcr-org]
provider = "static"
registry = "ghcr.io/org"
username = "org-bot"
password = "kube-ghcr-org-5c5c"
[registries.private]
provider = "static"
registry = "private.example:5000"
username = "u"
password = "kube-private-6d6d"
uid = 1000
mode = "0400"
[registries.open]
provider = "none"
registry = "open.example"
"#,
        moto.endpoint()
    )
}

fn start(moto: &Moto) -> Daemon {
    let mut daemon = Daemon::prepare(&config(moto));
    for secret in [ECR_PASSWORD, "kube-ghcr-org-5c5c", "kube-private-6d6d"] {
        daemon.secret(secret);
    }
    daemon.spawn_with_env(&[
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    daemon
}

/// Runs `command` with `request` on stdin.
fn feed(mut command: Command, request: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("write the request");
    child.wait_with_output().expect("wait")
}

/// Runs `program args` with `request` on stdin and CREDFS_MOUNT set, as
/// the kubelet does with the `env` of its CredentialProviderConfig.
fn ask_with(program: &str, args: &[&str], mount: &Path, request: &str) -> Output {
    let mut command = Command::new(program);
    command.args(args).env("CREDFS_MOUNT", mount);
    feed(command, request)
}

/// A `credfs-kubelet-provider` symlink to `target` in a directory of its own.
fn plugin_link(daemon: &Daemon, target: &str, dir: &str) -> String {
    let link = daemon.dir.path().join(dir).join("credfs-kubelet-provider");
    if !link.exists() {
        std::fs::create_dir_all(link.parent().expect("a parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, &link).expect("symlink");
    }
    link.to_string_lossy().into_owned()
}

fn request(image: &str) -> String {
    json!({ "kind": "CredentialProviderRequest", "apiVersion": V1, "image": image }).to_string()
}

fn ask(daemon: &Daemon, image: &str) -> Value {
    let out = ask_with(
        BIN,
        &["kubelet-credential-provider"],
        &daemon.mnt,
        &request(image),
    );
    response_of(&out)
}

/// The response, after checking it has exactly the v1 fields with their
/// types: kind, apiVersion, cacheKeyType (Image, Registry or Global),
/// cacheDuration (a Go duration), auth (key → {username, password}).
fn response_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(out)
    );
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    let response: Value = serde_json::from_str(&text).expect("JSON");
    let object = response.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "apiVersion",
            "auth",
            "cacheDuration",
            "cacheKeyType",
            "kind"
        ]
    );
    assert_eq!(response["kind"], "CredentialProviderResponse");
    assert!(
        ["Image", "Registry", "Global"].contains(&response["cacheKeyType"].as_str().expect("str")),
        "{response}"
    );
    go_duration_seconds(response["cacheDuration"].as_str().expect("a string"));
    for (key, auth) in response["auth"].as_object().expect("auth is a map") {
        assert!(!key.is_empty() && !key.contains("://"), "{key}");
        let auth = auth.as_object().expect("AuthConfig is an object");
        let mut fields: Vec<&str> = auth.keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(fields, ["password", "username"], "{key}");
        assert!(auth.values().all(Value::is_string), "{key}");
    }
    response
}

/// Seconds in a duration as Go writes it (`0s`, `2m5s`, `6h0m0s`).
fn go_duration_seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    let mut units = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let scale = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => panic!("not a Go duration: {text}"),
        };
        units.push(c);
        total += number.parse::<u64>().expect("digits before a unit") * scale;
        number.clear();
    }
    assert!(number.is_empty(), "ends with a unit: {text}");
    assert!(
        ["s", "ms", "hms"].contains(&units.as_str()),
        "units as Go orders them: {text}"
    );
    total
}

#[test]
fn an_ecr_image_gets_the_registry_credential_cached_for_half_its_life() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = start(&moto);
    let response = ask(&daemon, &format!("{ECR_HOST}/team/app"));
    assert_eq!(response["apiVersion"], V1);
    assert_eq!(response["cacheKeyType"], "Registry");
    assert_eq!(
        response["auth"],
        json!({ ECR_HOST: { "username": "AWS", "password": ECR_PASSWORD } })
    );
    let cached = go_duration_seconds(response["cacheDuration"].as_str().unwrap());
    assert!(
        (5 * 3600 + 3500..=6 * 3600).contains(&cached),
        "half of 12 h: {cached} s"
    );
    // The kubelet may send a tag or digest too; the answer is the same.
    let tagged = ask(&daemon, &format!("{ECR_HOST}/team/app:1.2@sha256:abcd"));
    assert_eq!(tagged["auth"], response["auth"]);
    assert_eq!(moto.calls(), 1, "one fetch serves every ask");
    let log = daemon.log();
    daemon.assert_no_secret_in(&log, "the daemon log");
}

#[test]
fn a_registry_with_a_path_is_cached_per_image_and_static_ones_not_at_all() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = start(&moto);
    let response = ask(&daemon, "ghcr.io/org/app");
    assert_eq!(response["cacheKeyType"], "Image");
    assert_eq!(response["cacheDuration"], "0s", "no expiry known");
    assert_eq!(
        response["auth"],
        json!({ "ghcr.io/org": { "username": "org-bot", "password": "kube-ghcr-org-5c5c" } })
    );
    // Outside the prefix nothing matches.
    let outside = ask(&daemon, "ghcr.io/organisation/app");
    assert_eq!(outside["auth"], json!({}));
}

#[test]
fn no_match_or_an_open_registry_is_an_empty_auth_and_exit_zero() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = start(&moto);
    for image in ["open.example/app", "quay.io/other/app", "nginx"] {
        let response = ask(&daemon, image);
        assert_eq!(response["auth"], json!({}), "{image}");
        assert_eq!(response["cacheDuration"], "0s", "{image}");
        assert_eq!(response["cacheKeyType"], "Registry", "{image}");
    }
}

#[test]
fn the_answer_is_what_the_asking_user_may_read() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = start(&moto);
    let private = request("private.example:5000/app");
    let as_root = response_of(&ask_with(
        BIN,
        &["kubelet-credential-provider"],
        &daemon.mnt,
        &private,
    ));
    assert_eq!(as_root["auth"]["private.example:5000"]["username"], "u");
    for (uid, expected) in [
        ("1000", json!(["private.example:5000"])),
        ("1001", json!([])),
    ] {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", uid, "--regid", uid, "--clear-groups", BIN])
            .arg("kubelet-credential-provider")
            .env("CREDFS_MOUNT", &daemon.mnt);
        let response = response_of(&feed(command, &private));
        let keys: Vec<&String> = response["auth"].as_object().unwrap().keys().collect();
        assert_eq!(json!(keys), expected, "uid {uid}");
    }
}

#[test]
fn both_binaries_answer_under_the_plugin_name() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = start(&moto);
    let request = request("ghcr.io/org/app");
    let mount = daemon.mnt.to_string_lossy().into_owned();
    let nowhere = daemon.dir.path().join("nowhere");
    for (target, dir) in [(BIN, "credfs"), (HELPER, "helper")] {
        let link = plugin_link(&daemon, target, dir);
        // With --mount, CREDFS_MOUNT points nowhere: the flag wins.
        for (args, env_mount) in [(vec![], &daemon.mnt), (vec!["--mount", &mount], &nowhere)] {
            let response = response_of(&ask_with(&link, &args, env_mount, &request));
            assert_eq!(
                response["auth"]["ghcr.io/org"]["password"], "kube-ghcr-org-5c5c",
                "{link} {args:?}"
            );
        }
    }
}

#[test]
fn malformed_requests_exit_one_with_one_line_on_stderr() {
    let moto = Moto::start(Duration::from_secs(12 * 3600));
    let daemon = start(&moto);
    let cases = [
        ("", "not JSON"),
        ("{\"kind\":", "not JSON"),
        (
            r#"{"kind":"Pod","apiVersion":"v1","image":"x"}"#,
            "kind is \"Pod\"",
        ),
        (
            r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v9","image":"x"}"#,
            "apiVersion",
        ),
        (
            r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}"#,
            "no image",
        ),
    ];
    let helper = plugin_link(&daemon, HELPER, "helper");
    let programs: [(&str, &[&str]); 2] = [(BIN, &["kubelet-credential-provider"]), (&helper, &[])];
    for (text, reason) in cases {
        for (program, args) in programs {
            let out = ask_with(program, args, &daemon.mnt, text);
            assert_eq!(out.status.code(), Some(1), "{program}: {text}");
            assert!(out.stdout.is_empty(), "nothing on stdout for {text}");
            let message = stderr(&out);
            assert_eq!(message.trim_end().lines().count(), 1, "{message}");
            assert!(message.contains(reason), "{text}: {message}");
        }
    }
    // A tree that is not mounted is an error, not an empty answer.
    let out = ask_with(
        BIN,
        &["kubelet-credential-provider"],
        &daemon.dir.path().join("nowhere"),
        &request("ghcr.io/org/app"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot list"), "{}", stderr(&out));
}
