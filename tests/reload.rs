//! SIGHUP reloads: changed values are served whole and at once, removed
//! entries disappear, an invalid config is refused and the old one serves.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const OLD: &str = "old-tok-1";
const NEW: &str = "new-token-that-is-much-longer-than-the-old-one-2";

fn config(token: &str, registry: &str) -> String {
    format!(
        "[registries.{registry}]\nprovider = \"static\"\nregistry = \"r.example\"\nusername = \"u\"\npassword = \"{token}\"\n\
         [registries.kept]\nprovider = \"none\"\nregistry = \"k.example\"\n"
    )
}

fn cat(path: &std::path::Path) -> Vec<u8> {
    run("cat", &[&path.to_string_lossy()]).stdout
}

#[test]
fn a_changed_value_is_served_whole_after_sighup() {
    let mut daemon = Daemon::prepare(&config(OLD, "main"));
    daemon.secret(OLD);
    daemon.secret(NEW);
    daemon.spawn();
    let token = daemon.path("registries/main/token");
    // Warm the kernel's cache: size, pages and entry.
    assert_eq!(cat(&token), OLD.as_bytes());
    assert_eq!(fs::metadata(&token).unwrap().len(), OLD.len() as u64);

    fs::write(&daemon.config, config(NEW, "main")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("the new token", Duration::from_secs(10), || {
        cat(&token) == NEW.as_bytes()
    });
    assert_eq!(fs::metadata(&token).unwrap().len(), NEW.len() as u64);
    let out = sh(&format!(
        "head -c \"$(stat -c %s {0})\" {0}",
        token.display()
    ));
    assert_eq!(out.stdout, NEW.as_bytes());
    let script = format!(
        "import sys; sys.stdout.write(open({:?}).read())",
        token.to_string_lossy()
    );
    assert_eq!(run("python3", &["-c", &script]).stdout, NEW.as_bytes());
    assert!(daemon.log().contains("config reloaded"));
}

#[test]
fn removed_entries_disappear_and_added_ones_appear() {
    let mut daemon = Daemon::prepare(&config(OLD, "gone"));
    daemon.secret(OLD);
    daemon.spawn();
    assert_eq!(cat(&daemon.path("registries/gone/token")), OLD.as_bytes());
    fs::write(&daemon.config, config(OLD, "added")).unwrap();
    daemon.signal(libc::SIGHUP);
    let listing = || {
        let mut names: Vec<String> = fs::read_dir(daemon.path("registries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    wait_for("the new tree", Duration::from_secs(10), || {
        listing() == ["added", "kept"]
    });
    let gone = fs::metadata(daemon.path("registries/gone/token")).unwrap_err();
    assert_eq!(
        gone.raw_os_error(),
        Some(libc::ENOENT),
        "stat agrees with ls at once"
    );
    assert_eq!(cat(&daemon.path("registries/added/token")), OLD.as_bytes());
}

#[test]
fn an_invalid_edit_is_refused_and_the_old_config_keeps_serving() {
    let mut daemon = Daemon::prepare(&config(OLD, "main"));
    daemon.secret(OLD);
    daemon.spawn();
    fs::write(&daemon.config, "[registries.main]\nprovider = \"quay\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let expected = format!(
        "{}:2:12: unknown registry provider `quay`",
        daemon.config.display()
    );
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        daemon.log().contains(&expected)
    });
    assert_eq!(cat(&daemon.path("registries/main/token")), OLD.as_bytes());
    let status: serde_json::Value =
        serde_json::from_slice(&cat(&daemon.path("status.json"))).unwrap();
    assert_eq!(status["last_error"]["state"], "error");
    assert!(
        status["last_error"]["reason"]
            .as_str()
            .unwrap()
            .contains(&expected),
        "{status}"
    );
    fs::write(&daemon.config, config(NEW, "main")).unwrap();
    daemon.secret(NEW);
    daemon.signal(libc::SIGHUP);
    wait_for("the next valid edit", Duration::from_secs(10), || {
        cat(&daemon.path("registries/main/token")) == NEW.as_bytes()
    });
}
