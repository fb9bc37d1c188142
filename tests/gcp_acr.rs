//! The `gcp` and `acr` providers against tests/token_servers.py, which
//! checks what Google's and Entra ID's token endpoints, the metadata
//! servers and ACR's exchange check, and counts calls; the tokens then
//! push to a real Docker registry, and reach `check --probe`, `credfs get`
//! and the kubelet plugin.

mod common;

use common::servers::Registry;
use common::token_servers::*;
use common::*;
use serde_json::{Value, json};
use std::fs;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

fn cat(daemon: &Daemon, path: &str) -> Output {
    run("cat", &[&daemon.path(path).to_string_lossy()])
}

fn text(daemon: &Daemon, path: &str) -> String {
    let out = cat(daemon, path);
    assert!(out.status.success(), "{path}: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn expires_at(daemon: &Daemon, name: &str) -> SystemTime {
    let at = text(daemon, &format!("registries/{name}/expires_at"));
    humantime::parse_rfc3339(&at).unwrap_or_else(|_| panic!("not RFC 3339: {at:?}"))
}

fn left(daemon: &Daemon, name: &str) -> Duration {
    expires_at(daemon, name)
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// A token server for Google (`key`'s public half) and Entra ID, with
/// `extra` arguments.
fn server(key: &KeyPair, extra: &[&str]) -> TokenServer {
    let mut args = key.server_args();
    args.extend(
        [
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            "entra-secret-7c1f",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TokenServer::start("s9k2q7w1", &args)
}

/// `[registries.NAME]` of provider gcp with a key file at
/// `@DIR@/NAME.json` (see `write_keys`).
fn gcp_entry(name: &str, registry: &str) -> String {
    format!(
        "[registries.{name}]\nprovider = \"gcp\"\nregistry = \"{registry}\"\nkey = {{ file = \"@DIR@/{name}.json\" }}\n"
    )
}

/// `[registries.NAME]` of provider acr through `server`, with `source`.
fn acr_entry(name: &str, registry: &str, server: &TokenServer, source: &str) -> String {
    format!(
        "[registries.{name}]\nprovider = \"acr\"\nregistry = \"{registry}\"\n{source}\nauthority_host = \"{}\"\nexchange_url = \"{}\"\n",
        server.url(""),
        server.url("/oauth2/exchange")
    )
}

fn app(secret: &str) -> String {
    format!("tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"")
}

/// A daemon's directory for `config`, with the service-account keys
/// `keys` written to `@DIR@/NAME.json` and every secret registered.
fn prepare(config: &str, server: &TokenServer, keys: &[(&str, &KeyPair)]) -> Daemon {
    let mut daemon = Daemon::prepare(config);
    for (name, key) in keys {
        let path = daemon.dir.path().join(format!("{name}.json"));
        key.write_service_account(&path, &server.url("/google/token"));
        daemon.secret(key.secret_line());
    }
    daemon.secret(&server.secret);
    daemon.secret("entra-secret-7c1f");
    daemon
}

fn start(
    config: &str,
    server: &TokenServer,
    keys: &[(&str, &KeyPair)],
    env: &[(&str, &str)],
) -> Daemon {
    let mut daemon = prepare(config, server, keys);
    daemon.spawn_with_env(env);
    daemon
}

#[test]
fn a_service_account_key_token_pushes_to_a_real_registry() {
    let key = KeyPair::generate();
    let server = server(&key, &[]);
    let token = format!("ya29.{}-k1", server.secret);
    let registry = Registry::start(GCP_USER, &token);
    // skopeo pushes to HOST/test/REPO: the registry's path scopes the token.
    let config = gcp_entry("gar", &format!("{}/test", registry.host()));
    let daemon = start(&config, &server, &[("gar", &key)], &[]);
    assert_eq!(text(&daemon, "registries/gar/username"), GCP_USER);
    assert_eq!(text(&daemon, "registries/gar/password"), token);
    assert_eq!(text(&daemon, "registries/gar/token"), token);
    let life = left(&daemon, "gar");
    assert!(
        life > Duration::from_secs(3500) && life <= Duration::from_secs(3600),
        "expires_in: {life:?}"
    );
    let out = registry.push(&daemon.path("docker/config.json"), daemon.dir.path(), "gar");
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    assert_eq!(
        server.calls("google_token"),
        1,
        "all of that from one token"
    );
    let status: Value = serde_json::from_str(&text(&daemon, "status.json")).expect("JSON");
    assert_eq!(status["registries"]["gar"]["state"], "ok", "{status}");
}

#[test]
fn without_a_key_the_gce_metadata_server_answers() {
    let key = KeyPair::generate();
    let server = server(&key, &["--lifetime", "1800"]);
    let config = "[registries.gar]\nprovider = \"gcp\"\nregistry = \"gcr.io/credfs-test\"\n";
    let daemon = start(
        config,
        &server,
        &[],
        &[("GCE_METADATA_HOST", &server.host())],
    );
    let token = format!("ya29.{}-m1", server.secret);
    assert_eq!(
        text(&daemon, "registries/gar/password"),
        token,
        "GCE_METADATA_HOST"
    );
    assert!(left(&daemon, "gar") <= Duration::from_secs(1800));
    assert_eq!(server.calls("google_metadata"), 1);
    assert_eq!(server.calls("google_token"), 0);
    let config = format!("{config}metadata_host = \"{}\"\n", server.host());
    let daemon = start(
        &config,
        &server,
        &[],
        &[("GCE_METADATA_HOST", "127.0.0.1:9")],
    );
    let token = format!("ya29.{}-m2", server.secret);
    assert_eq!(
        text(&daemon, "registries/gar/password"),
        token,
        "the config wins"
    );
}

#[test]
fn an_acr_client_secret_token_pushes_to_a_real_registry() {
    let key = KeyPair::generate();
    let refresh = "acr-refresh-6d0b-opaque";
    let registry = Registry::start(ACR_USER, refresh);
    let host = registry.host();
    let server = server(
        &key,
        &["--acr-service", &host, "--acr-refresh-token", refresh],
    );
    let source = format!(
        "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"CREDFS_TEST_ACR_SECRET\" }}"
    );
    let config = acr_entry("acr", &host, &server, &source);
    let mut daemon = Daemon::prepare(&config);
    daemon.secret("entra-secret-7c1f");
    daemon.secret(&server.secret);
    daemon.secret(refresh);
    daemon.spawn_with_env(&[("CREDFS_TEST_ACR_SECRET", "entra-secret-7c1f")]);
    assert_eq!(text(&daemon, "registries/acr/username"), ACR_USER);
    assert_eq!(text(&daemon, "registries/acr/password"), refresh);
    let life = left(&daemon, "acr");
    assert!(
        life > Duration::from_secs(3 * 3600 - 60) && life <= Duration::from_secs(3 * 3600),
        "an opaque refresh token lives 3 h: {life:?}"
    );
    let out = registry.push(&daemon.path("docker/config.json"), daemon.dir.path(), "acr");
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    assert_eq!(server.calls("entra_token"), 1);
    assert_eq!(server.calls("acr_exchange"), 1);
}

#[test]
fn workload_identity_reads_the_federated_token_file_at_each_request() {
    let key = KeyPair::generate();
    let server = server(
        &key,
        &[
            "--acr-service",
            "myreg.azurecr.io",
            "--federated-token",
            "fed-token-2",
        ],
    );
    let source = format!(
        "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nfederated_token_file = \"token\""
    );
    let config = acr_entry("acr", "myreg.azurecr.io", &server, &source);
    let mut daemon = Daemon::prepare(&config);
    fs::write(daemon.dir.path().join("token"), "fed-token-1\n").unwrap();
    daemon.secret("fed-token-");
    daemon.secret(&server.secret);
    daemon.spawn();
    let out = cat(&daemon, "registries/acr/password");
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let status = text(&daemon, "status.json");
    assert!(status.contains("AADSTS700213"), "{status}");
    daemon.assert_no_secret_in(&status, "status.json");
    // The kubelet rotates the token: the next request reads the new one.
    fs::write(daemon.dir.path().join("token"), "fed-token-2\n").unwrap();
    let refresh = sh(&format!(
        "echo > {}",
        daemon.path("registries/acr/refresh").display()
    ));
    assert!(refresh.status.success(), "{}", stderr(&refresh));
    let password = text(&daemon, "registries/acr/password");
    daemon.secret(&password);
    assert!(password.starts_with("e30."), "{password}");
    assert_eq!(server.calls("entra_token"), 2);
    assert_eq!(server.calls("acr_exchange"), 1);
}

#[test]
fn a_managed_identity_token_is_exchanged_in_its_own_tenant() {
    let key = KeyPair::generate();
    let server = server(
        &key,
        &[
            "--acr-service",
            "myreg.azurecr.io",
            "--mi-client-id",
            "mi-1",
        ],
    );
    let config = format!(
        "[registries.acr]\nprovider = \"acr\"\nregistry = \"myreg.azurecr.io\"\nmanaged_identity = true\nclient_id = \"mi-1\"\nimds_endpoint = \"{}\"\nexchange_url = \"{}\"\n",
        server.url(""),
        server.url("/oauth2/exchange")
    );
    let mut daemon = start(&config, &server, &[], &[]);
    let password = text(&daemon, "registries/acr/password");
    daemon.secret(&password);
    assert_eq!(text(&daemon, "registries/acr/username"), ACR_USER);
    assert_eq!(server.calls("imds"), 1);
    assert_eq!(
        server.calls("acr_exchange"),
        1,
        "the exchange checked the tenant"
    );
    let life = left(&daemon, "acr");
    assert!(
        life > Duration::from_secs(3 * 3600 - 60),
        "the token's exp: {life:?}"
    );
}

#[test]
fn cold_concurrent_readers_cause_one_token_call_each() {
    let key = KeyPair::generate();
    let server = server(&key, &["--acr-service", "myreg.azurecr.io"]);
    let config = gcp_entry("gar", "gcr.io/credfs-test")
        + &acr_entry(
            "acr",
            "myreg.azurecr.io",
            &server,
            &app("entra-secret-7c1f"),
        );
    let daemon = start(&config, &server, &[("gar", &key)], &[]);
    let paths = [
        daemon.path("registries/gar/password"),
        daemon.path("registries/acr/password"),
    ];
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..256)
            .map(|i| {
                let path = &paths[i % 2];
                scope.spawn(move || run("cat", &[&path.to_string_lossy()]))
            })
            .collect();
        for reader in readers {
            let out = reader.join().unwrap();
            assert!(
                out.status.success() && !out.stdout.is_empty(),
                "{}",
                stderr(&out)
            );
        }
    });
    assert_eq!(server.calls("google_token"), 1);
    assert_eq!(server.calls("entra_token"), 1);
    assert_eq!(server.calls("acr_exchange"), 1);
}

/// Waits for a background refresh of `name` (`calls` passing 1) before
/// its first token expires, and for the new expiry to be served.
fn assert_refreshed_in_background(daemon: &Daemon, name: &str, calls: impl Fn() -> u64) {
    assert!(
        cat(daemon, &format!("registries/{name}/token"))
            .status
            .success()
    );
    let first = expires_at(daemon, name);
    assert!(first.duration_since(SystemTime::now()).unwrap_or_default() <= Duration::from_secs(4));
    wait_for("a background refresh", Duration::from_secs(4), || {
        calls() >= 2
    });
    assert!(
        SystemTime::now() < first,
        "refreshed before the first token expired"
    );
    wait_for(
        "the new expiry to be served",
        Duration::from_secs(2),
        || expires_at(daemon, name) > first,
    );
}

#[test]
fn short_lived_tokens_are_refreshed_in_the_background() {
    let key = KeyPair::generate();
    let server = server(
        &key,
        &[
            "--lifetime",
            "4",
            "--acr-service",
            "myreg.azurecr.io",
            "--acr-refresh-lifetime",
            "4",
        ],
    );
    let config = gcp_entry("gar", "gcr.io/credfs-test")
        + &acr_entry(
            "acr",
            "myreg.azurecr.io",
            &server,
            &app("entra-secret-7c1f"),
        );
    let mut daemon = start(&config, &server, &[("gar", &key)], &[]);
    assert_refreshed_in_background(&daemon, "gar", || server.calls("google_token"));
    // The ACR refresh token's life is its JWT exp claim, not 3 h.
    let password = text(&daemon, "registries/acr/password");
    daemon.secret(&password);
    assert_refreshed_in_background(&daemon, "acr", || server.calls("acr_exchange"));
}

#[test]
fn refused_credentials_read_eio_and_status_says_why_without_a_secret() {
    let key = KeyPair::generate();
    let other = KeyPair::generate();
    let server = server(&key, &["--acr-service", "myreg.azurecr.io"]);
    let config = gcp_entry("gar", "gcr.io/credfs-test")
        + &acr_entry(
            "acr",
            "myreg.azurecr.io",
            &server,
            &app("wrong-secret-3e8a"),
        );
    let mut daemon = start(&config, &server, &[("gar", &other)], &[]);
    daemon.secret("wrong-secret-3e8a");
    for name in ["gar", "acr"] {
        let out = cat(&daemon, &format!("registries/{name}/password"));
        assert!(!out.status.success() && out.stdout.is_empty());
        assert!(
            stderr(&out).contains("Input/output error"),
            "{}",
            stderr(&out)
        );
    }
    let status = text(&daemon, "status.json");
    daemon.assert_no_secret_in(&status, "status.json");
    let status: Value = serde_json::from_str(&status).expect("JSON");
    let reason = |name: &str| {
        status["registries"][name]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status["registries"]["gar"]["state"], "error", "{status}");
    assert!(
        reason("gar").contains("400 Bad Request: invalid_grant: Invalid JWT Signature."),
        "{status}"
    );
    assert_eq!(status["registries"]["acr"]["state"], "error", "{status}");
    assert!(
        reason("acr").contains("401 Unauthorized: invalid_client: AADSTS7000215"),
        "{status}"
    );
    assert_eq!(server.calls("acr_exchange"), 0);
}

#[test]
fn check_probe_logs_in_with_both_and_reports_refusals() {
    let key = KeyPair::generate();
    let refresh = "acr-refresh-probe-1a2b";
    let acr_registry = Registry::start(ACR_USER, refresh);
    let server = server(
        &key,
        &[
            "--acr-service",
            &acr_registry.host(),
            "--acr-refresh-token",
            refresh,
        ],
    );
    let gcp_registry = Registry::start(GCP_USER, &format!("ya29.{}-k1", server.secret));
    let config = gcp_entry("gcp-good", &gcp_registry.host())
        + &gcp_entry("gcp-bad", &gcp_registry.host())
        + &acr_entry(
            "acr-good",
            &acr_registry.host(),
            &server,
            &app("entra-secret-7c1f"),
        )
        + &acr_entry(
            "acr-bad",
            &acr_registry.host(),
            &server,
            &app("wrong-secret-3e8a"),
        );
    let other = KeyPair::generate();
    let daemon = prepare(&config, &server, &[("gcp-good", &key), ("gcp-bad", &other)]);
    let out = probe(&daemon.config, &[]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}{}", stderr(&out));
    for line in [
        format!(
            "registry acr-good: ok (logged in to {})",
            acr_registry.host()
        ),
        format!(
            "registry gcp-good: ok (logged in to {})",
            gcp_registry.host()
        ),
        "registry acr-bad: error: Entra ID token request: ".into(),
        "registry gcp-bad: error: GCP token request: ".into(),
    ] {
        assert!(report.contains(&line), "{line:?} in {report}");
    }
    for secret in [
        refresh,
        "wrong-secret-3e8a",
        "entra-secret-7c1f",
        &server.secret,
        key.secret_line(),
    ] {
        assert!(
            !report.contains(secret) && !stderr(&out).contains(secret),
            "{report}"
        );
    }
}

/// A daemon serving one registry of each provider at made-up hosts.
fn serving_both() -> (TokenServer, KeyPair, Daemon) {
    let key = KeyPair::generate();
    let server = server(
        &key,
        &[
            "--acr-service",
            "myreg.azurecr.io",
            "--acr-refresh-token",
            "acr-refresh-5f5f",
        ],
    );
    let config = gcp_entry("gar", "europe-docker.pkg.dev/credfs-test")
        + &acr_entry(
            "acr",
            "myreg.azurecr.io",
            &server,
            &app("entra-secret-7c1f"),
        );
    let mut daemon = start(&config, &server, &[("gar", &key)], &[]);
    daemon.secret("acr-refresh-5f5f");
    (server, key, daemon)
}

#[test]
fn credfs_get_serves_both() {
    let (server, _key, daemon) = serving_both();
    let get = |image: &str| {
        let out = run(
            BIN,
            &["get", image, "--mount", &daemon.mnt.to_string_lossy()],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON")
    };
    assert_eq!(
        get("europe-docker.pkg.dev/credfs-test/app:1"),
        json!({ "username": GCP_USER, "password": format!("ya29.{}-k1", server.secret) })
    );
    assert_eq!(
        get("myreg.azurecr.io/team/app:1"),
        json!({ "username": ACR_USER, "password": "acr-refresh-5f5f" })
    );
}

#[test]
fn the_kubelet_plugin_serves_both() {
    let (server, _key, daemon) = serving_both();
    let ask = |image: &str| {
        let request = json!({
            "kind": "CredentialProviderRequest",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "image": image,
        });
        let mut child = Command::new(BIN)
            .arg("kubelet-credential-provider")
            .env("CREDFS_MOUNT", &daemon.mnt)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("credfs");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(request.to_string().as_bytes())
            .expect("request");
        drop(stdin);
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON")
    };
    let gar = ask("europe-docker.pkg.dev/credfs-test/app:1");
    assert_eq!(gar["cacheKeyType"], "Image", "a registry with a path");
    assert_eq!(
        gar["auth"],
        json!({ "europe-docker.pkg.dev/credfs-test": {
            "username": GCP_USER, "password": format!("ya29.{}-k1", server.secret) } })
    );
    let acr = ask("myreg.azurecr.io/team/app:1");
    assert_eq!(acr["cacheKeyType"], "Registry");
    assert_eq!(
        acr["auth"],
        json!({ "myreg.azurecr.io": { "username": ACR_USER, "password": "acr-refresh-5f5f" } })
    );
    let cache = acr["cacheDuration"].as_str().expect("a Go duration");
    assert!(
        cache.starts_with("1h29m") || cache.starts_with("1h30m"),
        "half of 3 h: {cache}"
    );
}
