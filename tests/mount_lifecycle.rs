//! Mounting, signals, stale mounts (SIGKILL), and owners and modes enforced
//! for other users and containers.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const TOKEN: &str = "perm-token-6c5d4e";
const SHARED: &str = "shared-token-9f8e7d";

const CONFIG: &str = r#"
[mount]
allow_other = true
dir_mode = "0555"
file_mode = "0400"
[registries.private]
provider = "static"
registry = "private.example"
username = "u"
password = "perm-token-6c5d4e"
[registries.shared]
provider = "static"
registry = "shared.example"
username = "u"
password = "shared-token-9f8e7d"
gid = 1000
mode = "0440"
"#;

fn start() -> Daemon {
    let mut daemon = Daemon::prepare(CONFIG);
    daemon.secret(TOKEN);
    daemon.secret(SHARED);
    daemon.spawn();
    daemon
}

#[test]
fn sigint_and_sigterm_unmount_and_exit_zero() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut daemon = start();
        assert!(is_mounted(&daemon.mnt));
        let status = daemon.stop_with(signal);
        assert_eq!(status.code(), Some(0), "signal {signal}: {}", daemon.log());
        assert!(!is_mounted(&daemon.mnt), "unmounted after signal {signal}");
    }
}

#[test]
fn a_dead_mount_is_cleaned_up_and_mounted_again() {
    let mut daemon = start();
    daemon.crash();
    let err = fs::read_dir(daemon.path("registries")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "Transport endpoint is not connected"
    );
    daemon.spawn();
    let out = run(
        "cat",
        &[&daemon.path("registries/private/token").to_string_lossy()],
    );
    assert_eq!(out.stdout, TOKEN.as_bytes());
    assert!(daemon.log().contains("removing a stale mount"));
}

#[test]
fn owners_and_modes_are_enforced_for_other_users() {
    require_program("setpriv");
    let daemon = start();
    let as_user = |path: &str| as_user("1000", "cat", &[&daemon.path(path).to_string_lossy()]);
    let denied = as_user("registries/private/token");
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains("Permission denied"),
        "{}",
        stderr(&denied)
    );
    let allowed = as_user("registries/shared/token");
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert_eq!(allowed.stdout, SHARED.as_bytes());
    let other_group = run(
        "setpriv",
        &[
            "--reuid",
            "1001",
            "--regid",
            "1001",
            "--clear-groups",
            "cat",
            &daemon.path("registries/shared/token").to_string_lossy(),
        ],
    );
    assert!(stderr(&other_group).contains("Permission denied"));
    let meta = fs::metadata(daemon.path("registries/shared/token")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o440, 0, 1000)
    );
    let dir = fs::metadata(daemon.path("registries/shared")).unwrap();
    assert_eq!(
        (dir.mode() & 0o7777, dir.gid()),
        (0o550, 1000),
        "the directory follows its files"
    );
}

#[test]
fn a_container_reads_a_token_through_a_read_only_bind_mount() {
    require_program("bwrap");
    let daemon = start();
    let source = daemon.path("registries/private");
    let out = run(
        "bwrap",
        &[
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/run",
            "--ro-bind",
            &source.to_string_lossy(),
            "/run/secrets/private",
            "cat",
            "/run/secrets/private/token",
        ],
    );
    assert!(out.status.success(), "bwrap: {}", stderr(&out));
    assert_eq!(out.stdout, TOKEN.as_bytes());

    let target = daemon.dir.path().join("target");
    fs::create_dir_all(&target).unwrap();
    let script = format!(
        "mount --bind -o ro {} {} && cat {}/token && (echo x > {}/token) 2>/dev/null; echo \" write=$?\"",
        source.display(),
        target.display(),
        target.display(),
        target.display()
    );
    let out = run(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with(TOKEN), "{text} {}", stderr(&out));
    assert!(
        text.ends_with("write=1\n") || text.ends_with("write=2\n"),
        "{text}"
    );
}

#[test]
fn an_external_unmount_ends_the_daemon_cleanly() {
    let mut daemon = start();
    let out = run("fusermount3", &["-u", &daemon.mnt.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = daemon.pid() as i32;
    wait_for("the daemon to exit", Duration::from_secs(10), || {
        // Our child: once it exits it stays a zombie until we reap it.
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true)
    });
    let status = daemon.stop_with(0);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_daemon_on_a_live_mount_is_refused() {
    let daemon = start();
    let out = run(
        BIN,
        &[
            "mount",
            "--config",
            &daemon.config.to_string_lossy(),
            &daemon.mnt.to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is already served by a running credfs"),
        "{}",
        stderr(&out)
    );
    let token = run(
        "cat",
        &[&daemon.path("registries/private/token").to_string_lossy()],
    );
    assert_eq!(
        token.stdout,
        TOKEN.as_bytes(),
        "the first daemon keeps serving"
    );
}

/// A container that bind-mounted the tree keeps the FUSE connection open
/// after our unmount; the daemon still exits promptly on SIGTERM.
#[test]
fn sigterm_exits_while_another_namespace_holds_the_mount() {
    let mut daemon = start();
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "60"])
        .spawn()
        .expect("unshare");
    let mountinfo = format!("/proc/{}/mountinfo", holder.id());
    let mnt = daemon.mnt.to_string_lossy().to_string();
    wait_for("the holder's namespace", Duration::from_secs(10), || {
        fs::read_to_string(&mountinfo).is_ok_and(|m| m.contains(&mnt))
            && fs::read_link(format!("/proc/{}/exe", holder.id()))
                .is_ok_and(|exe| exe.ends_with("sleep"))
    });
    let status = daemon.stop();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(!is_mounted(&daemon.mnt));
    assert!(
        daemon.log().contains("still held elsewhere"),
        "{}",
        daemon.log()
    );
}

/// Unmounts a bind mount when the test ends, however it ends.
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's container pattern: the mount point sits in a shared
/// directory that the container binds with slave propagation, so a daemon
/// restarted after SIGKILL is seen inside without restarting the container.
#[test]
fn a_container_binding_a_shared_parent_sees_a_restarted_daemon() {
    require_program("unshare");
    let mut daemon = Daemon::prepare(CONFIG);
    daemon.secret(TOKEN);
    daemon.secret(SHARED);
    let share = daemon.dir.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let share_str = share.to_string_lossy().into_owned();
    let made_shared = sh(&format!(
        "mount --bind {share_str} {share_str} && mount --make-shared {share_str}"
    ));
    assert!(made_shared.status.success(), "{}", stderr(&made_shared));
    let _unbind = BindMount(share.clone());
    daemon.mnt = share.join("tree");
    daemon.spawn();

    // The "container": its own mount namespace, binding the shared
    // directory with slave propagation, reading when told to.
    let inside = daemon.dir.path().join("ctr");
    let go = daemon.dir.path().join("go");
    let seen = daemon.dir.path().join("seen");
    fs::create_dir_all(&inside).unwrap();
    let script = format!(
        "mount --rbind {share_str} {ctr} && mount --make-rslave {ctr} && \
         cat {ctr}/tree/registries/private/token > {seen}.1; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         cat {ctr}/tree/registries/private/token > {seen}.2",
        ctr = inside.display(),
        go = go.display(),
        seen = seen.display()
    );
    let container = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "unchanged", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut container = KillOnDrop(container);
    let first = seen.with_extension("1");
    wait_for(
        "the container's first read",
        Duration::from_secs(10),
        || fs::read(&first).is_ok_and(|b| b == TOKEN.as_bytes()),
    );

    daemon.crash();
    daemon.spawn();
    fs::write(&go, "").unwrap();
    assert!(container.0.wait().unwrap().success());
    assert_eq!(
        fs::read(seen.with_extension("2")).unwrap(),
        TOKEN.as_bytes(),
        "the restarted daemon is visible inside the running container"
    );
}
