//! The `helper` provider with real helper programs (shell scripts), both
//! protocols, and its failures.

mod common;

use common::servers::Registry;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECRET: &str = "helper-secret-7e6d5c";

/// Writes an executable script into the scratch directory.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn helper_entry(name: &str, program: &Path, extra: &str) -> String {
    helper_entry_with_timeout(name, program, "2s", extra)
}

fn helper_entry_with_timeout(name: &str, program: &Path, timeout: &str, extra: &str) -> String {
    format!(
        "[registries.{name}]\nprovider = \"helper\"\nregistry = \"{name}.example\"\ncommand = [\"{}\", \"get\", \"{name}.example/app\"]\ntimeout = \"{timeout}\"\n{extra}\n",
        program.display()
    )
}

/// A daemon whose config is built once its scratch directory exists.
fn start(entries: impl FnOnce(&Path) -> String) -> Daemon {
    let mut daemon = Daemon::prepare("");
    let config = entries(daemon.dir.path());
    fs::write(&daemon.config, config).unwrap();
    daemon.secret(SECRET);
    daemon.spawn();
    daemon
}

fn cat(daemon: &Daemon, path: &str) -> std::process::Output {
    run("cat", &[&daemon.path(path).to_string_lossy()])
}

fn status_reason(daemon: &Daemon, registry: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_slice(&cat(daemon, "status.json").stdout).unwrap();
    assert_eq!(status["registries"][registry]["state"], "error", "{status}");
    status["registries"][registry]["reason"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn thin_edge_and_docker_helpers_provide_credentials() {
    let daemon = start(|dir| {
        let thin_edge = script(
            dir,
            "registry-credentials",
            &format!(
                "echo \"$@\" >> {}/args\necho '{{\"username\": \"te-user\", \"password\": \"{SECRET}\"}}'\n",
                dir.display()
            ),
        );
        let docker = script(
            dir,
            "docker-credential-test",
            &format!(
                "read url\necho \"{{\\\"ServerURL\\\": \\\"$url\\\", \\\"Username\\\": \\\"$url-user\\\", \\\"Secret\\\": \\\"{SECRET}\\\"}}\"\n"
            ),
        );
        helper_entry("te", &thin_edge, "") + &helper_entry("dk", &docker, "protocol = \"docker\"")
    });
    assert_eq!(
        cat(&daemon, "registries/te/token").stdout,
        SECRET.as_bytes()
    );
    assert_eq!(cat(&daemon, "registries/te/username").stdout, b"te-user");
    assert_eq!(
        cat(&daemon, "registries/dk/password").stdout,
        SECRET.as_bytes()
    );
    assert_eq!(
        cat(&daemon, "registries/dk/username").stdout,
        b"dk.example-user",
        "the server URL went to stdin"
    );
    let expires = String::from_utf8(cat(&daemon, "registries/te/expires_at").stdout).unwrap();
    let left = humantime::parse_rfc3339(&expires)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(3500),
        "the default ttl of 1h applies: {left:?}"
    );
    let refresh = sh(&format!(
        "echo > {}",
        daemon.path("registries/te/refresh").display()
    ));
    assert!(refresh.status.success(), "{}", stderr(&refresh));
    let args = fs::read_to_string(daemon.dir.path().join("args")).unwrap();
    assert_eq!(args, "get te.example/app\nget te.example/app --refresh\n");
}

#[test]
fn helper_failures_give_their_documented_errors_and_the_daemon_stays_healthy() {
    let daemon = start(|dir| {
        let hangs = script(dir, "hangs", "exec sleep 30\n");
        let fails = script(
            dir,
            "fails",
            "echo 'boom: the vault is sealed' >&2\nexit 1\n",
        );
        let garbage = script(
            dir,
            "garbage",
            &format!("echo 'password={SECRET} not json'\n"),
        );
        let wrong_shape = script(
            dir,
            "wrong-shape",
            &format!("echo '{{\"user\": \"{SECRET}\"}}'\n"),
        );
        let expired = script(
            dir,
            "expired",
            &format!(
                "echo '{{\"username\": \"u\", \"password\": \"{SECRET}\", \"expires_at\": \"2020-01-01T00:00:00Z\"}}'\n"
            ),
        );
        let good = script(
            dir,
            "good",
            &format!("echo '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n"),
        );
        [
            ("hangs", hangs),
            ("fails", fails),
            ("garbage", garbage),
            ("wrongshape", wrong_shape),
            ("expired", expired),
            ("good", good),
        ]
        .iter()
        .map(|(name, program)| helper_entry(name, program, ""))
        .collect()
    });
    let started = std::time::Instant::now();
    let hang = cat(&daemon, "registries/hangs/token");
    assert!(stderr(&hang).contains("Input/output error"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout stopped the helper"
    );
    assert!(status_reason(&daemon, "hangs").contains("timed out after 2s"));

    assert!(!cat(&daemon, "registries/fails/token").status.success());
    let reason = status_reason(&daemon, "fails");
    assert!(
        reason.contains("exited with exit status: 1: boom: the vault is sealed"),
        "{reason}"
    );

    assert!(!cat(&daemon, "registries/garbage/token").status.success());
    assert!(status_reason(&daemon, "garbage").contains("printed invalid JSON"));
    assert!(!cat(&daemon, "registries/wrongshape/token").status.success());
    assert!(status_reason(&daemon, "wrongshape").contains("printed JSON of the wrong shape"));
    assert!(!cat(&daemon, "registries/expired/token").status.success());
    let reason = status_reason(&daemon, "expired");
    assert!(reason.contains("expires_at has already passed"), "{reason}");
    assert!(
        !reason.contains("2020-01-01"),
        "stdout text is never quoted: {reason}"
    );

    // The daemon is healthy: others still serve, and the status holds no secret.
    assert_eq!(
        cat(&daemon, "registries/good/token").stdout,
        SECRET.as_bytes()
    );
    let status = String::from_utf8(cat(&daemon, "status.json").stdout).unwrap();
    daemon.assert_no_secret_in(&status, "status.json");
}

#[test]
fn a_slow_helper_does_not_stall_other_readers() {
    let daemon = start(|dir| {
        let slow = script(
            dir,
            "slow",
            &format!("sleep 1.5\necho '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n"),
        );
        helper_entry("slow", &slow, "") + "[secrets.s]\nk = \"v\"\n"
    });
    let slow_path = daemon.path("registries/slow/token");
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| run("cat", &[&slow_path.to_string_lossy()]));
        wait_for("the slow helper to start", Duration::from_secs(5), || {
            run(
                "pgrep",
                &["-f", &daemon.dir.path().join("slow").to_string_lossy()],
            )
            .status
            .success()
        });
        for _ in 0..20 {
            assert_eq!(cat(&daemon, "secrets/s/k").stdout, b"v");
        }
        assert!(
            !slow.is_finished(),
            "the other reads finished while the slow one waited"
        );
        assert_eq!(slow.join().unwrap().stdout, SECRET.as_bytes());
    });
}

#[test]
fn cold_concurrent_readers_run_the_helper_once_and_ttl_refreshes_it() {
    let daemon = start(|dir| {
        let counted = script(
            dir,
            "counted",
            &format!(
                "echo run >> {}/runs\nsleep 0.2\necho '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n",
                dir.display()
            ),
        );
        // The first refresh comes after 5% to 50% of the ttl: after 1 s at
        // the soonest, long after the readers are done.
        helper_entry("counted", &counted, "ttl = \"20s\"")
    });
    let runs =
        || fs::read_to_string(daemon.dir.path().join("runs")).map_or(0, |r| r.lines().count());
    let token = daemon.path("registries/counted/token");
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..64)
            .map(|_| scope.spawn(|| run("cat", &[&token.to_string_lossy()])))
            .collect();
        for reader in readers {
            assert_eq!(reader.join().unwrap().stdout, SECRET.as_bytes());
        }
    });
    assert_eq!(runs(), 1);
    wait_for(
        "a refresh before the ttl ends",
        Duration::from_secs(12),
        || runs() >= 2,
    );
}

#[test]
fn a_helper_credential_pushes_to_a_real_registry() {
    let registry = Registry::start("helper-user", SECRET);
    let host = registry.host();
    let daemon = start(|dir| {
        let helper = script(
            dir,
            "h",
            &format!("echo '{{\"username\": \"helper-user\", \"password\": \"{SECRET}\"}}'\n"),
        );
        format!(
            "[registries.local]\nprovider = \"helper\"\nregistry = \"{host}\"\ncommand = [\"{}\"]\n",
            helper.display()
        )
    });
    let out = registry.push(
        &daemon.path("docker/config.json"),
        daemon.dir.path(),
        "from-helper",
    );
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
}

#[test]
fn a_changed_provider_config_drops_only_that_registrys_cached_token() {
    let mut daemon = Daemon::prepare("");
    let dir = daemon.dir.path().to_path_buf();
    let counted = |name: &str| {
        script(
            &dir,
            name,
            &format!(
                "echo run >> {}/{name}.runs\necho '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n",
                dir.display()
            ),
        )
    };
    let (changing, steady) = (counted("changing"), counted("steady"));
    let config = |ttl: &str| {
        helper_entry("changing", &changing, &format!("ttl = \"{ttl}\""))
            + &helper_entry("steady", &steady, "")
    };
    fs::write(&daemon.config, config("1h")).unwrap();
    daemon.secret(SECRET);
    daemon.spawn();
    let runs = |name: &str| {
        fs::read_to_string(dir.join(format!("{name}.runs"))).map_or(0, |r| r.lines().count())
    };
    for name in ["changing", "steady"] {
        assert_eq!(
            cat(&daemon, &format!("registries/{name}/token")).stdout,
            SECRET.as_bytes()
        );
    }
    fs::write(&daemon.config, config("2h")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        daemon.log().contains("config reloaded")
    });
    for name in ["changing", "steady"] {
        assert_eq!(
            cat(&daemon, &format!("registries/{name}/token")).stdout,
            SECRET.as_bytes()
        );
    }
    assert_eq!((runs("changing"), runs("steady")), (2, 1));
}

/// The registry's entry in status.json.
fn status_entry(daemon: &Daemon, registry: &str) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_slice(&cat(daemon, "status.json").stdout).unwrap();
    status["registries"][registry].clone()
}

/// Lines in the counter file a helper appends to on every run.
fn runs_in(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |r| r.lines().count())
}

fn retry_at(entry: &serde_json::Value) -> std::time::SystemTime {
    let text = entry["retry_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{entry}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("retry_at {text}: {e}"))
}

#[test]
fn a_failing_helper_runs_once_for_concurrent_readers_and_ls_then_rests() {
    // The first run hangs until the 2 s timeout; later runs fail at once.
    let daemon = start(|dir| {
        let broken = script(
            dir,
            "broken",
            &format!(
                "echo run >> {0}/runs\nif [ \"$(wc -l < {0}/runs)\" -eq 1 ]; then exec sleep 30; fi\necho 'the vault is sealed' >&2\nexit 1\n",
                dir.display()
            ),
        );
        helper_entry("broken", &broken, "")
    });
    let runs = || runs_in(&daemon.dir.path().join("runs"));
    let token = daemon.path("registries/broken/token");
    let dir = daemon.path("registries/broken");
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let cats: Vec<_> = (0..10)
            .map(|_| scope.spawn(|| run("cat", &[&token.to_string_lossy()])))
            .collect();
        let ls = scope.spawn(|| run("ls", &["-l", &dir.to_string_lossy()]));
        for reader in cats {
            let out = reader.join().unwrap();
            assert!(
                stderr(&out).contains("Input/output error"),
                "{}",
                stderr(&out)
            );
        }
        let listing = ls.join().unwrap();
        assert!(listing.status.success(), "{}", stderr(&listing));
        let listed = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listed.contains(" token\n") && listed.contains(" auth.json\n"),
            "{listed}"
        );
    });
    assert_eq!(runs(), 1, "ten readers and ls -l share one helper run");
    eprintln!(
        "ten cats and ls -l on a hanging helper: {} run in {:?}",
        runs(),
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "one timeout, not one per reader: {:?}",
        started.elapsed()
    );
    let entry = status_entry(&daemon, "broken");
    assert_eq!(entry["state"], "error", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s")
    );
    assert_eq!(entry["failures"], 1);

    // Each rest is over once a read runs the helper again; the rests double.
    for failures in [2, 3] {
        wait_for("the next attempt", Duration::from_secs(10), || {
            let out = cat(&daemon, "registries/broken/token");
            assert!(!out.status.success());
            runs() >= failures
        });
        assert_eq!(runs(), failures);
        let entry = status_entry(&daemon, "broken");
        assert_eq!(entry["failures"], failures, "{entry}");
        assert!(
            entry["reason"]
                .as_str()
                .unwrap()
                .contains("the vault is sealed")
        );
    }
    // The third rest lasts 3.2 s to 4 s: reads fail fast, ls -l runs nothing.
    let entry = status_entry(&daemon, "broken");
    let until = retry_at(&entry);
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_else(|_| panic!("retry_at {entry} is in the past"));
    assert!(
        left > Duration::from_secs(2) && left <= Duration::from_secs(4),
        "{left:?}"
    );
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let out = cat(&daemon, "registries/broken/token");
        assert!(stderr(&out).contains("Input/output error"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "failed fast"
        );
    }
    let listing = run("ls", &["-l", &dir.to_string_lossy()]);
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(
        std::time::SystemTime::now() < until,
        "the checks ran within the rest"
    );
    assert_eq!(runs(), 3, "no run while resting");
    let summary = run(BIN, &["status", &daemon.mnt.to_string_lossy()]);
    assert!(
        String::from_utf8_lossy(&summary.stdout).contains("next attempt at"),
        "{}",
        String::from_utf8_lossy(&summary.stdout)
    );
}

#[test]
fn a_refresh_write_and_credfs_get_refresh_skip_the_rest() {
    let daemon = start(|dir| {
        let flaky = script(
            dir,
            "flaky",
            &format!(
                "echo \"$@\" >> {0}/runs\nif [ -e {0}/fixed ]; then echo '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'; exit 0; fi\necho 'the vault is sealed' >&2\nexit 1\n",
                dir.display()
            ),
        );
        helper_entry("flaky", &flaky, "")
    });
    let dir = daemon.dir.path();
    let runs = || runs_in(&dir.join("runs"));
    let token = "registries/flaky/token";
    // Three failures in a row: the rest is now over three seconds long.
    wait_for("three failed runs", Duration::from_secs(10), || {
        assert!(!cat(&daemon, token).status.success());
        runs() >= 3
    });
    let until = retry_at(&status_entry(&daemon, "flaky"));

    fs::write(dir.join("fixed"), "").unwrap();
    let plain = cat(&daemon, token);
    assert!(
        stderr(&plain).contains("Input/output error"),
        "still resting"
    );
    assert_eq!(runs(), 3);
    let refresh = sh(&format!(
        "echo 1 > {}",
        daemon.path("registries/flaky/refresh").display()
    ));
    assert!(refresh.status.success(), "{}", stderr(&refresh));
    assert!(
        std::time::SystemTime::now() < until,
        "the refresh came within the rest"
    );
    assert_eq!(runs(), 4);
    assert_eq!(cat(&daemon, token).stdout, SECRET.as_bytes());
    assert_eq!(status_entry(&daemon, "flaky")["state"], "ok");

    // Broken again, resting again; `credfs get --refresh` gets through.
    fs::remove_file(dir.join("fixed")).unwrap();
    let refresh = sh(&format!(
        "echo 1 > {}",
        daemon.path("registries/flaky/refresh").display()
    ));
    assert!(
        stderr(&refresh).contains("I/O error"),
        "{}",
        stderr(&refresh)
    );
    assert_eq!(runs(), 5);
    // The cached credential is still valid and served.
    assert_eq!(cat(&daemon, token).stdout, SECRET.as_bytes());
    let entry = status_entry(&daemon, "flaky");
    assert_eq!(entry["state"], "error");
    assert_eq!(
        entry["failures"], 1,
        "the count started again after the success"
    );
    fs::write(dir.join("fixed"), "").unwrap();
    let mnt = daemon.mnt.to_string_lossy();
    let got = run(
        BIN,
        &["get", "flaky.example/app", "--refresh", "--mount", &mnt],
    );
    assert!(got.status.success(), "{}", stderr(&got));
    let answer: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(answer["password"], SECRET);
    assert_eq!(runs(), 6);
    let args = fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(
        args.lines().filter(|l| l.ends_with("--refresh")).count(),
        3,
        "{args}"
    );
    assert_eq!(status_entry(&daemon, "flaky")["state"], "ok");
}

/// A helper that takes `seconds` to answer `user` with the test secret.
fn slow_helper(dir: &Path, name: &str, seconds: &str) -> String {
    let program = script(
        dir,
        name,
        &format!(
            "sleep {seconds}\necho '{{\"username\": \"{name}-user\", \"password\": \"{SECRET}\"}}'\n"
        ),
    );
    format!(
        "[registries.{name}]\nprovider = \"helper\"\nregistry = \"{name}.example\"\ncommand = [\"{}\"]\ntimeout = \"15s\"\n",
        program.display()
    )
}

fn auths(daemon: &Daemon) -> serde_json::Map<String, serde_json::Value> {
    let out = cat(daemon, "docker/config.json");
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    config["auths"].as_object().expect("auths").clone()
}

#[test]
fn docker_config_json_asks_slow_helpers_at_once() {
    let daemon = start(|dir| {
        ["slow1", "slow2", "slow3"]
            .iter()
            .map(|name| slow_helper(dir, name, "2"))
            .collect()
    });
    let started = std::time::Instant::now();
    let auths = auths(&daemon);
    let took = started.elapsed();
    eprintln!("docker/config.json with three 2 s helpers: {took:?}");
    assert!(took < Duration::from_millis(4500), "{took:?}");
    let mut hosts: Vec<&String> = auths.keys().collect();
    hosts.sort();
    assert_eq!(hosts, ["slow1.example", "slow2.example", "slow3.example"]);
}

#[test]
fn credfs_get_does_not_wait_for_other_slow_helpers() {
    let daemon = start(|dir| {
        ["slow1", "slow2", "slow3"]
            .iter()
            .map(|name| slow_helper(dir, name, "2"))
            .collect()
    });
    let mnt = daemon.mnt.to_string_lossy();
    let started = std::time::Instant::now();
    let got = run(BIN, &["get", "slow2.example/app", "--mount", &mnt]);
    let took = started.elapsed();
    eprintln!("credfs get with three 2 s helpers: {took:?}");
    assert!(got.status.success(), "{}", stderr(&got));
    let answer: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(answer["username"], "slow2-user");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    let listed = sh(&format!("{BIN} docker-credential --mount {mnt} list"));
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listing: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listing.as_object().unwrap().len(), 3, "{listing}");
}

#[test]
fn a_hanging_helper_is_left_out_of_docker_config_json_after_the_deadline() {
    let daemon = start(|dir| slow_helper(dir, "hung", "60") + &slow_helper(dir, "quick", "0"));
    let started = std::time::Instant::now();
    let auths = auths(&daemon);
    let took = started.elapsed();
    eprintln!("docker/config.json with one hanging helper: {took:?}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "one 10 s deadline for the lookup and the read together: {took:?}"
    );
    assert!(auths.contains_key("quick.example"), "{auths:?}");
    assert!(!auths.contains_key("hung.example"), "{auths:?}");

    // The hung call goes on; other answers do not wait for it.
    let mnt = daemon.mnt.to_string_lossy();
    let started = std::time::Instant::now();
    let got = run(BIN, &["get", "quick.example/app", "--mount", &mnt]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_for("the helper timeout", Duration::from_secs(20), || {
        status_entry(&daemon, "hung")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("timed out after 15s"))
    });
    let started = std::time::Instant::now();
    assert_eq!(self::auths(&daemon).len(), 1, "left out while resting");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no wait while it rests"
    );
}

/// A copy of `program` at `dir/name`: its processes carry that path in
/// their command line, so they can be told apart from every other one.
fn marked_copy(dir: &Path, program: &str, name: &str) -> PathBuf {
    require_program(program);
    let found = sh(&format!("command -v {program}"));
    let source = String::from_utf8_lossy(&found.stdout).trim().to_string();
    let path = dir.join(name);
    fs::copy(&source, &path).unwrap_or_else(|e| panic!("copy {source}: {e}"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whether a live process runs `program` (a zombie has no command line).
fn running(program: &Path) -> bool {
    run("pgrep", &["-f", &program.to_string_lossy()])
        .status
        .success()
}

/// The processes whose parent is `pid`, zombies included, as "pid state".
fn children_of(pid: u32) -> Vec<String> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name, in parentheses, may hold spaces: fields count
        // from the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            children.push(format!(
                "{} {}",
                entry.file_name().to_string_lossy(),
                fields[0]
            ));
        }
    }
    children
}

#[test]
fn a_helper_gets_a_clean_environment_and_only_its_env_table() {
    const OTHER_SECRET: &str = "other-entry-secret-5b1f";
    const PASSED_ON: &str = "passed-on-from-the-daemon-8c2e";
    let mut daemon = Daemon::prepare("");
    let dir = daemon.dir.path().to_path_buf();
    fs::write(dir.join("helper-file"), "from-a-file-4d7a\n").unwrap();
    let helper = script(
        &dir,
        "env-dumper",
        &format!(
            "env > {}/helper.env\necho \"{{\\\"username\\\": \\\"u\\\", \\\"password\\\": \\\"$TOKEN\\\"}}\"\n",
            dir.display()
        ),
    );
    let config = |token: &str| {
        helper_entry(
            "clean",
            &helper,
            &format!(
                "env = {{ TOKEN = \"{token}\", FROM_ENV = {{ env = \"HELPER_INPUT\" }}, FROM_FILE = {{ file = \"helper-file\" }} }}"
            ),
        ) + "[secrets.other]\nkey = { env = \"OTHER_SECRET\" }\n"
    };
    fs::write(&daemon.config, config("token-one")).unwrap();
    daemon.secret(OTHER_SECRET);
    daemon.secret(PASSED_ON);
    daemon.spawn_with_env(&[("OTHER_SECRET", OTHER_SECRET), ("HELPER_INPUT", PASSED_ON)]);
    assert_eq!(
        cat(&daemon, "secrets/other/key").stdout,
        OTHER_SECRET.as_bytes(),
        "the daemon itself has the other entry's secret"
    );
    assert_eq!(cat(&daemon, "registries/clean/token").stdout, b"token-one");

    let dumped = fs::read_to_string(dir.join("helper.env")).unwrap();
    assert!(!dumped.contains(OTHER_SECRET), "{dumped}");
    let vars: std::collections::BTreeMap<&str, &str> =
        dumped.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("HOME"), Some(&"/nonexistent"));
    assert_eq!(vars.get("TOKEN"), Some(&"token-one"));
    assert_eq!(vars.get("FROM_ENV"), Some(&PASSED_ON));
    assert_eq!(vars.get("FROM_FILE"), Some(&"from-a-file-4d7a"));
    assert_eq!(
        vars.get("PATH").copied(),
        std::env::var("PATH").ok().as_deref(),
        "the daemon's PATH"
    );
    assert_eq!(
        vars.get("LANG").copied(),
        std::env::var("LANG").ok().as_deref()
    );
    // The shell adds PWD (and some shells SHLVL and _) on its own.
    let unexpected: Vec<&&str> = vars
        .keys()
        .filter(|k| {
            ![
                "PATH",
                "HOME",
                "LANG",
                "TOKEN",
                "FROM_ENV",
                "FROM_FILE",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD",
            ]
            .contains(k)
        })
        .collect();
    assert!(unexpected.is_empty(), "the helper got {unexpected:?}");

    // A changed env table is a changed registry: the helper runs again.
    fs::write(&daemon.config, config("token-two")).unwrap();
    wait_for("the new env value", Duration::from_secs(10), || {
        cat(&daemon, "registries/clean/token").stdout == b"token-two"
    });
}

#[test]
fn a_timed_out_helper_leaves_no_process_behind() {
    let mut sleeper = PathBuf::new();
    let daemon = start(|dir| {
        sleeper = marked_copy(dir, "sleep", "sleeper");
        // The forked sleeper is the helper's child; after the exec the
        // helper itself is a sleeper too.
        let forks = script(
            dir,
            "forks-and-hangs",
            &format!(
                "echo $$ $(cut -d' ' -f5 /proc/$$/stat) > {1}/group\n{0} 1001 &\necho $! > {1}/forked.pid\nexec {0} 1003\n",
                sleeper.display(),
                dir.display()
            ),
        );
        helper_entry("forks", &forks, "")
    });
    let started = std::time::Instant::now();
    let read = cat(&daemon, "registries/forks/token");
    assert!(stderr(&read).contains("Input/output error"), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(status_reason(&daemon, "forks").contains("timed out after 2s"));
    assert!(
        daemon.dir.path().join("forked.pid").exists(),
        "the helper forked its sleeper"
    );
    let group = fs::read_to_string(daemon.dir.path().join("group")).unwrap();
    let (pid, pgid) = group.trim().split_once(' ').unwrap();
    assert_eq!(pid, pgid, "the helper leads its own process group");
    wait_for(
        "the helper's whole process group to die",
        Duration::from_secs(5),
        || !running(&sleeper),
    );
    assert_eq!(
        children_of(daemon.pid()),
        Vec::<String>::new(),
        "the helper was reaped"
    );
}

#[test]
fn a_background_child_holding_stdout_does_not_delay_the_answer() {
    let mut sleeper = PathBuf::new();
    let daemon = start(|dir| {
        sleeper = marked_copy(dir, "sleep", "sleeper");
        let leaves = script(
            dir,
            "leaves-a-child",
            &format!(
                "echo '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n{} 1002 &\nexit 0\n",
                sleeper.display()
            ),
        );
        helper_entry_with_timeout("leaves", &leaves, "30s", "")
    });
    let started = std::time::Instant::now();
    assert_eq!(
        cat(&daemon, "registries/leaves/token").stdout,
        SECRET.as_bytes()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered in {:?}, not at the 30s timeout",
        started.elapsed()
    );
    wait_for(
        "the leftover child to be killed with the group",
        Duration::from_secs(5),
        || !running(&sleeper),
    );
    assert_eq!(children_of(daemon.pid()), Vec::<String>::new());
}

#[test]
fn helper_output_is_capped_at_one_mebibyte_per_stream() {
    let mut loud = PathBuf::new();
    let daemon = start(|dir| {
        loud = marked_copy(dir, "yes", "loud");
        let floods_stdout = script(
            dir,
            "floods-stdout",
            &format!("exec {} out\n", loud.display()),
        );
        let floods_stderr = script(
            dir,
            "floods-stderr",
            &format!(
                "echo '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\nexec {} err >&2\n",
                loud.display()
            ),
        );
        // Just under the limit, over many reads: fine.
        let large = script(
            dir,
            "large",
            &format!(
                "printf '{{\"username\": \"u\", \"password\": \"{SECRET}\", \"padding\": \"'\nhead -c 1000000 /dev/zero | tr '\\0' x\nprintf '\"}}'\n"
            ),
        );
        helper_entry_with_timeout("floodsout", &floods_stdout, "30s", "")
            + &helper_entry_with_timeout("floodserr", &floods_stderr, "30s", "")
            + &helper_entry_with_timeout("large", &large, "30s", "")
    });
    let started = std::time::Instant::now();
    for (name, stream) in [("floodsout", "stdout"), ("floodserr", "stderr")] {
        let read = cat(&daemon, &format!("registries/{name}/token"));
        assert!(stderr(&read).contains("Input/output error"), "{read:?}");
        let reason = status_reason(&daemon, name);
        let expected = format!("printed more than 1 MiB on {stream}");
        assert!(reason.contains(&expected), "{reason}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the limit, not the timeout, ended them"
    );
    wait_for(
        "the flooding helpers to be killed",
        Duration::from_secs(5),
        || !running(&loud),
    );
    assert_eq!(
        cat(&daemon, "registries/large/token").stdout,
        SECRET.as_bytes()
    );
}

#[test]
fn an_unparsable_expiry_is_reported_without_its_text() {
    const PRINTED: &str = "expiry-text-never-shown-1e9b";
    let mut daemon = Daemon::prepare("");
    let helper = script(
        daemon.dir.path(),
        "odd-expiry",
        &format!(
            "echo '{{\"username\": \"u\", \"password\": \"{SECRET}\", \"expires_at\": \"{PRINTED}\"}}'\n"
        ),
    );
    fs::write(&daemon.config, helper_entry("odd", &helper, "")).unwrap();
    daemon.secret(SECRET);
    daemon.secret(PRINTED);
    daemon.spawn();
    assert!(!cat(&daemon, "registries/odd/token").status.success());
    let reason = status_reason(&daemon, "odd");
    assert!(
        reason.contains("printed an expires_at that is not an RFC 3339 time"),
        "{reason}"
    );
    let status = String::from_utf8(cat(&daemon, "status.json").stdout).unwrap();
    daemon.assert_no_secret_in(&status, "status.json");
    // Dropping the daemon checks its log for PRINTED too.
}

#[test]
fn a_helper_dies_with_the_daemon() {
    let mut sleeper = PathBuf::new();
    let mut daemon = start(|dir| {
        sleeper = marked_copy(dir, "sleep", "sleeper");
        let hangs = script(dir, "hangs", &format!("exec {} 1004\n", sleeper.display()));
        helper_entry_with_timeout("hangs", &hangs, "60s", "")
    });
    let token = daemon.path("registries/hangs/token");
    let reader = std::thread::spawn(move || fs::read(token));
    wait_for("the helper to start", Duration::from_secs(10), || {
        running(&sleeper)
    });
    daemon.crash();
    wait_for(
        "the helper to die with the daemon",
        Duration::from_secs(5),
        || !running(&sleeper),
    );
    assert!(
        reader.join().unwrap().is_err(),
        "the read failed with the daemon"
    );
}

/// In a container credfs may be PID 1: what a helper leaves behind becomes
/// its child once the helper exits, and must not stay a zombie.
#[test]
fn as_pid_1_the_daemon_reaps_what_a_helper_left_behind() {
    require_program("unshare");
    let mut daemon = Daemon::prepare("");
    let dir = daemon.dir.path().to_path_buf();
    let sleeper = marked_copy(&dir, "sleep", "sleeper");
    let leaves = script(
        &dir,
        "leaves-a-child",
        &format!(
            "echo '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n{} 1005 &\nexit 0\n",
            sleeper.display()
        ),
    );
    fs::write(
        &daemon.config,
        helper_entry_with_timeout("leaves", &leaves, "30s", ""),
    )
    .unwrap();
    daemon.secret(SECRET);
    daemon.spawn_wrapped(&["unshare", "--pid", "--fork"], &[]);
    let unshare = daemon.pid();
    let inner = children_of(unshare);
    assert_eq!(inner.len(), 1, "unshare runs credfs: {inner:?}");
    let credfs: u32 = inner[0].split(' ').next().unwrap().parse().unwrap();
    let _stop = StopsOnDrop(credfs);

    assert_eq!(
        cat(&daemon, "registries/leaves/token").stdout,
        SECRET.as_bytes()
    );
    wait_for("the leftover child killed", Duration::from_secs(5), || {
        !running(&sleeper)
    });
    wait_for(
        "every child of credfs reaped",
        Duration::from_secs(5),
        || children_of(credfs).is_empty(),
    );
}

/// unshare ignores SIGTERM and does not pass it on: credfs under it is
/// stopped directly, on every way out of the test, before the fixture waits
/// for unshare to exit with credfs's status.
struct StopsOnDrop(u32);

impl Drop for StopsOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
    }
}

/// A stat that failed reported size 0: the kernel must not keep that size
/// and serve the next open as an empty file once the helper works again.
/// Each round uses a registry never read before, so its stat does fail.
#[test]
fn an_open_after_a_failed_stat_reads_the_whole_token() {
    const ROUNDS: usize = 20;
    let mut marker = PathBuf::new();
    let daemon = start(|dir| {
        marker = dir.join("fail");
        let helper = script(
            dir,
            "flaky",
            &format!(
                "if [ -e {} ]; then echo down >&2; exit 1; fi\necho '{{\"username\": \"u\", \"password\": \"{SECRET}\"}}'\n",
                dir.join("fail").display()
            ),
        );
        (0..ROUNDS)
            .map(|i| helper_entry(&format!("x{i}"), &helper, ""))
            .collect()
    });
    for i in 0..ROUNDS {
        let token = daemon.path(&format!("registries/x{i}/token"));
        fs::write(&marker, "").unwrap();
        assert_eq!(
            fs::metadata(&token).unwrap().len(),
            0,
            "round {i}: the failed stat"
        );
        fs::remove_file(&marker).unwrap();
        // A refresh skips the rest after the failure, so the read comes at
        // once, inside the attribute's 1 s.
        let refresh = sh(&format!(
            "echo 1 > {}",
            daemon.path(&format!("registries/x{i}/refresh")).display()
        ));
        assert!(refresh.status.success(), "{}", stderr(&refresh));
        let out = run("cat", &[&token.to_string_lossy()]);
        assert!(out.status.success(), "round {i}: {}", stderr(&out));
        assert_eq!(
            out.stdout,
            SECRET.as_bytes(),
            "round {i}: a read after a failed stat"
        );
    }
}

#[test]
fn an_expiry_beyond_year_9999_is_clamped_not_a_crash() {
    let daemon = start(|dir| {
        let helper = script(
            dir,
            "far",
            &format!("echo '{{\"username\":\"u\",\"password\":\"{SECRET}\"}}'\n"),
        );
        helper_entry("far", &helper, "ttl = \"9000years\"")
    });
    assert_eq!(
        cat(&daemon, "registries/far/token").stdout,
        SECRET.as_bytes()
    );
    assert_eq!(
        cat(&daemon, "registries/far/expires_at").stdout,
        b"9999-12-31T23:59:59Z"
    );
    let auth = cat(&daemon, "registries/far/auth.json");
    assert!(
        String::from_utf8_lossy(&auth.stdout).contains("\"expires_at\":\"9999-12-31T23:59:59Z\""),
        "{}",
        stderr(&auth)
    );
    let status = cat(&daemon, "status.json");
    assert!(status.status.success(), "status.json still renders");
}
