//! Live config: edits of the config file and of the secret files it names
//! apply without SIGHUP or a remount, whatever way the editor writes, while
//! readers of untouched entries keep reading without an error.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const KEPT_TOKEN: &str = "kept-token-never-changes";
const STABLE_KEY: &str = "stable-value-never-changes";
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A config whose `changing` registry and `rotating.value` secret differ
/// from version to version, and whose other entries never change.
fn config(version: &str) -> String {
    format!(
        "[registries.kept]\nprovider = \"static\"\nregistry = \"kept.example\"\nusername = \"u\"\npassword = \"{KEPT_TOKEN}\"\n\
         [registries.changing]\nprovider = \"static\"\nregistry = \"changing.example\"\nusername = \"u\"\npassword = \"token-{version}\"\n\
         [secrets.stable]\nkey = \"{STABLE_KEY}\"\n\
         [secrets.rotating]\nvalue = \"value-{version}\"\n"
    )
}

/// A daemon for `text` whose never-changing values must stay out of its log.
fn prepared(text: &str) -> Daemon {
    let mut daemon = Daemon::prepare(text);
    daemon.secret(KEPT_TOKEN);
    daemon.secret(STABLE_KEY);
    daemon
}

fn read(path: &Path) -> String {
    String::from_utf8(fs::read(path).unwrap_or_default()).unwrap_or_default()
}

fn wait_for_version(daemon: &Daemon, version: &str) {
    let token = daemon.path("registries/changing/token");
    let expected = format!("token-{version}");
    wait_or_explain(daemon, &format!("version {version}"), || {
        read(&token) == expected
    });
}

/// Polls `condition` for APPLY_TIMEOUT; on failure shows what the daemon
/// logged besides FUSE traffic.
fn wait_or_explain(daemon: &Daemon, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + APPLY_TIMEOUT;
    while !condition() {
        if std::time::Instant::now() > deadline {
            let log = daemon.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("Z ") && !l.contains("FUSE("))
                .collect();
            panic!(
                "timed out waiting for {what}; daemon log:\n{}",
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Eight threads reading entries no edit touches; each failed or wrong read
/// is counted.
struct Readers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

impl Readers {
    fn start(daemon: &Daemon) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let untouched = [
            (daemon.path("registries/kept/token"), KEPT_TOKEN),
            (daemon.path("secrets/stable/key"), STABLE_KEY),
        ];
        let threads = (0..8)
            .map(|i| {
                let (path, expected) = untouched[i % 2].clone();
                let (stop, reads) = (stop.clone(), reads.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match fs::read(&path) {
                            Ok(bytes) if bytes == expected.as_bytes() => {}
                            Ok(bytes) => failures.push(format!(
                                "{}: read {} bytes, not the value",
                                path.display(),
                                bytes.len()
                            )),
                            Err(e) => failures.push(format!("{}: {e}", path.display())),
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        Readers {
            stop,
            reads,
            threads,
        }
    }

    fn assert_no_error(self) {
        self.stop.store(true, Ordering::Relaxed);
        let failures: Vec<String> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("reader thread"))
            .collect();
        assert!(self.reads.load(Ordering::Relaxed) > 100, "the readers ran");
        assert!(failures.is_empty(), "readers saw errors: {failures:?}");
    }
}

fn write_in_place(path: &Path, text: &str) {
    fs::write(path, text).expect("write in place");
}

fn write_and_rename(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp~");
    fs::write(&temporary, text).expect("write temporary");
    fs::rename(&temporary, path).expect("rename over");
}

fn delete_and_recreate(path: &Path, text: &str) {
    fs::remove_file(path).expect("delete");
    fs::write(path, text).expect("recreate");
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn status(daemon: &Daemon) -> serde_json::Value {
    serde_json::from_str(&read(&daemon.path("status.json"))).expect("status.json is JSON")
}

fn last_error(daemon: &Daemon) -> String {
    status(daemon)["last_error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_edit_style_applies_while_untouched_entries_keep_serving() {
    require_program("sed");
    let mut daemon = prepared(&config("v0"));
    daemon.spawn();
    let config_path = daemon.config.clone();
    wait_for_version(&daemon, "v0");
    let readers = Readers::start(&daemon);

    write_in_place(&config_path, &config("v1"));
    wait_for_version(&daemon, "v1");

    write_and_rename(&config_path, &config("v2"));
    wait_for_version(&daemon, "v2");

    // sed -i writes a temporary file and renames it over the config.
    let out = run(
        "sed",
        &["-i", "s/-v2\"/-v3\"/g", &config_path.to_string_lossy()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for_version(&daemon, "v3");
    assert_eq!(
        read(&daemon.path("secrets/rotating/value")),
        "value-v3",
        "one edit changes every entry it touches"
    );

    delete_and_recreate(&config_path, &config("v4"));
    set_mode(&config_path, 0o600);
    wait_for_version(&daemon, "v4");

    readers.assert_no_error();
    assert!(daemon.log().contains("config reloaded"));
    assert!(
        status(&daemon)["last_error"].is_null(),
        "no edit was refused: {}",
        status(&daemon)
    );
}

/// Kubernetes mounts a ConfigMap as `config.toml -> ..data/config.toml`,
/// `..data -> ..<timestamp>`, and updates it by swapping `..data`.
#[test]
fn a_configmap_symlink_swap_applies() {
    let mut daemon = Daemon::prepare("");
    let configmap = daemon.dir.path().join("configmap");
    let publish = |version: &str| -> PathBuf {
        let generation = configmap.join(format!("..{version}"));
        fs::create_dir_all(&generation).expect("generation dir");
        fs::write(generation.join("config.toml"), config(version)).expect("config");
        set_mode(&generation.join("config.toml"), 0o600);
        let staged = configmap.join("..data_tmp");
        symlink(format!("..{version}"), &staged).expect("symlink");
        fs::rename(&staged, configmap.join("..data")).expect("swap ..data");
        generation
    };
    let first = publish("k1");
    symlink("..data/config.toml", configmap.join("config.toml")).expect("symlink config");
    daemon.config = configmap.join("config.toml");
    daemon.spawn();
    wait_for_version(&daemon, "k1");
    let readers = Readers::start(&daemon);

    publish("k2");
    fs::remove_dir_all(first).expect("drop the old generation");
    wait_for_version(&daemon, "k2");
    let second_swap = publish("k3");
    wait_for_version(&daemon, "k3");
    // An edit of the file the link resolves to applies too.
    write_in_place(&second_swap.join("config.toml"), &config("k4"));
    wait_for_version(&daemon, "k4");

    readers.assert_no_error();
}

#[test]
fn a_hundred_rapid_edits_end_in_the_last_valid_file() {
    let mut daemon = prepared(&config("e0"));
    daemon.spawn();
    let readers = Readers::start(&daemon);
    for i in 1..=100 {
        let text = if i % 7 == 0 {
            "[registries.changing\n".to_string()
        } else {
            config(&format!("e{i}"))
        };
        match i % 3 {
            0 => write_in_place(&daemon.config, &text),
            _ => write_and_rename(&daemon.config, &text),
        }
    }
    wait_for_version(&daemon, "e100");
    assert_eq!(read(&daemon.path("secrets/rotating/value")), "value-e100");
    readers.assert_no_error();
    // Settled: nothing newer arrives and no refusal is left over.
    wait_for("no refusal left over", APPLY_TIMEOUT, || {
        status(&daemon)["last_error"].is_null()
    });
}

#[test]
fn a_broken_edit_is_refused_with_its_place_and_the_fixed_one_applies() {
    let mut daemon = prepared(&config("b1"));
    daemon.spawn();
    let readers = Readers::start(&daemon);

    // Bad TOML.
    write_in_place(
        &daemon.config,
        "[registries.changing\nprovider = \"static\"\n",
    );
    let place = format!("{}:1:", daemon.config.display());
    wait_for("the refusal in status.json", APPLY_TIMEOUT, || {
        last_error(&daemon).contains(&place)
    });
    assert!(daemon.log().contains("config reload refused"));
    assert_eq!(read(&daemon.path("registries/changing/token")), "token-b1");

    // An unknown key.
    write_and_rename(
        &daemon.config,
        &(config("b2") + "[mount]\ncolour = \"red\"\n"),
    );
    let place = format!("{}:16:1: ", daemon.config.display());
    wait_for("the unknown key refused", APPLY_TIMEOUT, || {
        last_error(&daemon).contains(&place)
    });
    assert!(
        last_error(&daemon).contains("colour"),
        "{}",
        last_error(&daemon)
    );
    assert_eq!(read(&daemon.path("registries/changing/token")), "token-b1");

    // A secret file that does not exist yet: refused, then applied once the
    // file appears, without another edit of the config.
    let secret_file = daemon.dir.path().join("secrets.d/late");
    write_and_rename(
        &daemon.config,
        &(config("b3") + "[secrets.late]\nvalue = { file = \"secrets.d/late\" }\n"),
    );
    wait_for("the missing secret file refused", APPLY_TIMEOUT, || {
        last_error(&daemon).contains("cannot read secret file `secrets.d/late`")
    });
    assert!(
        last_error(&daemon).contains(&format!("{}:16:", daemon.config.display())),
        "{}",
        last_error(&daemon)
    );
    fs::create_dir_all(secret_file.parent().expect("parent")).expect("mkdir");
    fs::write(&secret_file, "late-value\n").expect("secret file");
    wait_for_version(&daemon, "b3");
    assert_eq!(read(&daemon.path("secrets/late/value")), "late-value");
    assert!(status(&daemon)["last_error"].is_null());

    // Unsafe permissions: refused until they are fixed.
    write_in_place(&daemon.config, &config("b4"));
    set_mode(&daemon.config, 0o666);
    wait_for("the unsafe mode refused", APPLY_TIMEOUT, || {
        last_error(&daemon).contains("is writable by group and others (mode 0666)")
    });
    set_mode(&daemon.config, 0o600);
    wait_for_version(&daemon, "b4");
    readers.assert_no_error();
}

#[test]
fn a_deleted_config_keeps_the_last_good_one_serving() {
    let mut daemon = prepared(&config("d1"));
    daemon.spawn();
    let readers = Readers::start(&daemon);
    fs::remove_file(&daemon.config).expect("delete the config");
    wait_for("the deletion noticed", APPLY_TIMEOUT, || {
        last_error(&daemon).contains("cannot read config")
    });
    assert_eq!(read(&daemon.path("registries/changing/token")), "token-d1");
    assert_eq!(read(&daemon.path("secrets/rotating/value")), "value-d1");
    // Written anew, by a tool that creates it in place.
    write_in_place(&daemon.config, &config("d2"));
    set_mode(&daemon.config, 0o600);
    wait_for_version(&daemon, "d2");
    readers.assert_no_error();
}

#[test]
fn an_empty_config_file_is_refused_on_reload() {
    let mut daemon = prepared(&config("z1"));
    daemon.spawn();
    write_in_place(&daemon.config, "");
    wait_for("the empty file refused", APPLY_TIMEOUT, || {
        last_error(&daemon).contains("the config file is empty")
    });
    assert_eq!(read(&daemon.path("registries/changing/token")), "token-z1");
    write_in_place(&daemon.config, &config("z2"));
    wait_for_version(&daemon, "z2");
}

#[test]
fn a_rotated_secret_file_is_served_within_a_second() {
    let mut daemon = Daemon::prepare(
        "[secrets.db]\npassword = { file = \"db-password\" }\n\
         [registries.hub]\nprovider = \"static\"\nregistry = \"docker.io\"\nusername = \"u\"\npassword = { file = \"/@DIR@/hub-token\" }\n",
    );
    let db_file = daemon.dir.path().join("db-password");
    let hub_file = daemon.dir.path().join("hub-token");
    fs::write(&db_file, "db-secret-one\n").expect("secret");
    fs::write(&hub_file, "hub-secret-one").expect("secret");
    for value in [
        "db-secret-one",
        "db-secret-two",
        "hub-secret-one",
        "hub-secret-two",
    ] {
        daemon.secret(value);
    }
    daemon.spawn();
    let db = daemon.path("secrets/db/password");
    let hub = daemon.path("registries/hub/token");
    assert_eq!(read(&db), "db-secret-one");
    assert_eq!(read(&hub), "hub-secret-one");

    // Rotated by rename, as secret managers and Kubernetes do.
    write_and_rename(&db_file, "db-secret-two\n");
    wait_for("the rotated db password", APPLY_TIMEOUT, || {
        read(&db) == "db-secret-two"
    });
    // Rotated in place.
    write_in_place(&hub_file, "hub-secret-two");
    wait_for("the rotated hub token", APPLY_TIMEOUT, || {
        read(&hub) == "hub-secret-two"
    });
    let status = read(&daemon.path("status.json"));
    daemon.assert_no_secret_in(&status, "status.json");
}

/// Readers that keep the changing entry open and cached while it changes
/// must not leave the old bytes in the kernel's page cache: every edit
/// (values of the same length, so the size says nothing) is seen.
#[test]
fn values_read_while_they_change_never_stick_in_the_page_cache() {
    let mut daemon = prepared(&config("s00"));
    daemon.spawn();
    let value = daemon.path("secrets/rotating/value");
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = (0..4)
        .map(|_| {
            let (value, stop) = (value.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = fs::read(&value);
                }
            })
        })
        .collect();
    for i in 1..=30 {
        let version = format!("s{i:02}");
        write_and_rename(&daemon.config, &config(&version));
        let expected = format!("value-{version}");
        wait_or_explain(&daemon, &format!("value {version}"), || {
            read(&value) == expected
        });
    }
    stop.store(true, Ordering::Relaxed);
    for hammer in hammers {
        hammer.join().expect("reader");
    }
}

/// A secret written without quotes is a parse error. The error goes to the
/// log and to status.json (readable by anyone who can reach the mount): it
/// names the place and the type, never the value.
#[test]
fn a_refused_edit_never_shows_an_unquoted_secret() {
    // Longer than the six digits of a log timestamp's fraction, so that a
    // timestamp cannot match it by chance.
    const PIN: &str = "9482913071";
    let mut daemon = prepared(&config("q1"));
    daemon.secret(PIN);
    daemon.secret("94829.13071");
    daemon.spawn();
    let line = config("q2").lines().count() + 2;
    let place = format!("{}:{line}:7: ", daemon.config.display());
    for (value, kind) in [(PIN, "an integer"), ("94829.13071", "a float")] {
        write_and_rename(
            &daemon.config,
            &(config("q2") + &format!("[secrets.app]\npin = {value}\n")),
        );
        wait_for("the refusal in status.json", APPLY_TIMEOUT, || {
            last_error(&daemon).contains(&format!("found {kind}"))
        });
        let reason = last_error(&daemon);
        assert!(
            reason.contains(&format!("{place}a secret value must be a string")),
            "{reason}"
        );
        daemon.assert_no_secret_in(&read(&daemon.path("status.json")), "status.json");
        daemon.assert_no_secret_in(&daemon.log(), "the daemon log");
        assert!(daemon.log().contains("config reload refused"));
        assert_eq!(read(&daemon.path("registries/changing/token")), "token-q1");
    }
    write_and_rename(
        &daemon.config,
        &(config("q3") + "[secrets.app]\npin = \"quoted\"\n"),
    );
    wait_for_version(&daemon, "q3");
    assert_eq!(read(&daemon.path("secrets/app/pin")), "quoted");
}
