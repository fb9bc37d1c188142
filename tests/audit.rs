//! The audit log: one JSON line per open of a secret and per upload, delete
//! and refresh, with who did it and how it ended; never a value.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::Duration;

const SHARED: &str = "audit-shared-token-1a2b3c";
const PRIVATE: &str = "audit-private-token-4d5e6f";
const API_KEY: &str = "audit-api-key-7a8b9c";

const CONFIG: &str = r#"
[mount]
allow_other = true
dir_mode = "0555"
file_mode = "0400"
[audit]
path = "@DIR@/log/audit.jsonl"
[registries.shared]
provider = "static"
registry = "shared.example"
username = "u"
password = "audit-shared-token-1a2b3c"
mode = "0444"
[registries.private]
provider = "static"
registry = "private.example"
username = "u"
password = "audit-private-token-4d5e6f"
[secrets.ci]
api_key = "audit-api-key-7a8b9c"
[stores.disk]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["builds"]
"#;

fn lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each audit line is one JSON object"))
        .collect()
}

/// The audit lines for `op` on `path`.
fn entries(all: &[Value], op: &str, path: &str) -> Vec<Value> {
    all.iter()
        .filter(|l| l["op"] == op && l["path"] == path)
        .cloned()
        .collect()
}

fn start() -> Daemon {
    require_program("setpriv");
    let mut daemon = Daemon::prepare(CONFIG);
    fs::create_dir_all(daemon.store().join("builds")).expect("bucket dir");
    for secret in [SHARED, PRIVATE, API_KEY] {
        daemon.secret(secret);
    }
    daemon.spawn();
    daemon
}

#[test]
fn reads_uploads_deletes_refreshes_and_denials_are_audited_without_values() {
    let daemon = start();
    let audit = daemon.dir.path().join("log/audit.jsonl");
    let shared = daemon.path("registries/shared/token");
    let shared = shared.to_string_lossy();
    let private = daemon.path("registries/private/token");

    for uid in ["1000", "1001"] {
        let out = as_user(uid, "cat", &[&shared]);
        assert_eq!(out.stdout, SHARED.as_bytes(), "uid {uid}: {}", stderr(&out));
    }
    let denied = as_user("1000", "cat", &[&private.to_string_lossy()]);
    assert!(
        stderr(&denied).contains("Permission denied"),
        "{}",
        stderr(&denied)
    );
    assert_eq!(
        run(
            "cat",
            &[&daemon.path("secrets/ci/api_key").to_string_lossy()]
        )
        .stdout,
        API_KEY.as_bytes()
    );

    let zip = make_zip(daemon.dir.path(), "app.zip", 4096);
    let archive = daemon.path("projects/builds/app.zip");
    assert!(cp(&zip, &archive).status.success());
    let bad = daemon.dir.path().join("bad.zip");
    fs::write(&bad, b"not a zip archive").expect("bad zip");
    let rejected = cp(&bad, &daemon.path("projects/builds/bad.zip"));
    assert!(!rejected.status.success());
    fs::remove_file(&archive).expect("delete the archive");
    fs::write(daemon.path("registries/shared/refresh"), "1").expect("refresh");

    let all = lines(&audit);
    let reads = entries(&all, "open", "registries/shared/token");
    for uid in [1000, 1001] {
        let read = reads
            .iter()
            .find(|l| l["uid"] == uid)
            .unwrap_or_else(|| panic!("no audit line for uid {uid}: {all:?}"));
        assert_eq!(read["gid"], uid);
        assert_eq!(read["process"], "cat");
        assert_eq!(read["result"], "ok");
        assert!(read["pid"].as_u64().unwrap_or(0) > 0);
        assert!(read["time"].as_str().unwrap_or("").ends_with('Z'));
    }
    let refused = entries(&all, "open", "registries/private/token");
    assert!(
        refused
            .iter()
            .any(|l| l["uid"] == 1000 && l["result"] == "EACCES"),
        "the denied read: {all:?}"
    );
    let key = entries(&all, "open", "secrets/ci/api_key");
    assert!(
        key.iter().any(|l| l["uid"] == 0 && l["result"] == "ok"),
        "{all:?}"
    );
    let uploads = entries(&all, "upload", "projects/builds/app.zip");
    assert!(
        uploads
            .iter()
            .any(|l| l["result"] == "ok" && l["process"] == "cp"),
        "{all:?}"
    );
    let bad_upload = entries(&all, "upload", "projects/builds/bad.zip");
    assert!(
        bad_upload.iter().any(|l| l["result"] == "EINVAL"),
        "{all:?}"
    );
    let deletes = entries(&all, "delete", "projects/builds/app.zip");
    assert!(deletes.iter().any(|l| l["result"] == "ok"), "{all:?}");
    let refreshes = entries(&all, "refresh", "registries/shared/refresh");
    assert!(refreshes.iter().any(|l| l["result"] == "ok"), "{all:?}");

    let text = fs::read_to_string(&audit).expect("audit log");
    daemon.assert_no_secret_in(&text, "the audit log");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&audit).expect("stat").permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "only the daemon's user reads the audit log"
    );
}

#[test]
fn concurrent_readers_write_whole_lines_and_sighup_reopens_for_logrotate() {
    let daemon = start();
    let audit = daemon.dir.path().join("log/audit.jsonl");
    let token = daemon.path("registries/shared/token");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(fs::read(&token).expect("read"), SHARED.as_bytes());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("reader");
    }
    let opens = entries(&lines(&audit), "open", "registries/shared/token");
    assert_eq!(opens.len(), 400, "one whole line per open");

    let rotated = daemon.dir.path().join("log/audit.jsonl.1");
    fs::rename(&audit, &rotated).expect("logrotate moves the file");
    daemon.signal(libc::SIGHUP);
    wait_for(
        "a new audit file after SIGHUP",
        Duration::from_secs(10),
        || audit.exists(),
    );
    assert_eq!(fs::read(&token).expect("read"), SHARED.as_bytes());
    assert_eq!(
        entries(&lines(&rotated), "open", "registries/shared/token").len(),
        400,
        "the rotated file keeps what was written before SIGHUP"
    );
    assert_eq!(
        entries(&lines(&audit), "open", "registries/shared/token").len(),
        1,
        "reads after SIGHUP go to the new file"
    );
}

#[test]
fn a_dentry_cached_for_root_does_not_let_another_user_past_a_closed_directory() {
    require_program("setpriv");
    let mut daemon = Daemon::prepare(
        "[mount]\nallow_other = true\ndir_mode = \"0500\"\nfile_mode = \"0444\"\n[secrets.ci]\nkey = \"dentry-secret-5e6f\"\n",
    );
    daemon.secret("dentry-secret-5e6f");
    daemon.spawn();
    let key = daemon.path("secrets/ci/key");
    let key = key.to_string_lossy();
    for _ in 0..20 {
        // Root's read leaves every dentry on the path cached.
        assert_eq!(run("cat", &[&key]).stdout, b"dentry-secret-5e6f");
        let out = as_user("1000", "cat", &[&key]);
        assert!(
            out.stdout.is_empty(),
            "uid 1000 read through a 0500 directory"
        );
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    }
    // access(2) gives the same answers.
    let test_r = |uid: &str| as_user(uid, "test", &["-r", &key]).status.success();
    assert!(!test_r("1000"));
    assert!(run("test", &["-r", &key]).status.success());
}

#[test]
fn an_audit_log_that_cannot_be_opened_stops_the_mount_with_exit_1() {
    // The audit path lies under a regular file: no directory can be made.
    let daemon = Daemon::prepare(
        "[audit]\npath = \"@DIR@/config.toml/audit.jsonl\"\n[secrets.ci]\nkey = \"v\"\n",
    );
    let out = run(
        BIN,
        &[
            "mount",
            "--config",
            &daemon.config.to_string_lossy(),
            &daemon.mnt.to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot open the audit log"),
        "{}",
        stderr(&out)
    );
    assert!(!is_mounted(&daemon.mnt), "nothing stays mounted");
}

#[test]
fn chmod_by_someone_other_than_the_owner_is_eperm() {
    require_program("setpriv");
    let mut daemon = Daemon::prepare(
        "[mount]\nallow_other = true\ndir_mode = \"0555\"\nfile_mode = \"0444\"\n[secrets.ci]\nkey = \"chmod-secret-8a9b\"\n",
    );
    daemon.secret("chmod-secret-8a9b");
    daemon.spawn();
    let key = daemon.path("secrets/ci/key");
    let key = key.to_string_lossy();
    let refused = as_user("1000", "chmod", &["600", &key]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Operation not permitted"),
        "{}",
        stderr(&refused)
    );
    // The owner (root) may, and nothing changes.
    assert!(run("chmod", &["600", &key]).status.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(daemon.path("secrets/ci/key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
}

#[test]
fn renames_overwrites_and_deletes_are_audited() {
    let daemon = start();
    let audit = daemon.dir.path().join("log/audit.jsonl");
    let bucket = |name: &str| daemon.path(&format!("projects/builds/{name}"));
    let zip = make_zip(daemon.dir.path(), "app.zip", 4096);
    assert!(cp(&zip, &bucket("a.zip")).status.success());
    assert!(cp(&zip, &bucket("a.zip")).status.success(), "overwrite");
    fs::rename(bucket("a.zip"), bucket("b.zip")).expect("rename");
    assert!(cp(&zip, &bucket("c.zip")).status.success());
    fs::rename(bucket("c.zip"), bucket("b.zip")).expect("rename over b.zip");
    assert!(cp(&zip, &bucket("staged")).status.success());
    fs::rename(bucket("staged"), bucket("d.zip")).expect("commit a staging file");
    fs::remove_file(bucket("b.zip")).expect("delete");

    let all = lines(&audit);
    let ops = |path: &str| -> Vec<String> {
        all.iter()
            .filter(|l| l["path"] == path && l["op"] != "open")
            .map(|l| {
                format!(
                    "{} {}",
                    l["op"].as_str().unwrap_or(""),
                    l["result"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(
        ops("projects/builds/a.zip"),
        ["upload ok", "overwrite ok"],
        "{all:?}"
    );
    assert_eq!(
        ops("projects/builds/b.zip"),
        ["rename ok", "rename ok", "overwrite ok", "delete ok"],
        "{all:?}"
    );
    assert_eq!(
        ops("projects/builds/d.zip"),
        ["rename ok", "upload ok"],
        "{all:?}"
    );
    let renames: Vec<&Value> = all.iter().filter(|l| l["op"] == "rename").collect();
    let froms: Vec<&str> = renames.iter().filter_map(|l| l["from"].as_str()).collect();
    assert_eq!(
        froms,
        [
            "projects/builds/a.zip",
            "projects/builds/c.zip",
            "projects/builds/staged"
        ]
    );
    assert!(renames.iter().all(|l| l["uid"] == 0 && l["result"] == "ok"));
}

#[test]
fn a_name_with_a_newline_cannot_forge_a_log_or_audit_line() {
    let daemon = start();
    let audit = daemon.dir.path().join("log/audit.jsonl");
    let forged = "FORGED-LINE credfs: all is well";
    let name = format!("stage\n{forged}");
    let staging = daemon.path(&format!("projects/builds/{name}"));
    fs::write(&staging, b"not an archive").expect("a staging file");
    // uid 1000 may not read it: the refusal is logged with its path.
    let denied = as_user("1000", "cat", &[&staging.to_string_lossy()]);
    assert!(!denied.status.success());
    // A bad archive: the rename is refused, and audited with its name.
    let refused = fs::rename(&staging, daemon.path("projects/builds/forged.zip"))
        .expect_err("not a ZIP archive");
    assert_eq!(refused.raw_os_error(), Some(libc::EINVAL));
    let all = lines(&audit);
    let rename = entries(&all, "rename", "projects/builds/forged.zip");
    assert_eq!(rename.len(), 1, "{all:?}");
    assert_eq!(rename[0]["from"], format!("projects/builds/{name}"));
    assert_eq!(rename[0]["result"], "EINVAL");
    let text = fs::read_to_string(&audit).expect("audit");
    let log = daemon.log();
    for (place, text) in [("the audit log", &text), ("the daemon log", &log)] {
        assert!(
            text.lines().all(|line| !line.starts_with("FORGED-LINE")),
            "{place} has a forged line:\n{text}"
        );
    }
    assert!(
        log.contains("FORGED-LINE"),
        "the refusal was logged:\n{log}"
    );
}

/// `/dev/full` takes the file open but refuses every write (ENOSPC).
fn start_with_unwritable_audit(fail_closed: bool) -> Daemon {
    let config = CONFIG.replace(
        "path = \"@DIR@/log/audit.jsonl\"",
        &format!("path = \"/dev/full\"\nfail_closed = {fail_closed}"),
    );
    let mut daemon = Daemon::prepare(&config);
    for secret in [SHARED, PRIVATE, API_KEY] {
        daemon.secret(secret);
    }
    daemon.spawn();
    daemon
}

fn audit_status(daemon: &Daemon) -> Value {
    let status = fs::read(daemon.path("status.json")).expect("status.json");
    let status: Value = serde_json::from_slice(&status).expect("status.json is JSON");
    status["audit"].clone()
}

#[test]
fn fail_closed_refuses_a_secret_whose_audit_line_cannot_be_written() {
    let daemon = start_with_unwritable_audit(true);
    for path in [
        "secrets/ci/api_key",
        "registries/shared/token",
        "docker/config.json",
    ] {
        let out = run("cat", &[&daemon.path(path).to_string_lossy()]);
        assert!(out.stdout.is_empty(), "{path} was served unrecorded");
        assert!(
            stderr(&out).contains("Input/output error"),
            "{path}: {}",
            stderr(&out)
        );
    }
    let audit = audit_status(&daemon);
    assert_eq!(audit["state"], "error", "{audit}");
    assert_eq!(audit["fail_closed"], true);
    assert!(
        audit["error"].as_str().unwrap_or("").contains("/dev/full"),
        "{audit}"
    );
    // What holds no secret is still served.
    assert!(fs::read(daemon.path("status.json")).is_ok());
}

#[test]
fn by_default_an_unwritable_audit_log_is_a_warning_not_a_refusal() {
    let daemon = start_with_unwritable_audit(false);
    let out = run(
        "cat",
        &[&daemon.path("secrets/ci/api_key").to_string_lossy()],
    );
    assert_eq!(out.stdout, API_KEY.as_bytes(), "{}", stderr(&out));
    let audit = audit_status(&daemon);
    assert_eq!(audit["state"], "error", "{audit}");
    assert_eq!(audit["fail_closed"], false);
    assert!(daemon.log().contains("audit line lost"), "{}", daemon.log());
}
