//! Running under systemd: the shipped unit verifies, the daemon speaks the
//! notify protocol on a socket the test owns, and it mounts and serves with
//! no more than the unit's capabilities and NoNewPrivileges.

mod common;

use common::*;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

const UNIT: &str = "systemd/credfs.service";
const INSTALLED_BIN: &str = "/usr/local/bin/credfs";
const CONFIG: &str = "[registries.hub]\nprovider = \"static\"\nregistry = \"docker.io\"\nusername = \"u\"\npassword = \"systemd-test-token-3c4d\"\n";

fn unit_text() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT)).expect("the unit file")
}

/// `Key=value` lines of the unit, in order.
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value(text: &str, key: &str) -> Option<String> {
    directives(text)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[test]
fn the_unit_file_verifies() {
    require_program("systemd-analyze");
    let text = unit_text();
    assert!(text.contains(&format!("ExecStart={INSTALLED_BIN} mount")));
    // Verify checks that ExecStart names an executable: point it at the
    // binary under test, and change nothing else.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("credfs.service");
    fs::write(&unit, text.replace(INSTALLED_BIN, BIN)).expect("unit copy");
    let out = run("systemd-analyze", &["verify", &unit.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "systemd-analyze verify warns");
}

#[test]
fn the_unit_asks_for_what_the_daemon_does_and_no_mount_namespace() {
    let text = unit_text();
    for (key, expected) in [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        // The FUSE connection waits in the store across a restart.
        ("FileDescriptorStoreMax", "4"),
        ("RestartSec", "100ms"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_SYS_ADMIN"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/fuse rw"),
        // The spool's default home: root's, mode 0700.
        ("StateDirectory", "credfs"),
        ("StateDirectoryMode", "0700"),
        // Its memory holds every credential: no core file.
        ("LimitCORE", "0"),
    ] {
        assert_eq!(value(&text, key).as_deref(), Some(expected), "{key}=");
    }
    // Each of these puts the service in a mount namespace of its own, where
    // the FUSE mount would be invisible to the host (systemd.exec(5)).
    let namespacing = [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "BindPaths",
        "TemporaryFileSystem",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "MountFlags",
        "RootDirectory",
    ];
    for (key, _) in directives(&text) {
        assert!(
            !namespacing.contains(&key.as_str()),
            "{key}= hides the mount from the host"
        );
    }
}

#[test]
fn the_unit_capabilities_and_no_new_privileges_are_enough_to_mount_and_serve() {
    require_program("setpriv");
    let text = unit_text();
    let capabilities = value(&text, "CapabilityBoundingSet").expect("a bounding set");
    let keep: Vec<String> = capabilities
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", keep.join(","));
    let mut daemon = Daemon::prepare(CONFIG);
    daemon.secret("systemd-test-token-3c4d");
    daemon.spawn_wrapped(
        &[
            "setpriv",
            "--no-new-privs",
            "--bounding-set",
            &bounding,
            "--inh-caps",
            "-all",
        ],
        &[],
    );
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid())).expect("status");
    let bounding_hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd")
        .trim()
        .to_string();
    // CAP_SYS_ADMIN is bit 21.
    assert_eq!(
        bounding_hex,
        format!("{:016x}", 1u64 << 21),
        "the daemon runs bounded"
    );
    assert_eq!(
        fs::read_to_string(daemon.path("registries/hub/token")).expect("token"),
        "systemd-test-token-3c4d"
    );
    let exit = daemon.stop();
    assert!(exit.success(), "{}", daemon.log());
    assert!(
        !is_mounted(&daemon.mnt),
        "unmounted with the same capabilities"
    );
}

/// Receives the next notification, failing after `timeout`.
fn next(socket: &UnixDatagram, what: &str) -> String {
    let mut buffer = [0u8; 512];
    match socket.recv(&mut buffer) {
        Ok(n) => String::from_utf8_lossy(&buffer[..n]).into_owned(),
        Err(e) => panic!("no {what} on the notify socket: {e}"),
    }
}

#[test]
fn ready_reloading_and_stopping_reach_the_notify_socket() {
    let mut daemon = Daemon::prepare(CONFIG);
    let path = daemon.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    daemon.spawn_with_env(&[("NOTIFY_SOCKET", &path.to_string_lossy())]);
    // The connection goes to systemd's store first (tests/takeover.rs
    // checks the descriptor), then READY=1.
    let stored = next(&socket, "FDSTORE=1 once mounted");
    assert!(stored.starts_with("FDSTORE=1\nFDNAME=fuse-"), "{stored}");
    assert_eq!(next(&socket, "READY=1 once mounted"), "READY=1");
    assert!(is_mounted(&daemon.mnt), "READY=1 comes after the mount");

    daemon.signal(libc::SIGHUP);
    let reloading = next(&socket, "RELOADING=1 on SIGHUP");
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(&socket, "READY=1 after the reload"), "READY=1");

    // An edit of the file reloads the same way.
    fs::write(
        &daemon.config,
        CONFIG.replace("docker.io", "registry-1.docker.io"),
    )
    .expect("edit");
    assert!(next(&socket, "RELOADING=1 on an edit").starts_with("RELOADING=1"));
    assert_eq!(next(&socket, "READY=1 after the edit"), "READY=1");

    let exit = daemon.stop();
    assert!(exit.success());
    assert_eq!(next(&socket, "STOPPING=1 on SIGTERM"), "STOPPING=1");
}
