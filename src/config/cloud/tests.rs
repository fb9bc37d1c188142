use super::super::checker::testing::{errors, tempfile_dir};
use super::super::{RegistryProviderConfig, parse};
use super::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A 2048-bit RSA key in PKCS#8 PEM, as Google's keys hold, made once.
fn rsa_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl (tests/run.sh installs it)");
        assert!(out.status.success(), "openssl genpkey failed");
        String::from_utf8(out.stdout).expect("PEM")
    })
}

fn key_json(fields: &[(&str, &str)]) -> String {
    let mut key = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": rsa_pem(),
        "client_email": "pusher@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    for (name, value) in fields {
        match *value {
            "-" => {
                key.as_object_mut().map(|k| k.remove(*name));
            }
            _ => key[*name] = serde_json::Value::from(*value),
        }
    }
    key.to_string()
}

/// `c.toml` in a directory of its own holding `key.json`.
fn with_key(name: &str, key: &str) -> PathBuf {
    let dir = tempfile_dir(name);
    fs::write(dir.join("key.json"), key).unwrap();
    dir
}

fn gcp(dir: &Path, extra: &str) -> std::result::Result<GcpConfig, Vec<String>> {
    let text = format!(
        "[registries.g]\nprovider = \"gcp\"\nregistry = \"europe-docker.pkg.dev/p/r\"\n{extra}"
    );
    match parse(&dir.join("c.toml"), &text) {
        Ok(config) => match &config.registries["g"].provider {
            RegistryProviderConfig::Gcp(gcp) => Ok(gcp.clone()),
            other => panic!("{other:?}"),
        },
        Err(e) => Err(e.0.iter().map(|e| e.message.clone()).collect()),
    }
}

#[test]
fn a_gcp_key_file_is_read_and_checked_at_load() {
    let dir = with_key("gcp-key", &key_json(&[]));
    let config = gcp(&dir, "key = { file = \"key.json\" }\n").expect("valid");
    let GcpSource::ServiceAccount(key) = &config.source else {
        panic!("{config:?}");
    };
    assert_eq!(key.client_email, "pusher@p.iam.gserviceaccount.com");
    assert_eq!(key.private_key_id.as_deref(), Some("kid-1"));
    assert_eq!(key.token_uri, GOOGLE_TOKEN_URI);
    assert_eq!(key.private_key.expose(), rsa_pem().as_bytes());
    let config = gcp(
        &dir,
        "key = { file = \"key.json\" }\ntoken_uri = \"http://127.0.0.1:9/token\"\n",
    )
    .expect("valid");
    let GcpSource::ServiceAccount(key) = &config.source else {
        panic!("{config:?}");
    };
    assert_eq!(key.token_uri, "http://127.0.0.1:9/token", "the config wins");
    fs::write(dir.join("key.json"), key_json(&[("token_uri", "-")])).unwrap();
    let config = gcp(&dir, "key = { file = \"key.json\" }\n").expect("valid");
    let GcpSource::ServiceAccount(key) = &config.source else {
        panic!("{config:?}");
    };
    assert_eq!(key.token_uri, GOOGLE_TOKEN_URI, "Google's by default");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn without_a_key_gcp_asks_the_metadata_server() {
    let dir = tempfile_dir("gcp-metadata");
    let config = gcp(&dir, "").expect("valid");
    assert_eq!(config.source, GcpSource::Metadata { host: None });
    assert_eq!(config.registry, "europe-docker.pkg.dev/p/r");
    let config = gcp(&dir, "metadata_host = \"127.0.0.1:8080\"\n").expect("valid");
    assert_eq!(
        config.source,
        GcpSource::Metadata {
            host: Some("127.0.0.1:8080".into())
        }
    );
}

#[test]
fn bad_gcp_keys_are_refused_without_quoting_them() {
    let secret = "hunter2-not-a-key";
    for (key, expected) in [
        (
            format!("{{\"type\": \"service_account\",\n \"private_key\": {secret}}}"),
            "`key` is not a service-account JSON key (line 2, column 17)".to_string(),
        ),
        (
            key_json(&[("type", "authorized_user")]),
            "`key` is a credential of type `authorized_user`; credfs takes a `service_account` key".into(),
        ),
        (
            key_json(&[("type", "-")]),
            "`key` has no `type`: expected a service-account JSON key".into(),
        ),
        (
            key_json(&[("client_email", "-")]),
            "the service-account key has no `client_email`".into(),
        ),
        (
            key_json(&[("private_key", secret)]),
            "the service-account key's `private_key` is not an RSA private key in PEM".into(),
        ),
        (
            key_json(&[("token_uri", "ftp://x")]),
            "the service-account key's `token_uri`: invalid URL `ftp://x`: expected http://host[:port][/path] or https://…".into(),
        ),
    ] {
        let dir = with_key("gcp-bad", &key);
        let e = gcp(&dir, "key = { file = \"key.json\" }\n").expect_err(&key);
        assert_eq!(e, [expected], "{key}");
        assert!(!e[0].contains(secret));
        let _ = fs::remove_dir_all(dir);
    }
}

#[test]
fn gcp_keys_that_contradict_the_source_are_refused_with_their_place() {
    let e = errors(
        "[registries.g]\nprovider = \"gcp\"\nregistry = \"gcr.io\"\ntoken_uri = \"https://t/token\"\n",
    );
    assert_eq!(
        e,
        [
            "c.toml:4:13: key `token_uri` needs a `key`: without one, tokens come from the metadata server"
        ]
    );
    let dir = with_key("gcp-contradict", &key_json(&[]));
    let text = format!(
        "[registries.g]\nprovider = \"gcp\"\nregistry = \"gcr.io\"\nkey = {{ file = \"{}\" }}\nmetadata_host = \"m\"\n",
        dir.join("key.json").display()
    );
    assert_eq!(
        errors(&text),
        ["c.toml:5:17: key `metadata_host` is for the metadata server, which a `key` replaces"]
    );
    let _ = fs::remove_dir_all(dir);
    assert_eq!(
        errors(
            "[registries.g]\nprovider = \"gcp\"\nregistry = \"gcr.io\"\nmetadata_host = \"http://m\"\n"
        ),
        ["c.toml:4:17: invalid host `http://m`: expected host[:port] without a scheme"]
    );
    assert_eq!(
        errors("[registries.g]\nprovider = \"gcp\"\n"),
        ["c.toml:1:1: missing field `registry`"]
    );
    assert_eq!(
        errors("[registries.g]\nprovider = \"gcp\"\nregistry = \"gcr.io\"\nclient_id = \"c\"\n"),
        ["c.toml:4:13: key `client_id` is not valid for provider `gcp`"]
    );
}

fn acr(dir: &Path, extra: &str) -> std::result::Result<AcrConfig, Vec<String>> {
    let text =
        format!("[registries.a]\nprovider = \"acr\"\nregistry = \"myreg.azurecr.io\"\n{extra}");
    match parse(&dir.join("c.toml"), &text) {
        Ok(config) => match &config.registries["a"].provider {
            RegistryProviderConfig::Acr(acr) => Ok(acr.clone()),
            other => panic!("{other:?}"),
        },
        Err(e) => Err(e
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect()),
    }
}

const APP: &str = "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"c-1\"\n";

#[test]
fn acr_sources_take_their_defaults() {
    let dir = tempfile_dir("acr-sources");
    let config = acr(&dir, &format!("{APP}client_secret = \"s3cret\"\n")).expect("valid");
    assert_eq!(
        config.exchange_url,
        "https://myreg.azurecr.io/oauth2/exchange"
    );
    assert_eq!(config.scope, ARM_SCOPE);
    assert_eq!(
        config.identity,
        AzureIdentity::App {
            authority_host: ENTRA_AUTHORITY_HOST.into(),
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "c-1".into(),
            credential: AppCredential::Secret(Secret::from("s3cret".to_string())),
        }
    );
    let config = acr(
        &dir,
        &format!("{APP}federated_token_file = \"token\"\nauthority_host = \"http://127.0.0.1:9/\"\nexchange_url = \"http://127.0.0.1:9/oauth2/exchange\"\nscope = \"https://management.usgovcloudapi.net/.default\"\n"),
    )
    .expect("a token file that does not exist yet is fine");
    let AzureIdentity::App {
        authority_host,
        credential,
        ..
    } = &config.identity
    else {
        panic!("{config:?}");
    };
    assert_eq!(authority_host, "http://127.0.0.1:9", "no trailing slash");
    assert_eq!(
        credential,
        &AppCredential::FederatedTokenFile(dir.join("token")),
        "relative to the config"
    );
    assert_eq!(config.exchange_url, "http://127.0.0.1:9/oauth2/exchange");
    assert_eq!(
        config.scope,
        "https://management.usgovcloudapi.net/.default"
    );
    let config = acr(&dir, "managed_identity = true\n").expect("valid");
    assert_eq!(
        config.identity,
        AzureIdentity::ManagedIdentity {
            imds_endpoint: AZURE_IMDS_ENDPOINT.into(),
            client_id: None,
            tenant_id: None,
        }
    );
    let config = acr(
        &dir,
        "managed_identity = true\nclient_id = \"mi-1\"\nimds_endpoint = \"http://127.0.0.1:9\"\n",
    )
    .expect("valid");
    assert_eq!(
        config.identity,
        AzureIdentity::ManagedIdentity {
            imds_endpoint: "http://127.0.0.1:9".into(),
            client_id: Some("mi-1".into()),
            tenant_id: None,
        }
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn acr_needs_exactly_one_credential_source() {
    let dir = tempfile_dir("acr-one-source");
    let none = "1:1: provider `acr` needs a credential source: `client_secret`, `federated_token_file` or `managed_identity = true`";
    assert_eq!(acr(&dir, APP).unwrap_err(), [none]);
    assert_eq!(
        acr(&dir, &format!("{APP}managed_identity = false\n")).unwrap_err(),
        [none]
    );
    assert_eq!(
        acr(
            &dir,
            &format!("{APP}client_secret = \"s\"\nfederated_token_file = \"/t\"\nmanaged_identity = true\n")
        )
        .unwrap_err(),
        [
            "7:24: `federated_token_file` is a second credential source besides `client_secret`; keep one",
            "8:20: `managed_identity` is a second credential source besides `client_secret`; keep one",
        ]
    );
    assert_eq!(
        acr(
            &dir,
            "client_secret = { env = \"CREDFS_TEST_UNSET_VAR\" }\n"
        )
        .unwrap_err(),
        [
            "1:1: missing field `tenant_id`",
            "1:1: missing field `client_id`",
            "4:17: environment variable `CREDFS_TEST_UNSET_VAR` is not set",
        ]
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn acr_keys_that_contradict_the_source_are_refused() {
    let dir = tempfile_dir("acr-contradict");
    assert_eq!(
        acr(
            &dir,
            "managed_identity = true\nauthority_host = \"https://login.example\"\n"
        )
        .unwrap_err(),
        [
            "5:18: key `authority_host` is not used with `managed_identity = true`: the token comes from IMDS"
        ]
    );
    assert_eq!(
        acr(
            &dir,
            &format!("{APP}client_secret = \"s\"\nimds_endpoint = \"http://i\"\n")
        )
        .unwrap_err(),
        ["7:17: key `imds_endpoint` is only used with `managed_identity = true`"]
    );
    assert_eq!(
        acr(
            &dir,
            "tenant_id = \"../evil\"\nclient_id = \"c\"\nclient_secret = \"s\"\nexchange_url = \"myreg/exchange\"\n"
        )
        .unwrap_err(),
        [
            "4:13: invalid tenant `../evil`: expected a GUID or a domain name",
            "7:16: invalid URL `myreg/exchange`: expected http://host[:port][/path] or https://…",
        ]
    );
    assert_eq!(
        acr(&dir, "managed_identity = true\nscope = \"a b\"\n").unwrap_err(),
        ["5:9: invalid scope: expected one scope, such as `https://management.azure.com/.default`"]
    );
    assert_eq!(
        acr(&dir, "managed_identity = true\nkey = \"k\"\n").unwrap_err(),
        ["5:7: key `key` is not valid for provider `acr`"]
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn an_untrusted_federated_token_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile_dir("acr-untrusted");
    let open = dir.join("open");
    fs::create_dir_all(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let e = acr(
        &dir,
        &format!("{APP}federated_token_file = \"open/token\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("6:24: federated token file ")
            && e[0].contains("writable by group and others"),
        "{e:?}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn token_endpoints_in_plain_http_are_refused_unless_they_stay_on_this_host() {
    let acr = "[registries.a]\nprovider = \"acr\"\nregistry = \"r.azurecr.io\"\n";
    let e = errors(&format!(
        "{acr}managed_identity = true\nexchange_url = \"http://r.azurecr.io/oauth2/exchange\"\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("c.toml:5:16: `http://r.azurecr.io/oauth2/exchange` is plain http"),
        "{e:?}"
    );
    for local in [
        "http://127.0.0.1:9",
        "http://localhost:9",
        "http://[::1]:9",
        "http://169.254.169.254",
    ] {
        assert!(
            check_url(local).is_ok(),
            "{local} stays on this host: {:?}",
            check_url(local)
        );
    }
    assert!(check_url("http://10.0.0.1/token").is_err());
    assert!(check_url("https://login.example.com").is_ok());
}
