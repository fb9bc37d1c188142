//! `credfs check` and `credfs mount` on good and bad config files.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credfs.toml");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    ConfigFile { _dir: dir, path }
}

/// Runs `credfs check` and returns (exit code, stdout, stderr).
fn check(file: &ConfigFile) -> (Option<i32>, String, String) {
    let out = run(BIN, &["check", "--config", &file.path.to_string_lossy()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

fn assert_refused(text: &str, location: &str, message: &str) {
    let file = config_file(text);
    let (code, _, err) = check(&file);
    assert_eq!(code, Some(1), "{text}");
    let expected = format!("{}:{location}: {message}", file.path.display());
    assert!(err.contains(&expected), "expected {expected:?} in {err:?}");
}

const GOOD: &str = r#"
[registries.hub]
provider = "static"
registry = "docker.io"
username = "u"
password = "p"
[stores.disk]
provider = "filesystem"
root = "/var/tmp/credfs-check-test"
buckets = ["b"]
"#;

#[test]
fn a_good_config_passes() {
    let file = config_file(GOOD);
    let (code, out, err) = check(&file);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(": ok (1 registries, 1 stores, 0 secret groups)"),
        "{out}"
    );
}

#[test]
fn the_default_config_passes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/credfs.toml");
    let out = run(BIN, &["check", "--config", path]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_example_config_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples");
    // A gcp `key` is read and checked at load: examples get a real one.
    let keys = tempfile::tempdir().unwrap();
    let service_account = keys.path().join("sa.json");
    common::token_servers::KeyPair::generate()
        .write_service_account(&service_account, "https://oauth2.googleapis.com/token");
    let mut seen = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        // Examples name env variables and files of a real host: check syntax
        // and schema with those sources replaced by literals.
        let text = regex_free_replace(&text);
        let text = with_key_file(&text, &service_account);
        let file = config_file(&text);
        let (code, _, err) = check(&file);
        assert_eq!(code, Some(0), "{}: {err}", path.display());
        seen += 1;
    }
    assert!(seen >= 7, "one example per real setup");
}

/// A gcp registry's `key = …` names `key`, a real service-account key.
fn with_key_file(text: &str, key: &std::path::Path) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.starts_with("key = ") {
            true => format!("key = {{ file = \"{}\" }}", key.display()),
            false => line.to_string(),
        })
        .collect();
    lines.join("\n")
}

/// `{ env = "X" }` and `{ file = "X" }` become "X".
fn regex_free_replace(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let replaced = match (line.find("{ env = "), line.find("{ file = ")) {
            (Some(at), _) | (_, Some(at)) => {
                let value_start = line[at..].find('"').map(|i| at + i).unwrap_or(at);
                let value_end = line[value_start + 1..]
                    .find('"')
                    .map(|i| value_start + 1 + i)
                    .unwrap_or(line.len());
                format!("{}{}", &line[..at], &line[value_start..=value_end])
            }
            _ => line.to_string(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    out
}

#[test]
fn bad_toml_is_refused_with_its_location() {
    assert_refused("[mount\npath = 1\n", "1:7", "");
    assert_refused(
        "[mount]\npath = \"/x\"\npath = \"/y\"\n",
        "3:1",
        "duplicate key",
    );
}

#[test]
fn unknown_keys_are_refused() {
    assert_refused(
        "[mount]\nallow_others = true\n",
        "2:1",
        "unknown field `allow_others`",
    );
    assert_refused(
        "[registries.x]\nprovider = \"static\"\nregistry = \"r\"\nusername = \"u\"\npassword = \"p\"\nregion = \"eu-west-1\"\n",
        "6:10",
        "key `region` is not valid for provider `static`",
    );
}

#[test]
fn missing_fields_are_refused() {
    assert_refused(
        "[registries.x]\nregistry = \"r\"\n",
        "1:1",
        "missing field `provider`",
    );
    assert_refused(
        "[registries.e]\nprovider = \"ecr\"\n",
        "1:1",
        "missing field `region`",
    );
    assert_refused(
        "[stores.s]\nprovider = \"filesystem\"\nbuckets = [\"b\"]\n",
        "1:1",
        "missing field `root`",
    );
}

#[test]
fn cloud_registries_need_one_credential_source() {
    assert_refused(
        "[registries.a]\nprovider = \"acr\"\nregistry = \"r.azurecr.io\"\n",
        "1:1",
        "provider `acr` needs a credential source: `client_secret`, `federated_token_file` or `managed_identity = true`",
    );
    assert_refused(
        "[registries.a]\nprovider = \"acr\"\nregistry = \"r.azurecr.io\"\nmanaged_identity = true\nclient_secret = \"s\"\n",
        "5:17",
        "`client_secret` is a second credential source besides `managed_identity`; keep one",
    );
    assert_refused(
        "[registries.g]\nprovider = \"gcp\"\nregistry = \"gcr.io\"\nkey = \"not json\"\n",
        "4:7",
        "`key` is not a service-account JSON key (line 1, column 2)",
    );
}

#[test]
fn unknown_providers_are_refused() {
    assert_refused(
        "[registries.x]\nprovider = \"quay\"\n",
        "2:12",
        "unknown registry provider `quay`",
    );
    assert_refused(
        "[stores.x]\nprovider = \"ftp\"\nbuckets = [\"b\"]\n",
        "2:12",
        "unknown store provider `ftp`",
    );
}

#[test]
fn duplicate_buckets_are_refused() {
    assert_refused(
        "[stores.a]\nprovider = \"filesystem\"\nroot = \"/a\"\nbuckets = [\"b\"]\n[stores.c]\nprovider = \"filesystem\"\nroot = \"/c\"\nbuckets = [\"b\"]\n",
        "8:12",
        "duplicate bucket `b`: already served by store `a`",
    );
}

#[test]
fn invalid_names_are_refused() {
    assert_refused(
        "[secrets.\"a b\"]\nk = \"v\"\n",
        "1:10",
        "invalid secret group name `a b`",
    );
    assert_refused(
        "[stores.a]\nprovider = \"filesystem\"\nroot = \"/a\"\nbuckets = [\"../up\"]\n",
        "4:12",
        "invalid bucket name `../up`",
    );
}

#[test]
fn missing_secret_sources_are_refused() {
    assert_refused(
        "[secrets.g]\nk = { file = \"/nonexistent/credfs/secret\" }\n",
        "2:5",
        "cannot read secret file `/nonexistent/credfs/secret`: No such file or directory",
    );
    assert_refused(
        "[secrets.g]\nk = { env = \"CREDFS_CHECK_TEST_UNSET\" }\n",
        "2:5",
        "environment variable `CREDFS_CHECK_TEST_UNSET` is not set",
    );
}

#[test]
fn an_unquoted_secret_is_refused_without_its_value() {
    for (text, location, kind, value) in [
        (
            "[secrets.app]\npin = 9482913071\n",
            "2:7",
            "an integer",
            "9482913071",
        ),
        (
            "[registries.x]\nprovider = \"static\"\nregistry = \"r\"\nusername = \"u\"\npassword = 12345.678\n",
            "5:12",
            "a float",
            "12345",
        ),
    ] {
        let file = config_file(text);
        let (code, out, err) = check(&file);
        assert_eq!(code, Some(1), "{text}");
        let expected = format!(
            "{}:{location}: a secret value must be a string, `{{ file = … }}` or `{{ env = … }}`; found {kind}",
            file.path.display()
        );
        assert!(err.contains(&expected), "expected {expected:?} in {err:?}");
        assert!(!err.contains(value) && !out.contains(value), "{out}{err}");
    }
}

#[test]
fn group_or_world_writable_configs_are_refused() {
    for mode in [0o620, 0o602, 0o666] {
        let file = config_file(GOOD);
        fs::set_permissions(&file.path, fs::Permissions::from_mode(mode)).unwrap();
        let (code, _, err) = check(&file);
        assert_eq!(code, Some(1));
        let who = match mode {
            0o620 => "group",
            0o602 => "others",
            _ => "group and others",
        };
        let expected = format!(
            "{path}:1:1: config file {path} is writable by {who} (mode {mode:04o}); it can name programs credfs runs",
            path = file.path.display()
        );
        assert!(err.contains(&expected), "{err}");
    }
}

#[test]
fn configs_owned_by_another_user_are_refused() {
    let file = config_file(GOOD);
    std::os::unix::fs::chown(&file.path, Some(1000), Some(1000)).unwrap();
    let (code, _, err) = check(&file);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            ":1:1: config file {} is owned by uid 1000, not by root or the daemon's uid 0",
            file.path.display()
        )),
        "{err}"
    );
}

#[test]
fn mount_refuses_a_bad_config_with_the_same_message() {
    let file = config_file("[registries.x]\nprovider = \"quay\"\n");
    let (_, _, check_err) = check(&file);
    let mnt = tempfile::tempdir().unwrap();
    let out = run(
        BIN,
        &[
            "mount",
            "--config",
            &file.path.to_string_lossy(),
            &mnt.path().to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), check_err);
    assert!(!is_mounted(mnt.path()));
}

#[test]
fn a_missing_config_file_is_refused() {
    let out = run(BIN, &["check", "--config", "/nonexistent/credfs.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("/nonexistent/credfs.toml:1:1: cannot read config: No such file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn probe_reports_each_entry_without_secrets() {
    let file = config_file(
        "[registries.hub]\nprovider = \"static\"\nregistry = \"docker.io\"\nusername = \"u\"\npassword = \"probe-secret-77\"\n[registries.ecr]\nprovider = \"ecr\"\nregion = \"us-east-1\"\n",
    );
    let out = run(
        BIN,
        &["check", "--probe", "--config", &file.path.to_string_lossy()],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the ecr registry cannot be fetched"
    );
    assert!(text.contains("registry hub: ok"), "{text}");
    assert!(text.contains("registry ecr: error:"), "{text}");
    assert!(!text.contains("probe-secret-77"));
}

#[test]
fn part_sizes_outside_what_s3_takes_are_refused() {
    let store = |part: &str| {
        format!(
            "[stores.s3]\nprovider = \"s3\"\nregion = \"us-east-1\"\nbuckets = [\"b\"]\nspool_dir = \"/var/lib/credfs/spool-check\"\npart_size = \"{part}\"\n"
        )
    };
    assert_refused(
        &store("6GiB"),
        "6:13",
        "part_size `6GiB` is above the 5GiB maximum of S3 multipart uploads",
    );
    assert_refused(
        &store("4MiB"),
        "6:13",
        "part_size `4MiB` is below the 5MiB minimum of S3 multipart uploads",
    );
    let at_most = config_file(&store("5GiB"));
    let (code, _, err) = check(&at_most);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_non_utf8_argument_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"ghcr.io/\xff/app");
    for program in [BIN, env!("CARGO_BIN_EXE_credfs-helper")] {
        let out = std::process::Command::new(program)
            .arg("get")
            .arg(bad)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{program}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("arguments must be UTF-8 text"),
            "{}",
            stderr(&out)
        );
    }
}
