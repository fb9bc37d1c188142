//! The mount outlives the daemon. The test plays systemd: it owns the
//! notify socket, receives the FUSE connection the daemon stores there
//! (`FDSTORE=1`), and after a SIGKILL starts the next daemon with it in
//! `LISTEN_FDS`. Readers in a loop, and a container-style reader through
//! a bind mount in its own mount namespace, must see no error; the mount
//! must stay the same one. `credfs mount --takeover` does the same without
//! systemd.

mod common;

use common::*;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::fs;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "takeover-token-4c4c";
const CONFIG: &str = r#"
[mount]
allow_other = true
dir_mode = "0555"
[registries.x]
provider = "static"
registry = "x.example"
username = "u"
password = "takeover-token-4c4c"
mode = "0444"
[stores.main]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b"]
"#;

/// What the daemons told "systemd": READY=1 count, and the connection in
/// the store with its name.
#[derive(Default)]
struct Store {
    ready: usize,
    fd: Option<(String, OwnedFd)>,
}

struct FakeSystemd {
    path: PathBuf,
    store: Arc<Mutex<Store>>,
}

impl FakeSystemd {
    fn start(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let store = Arc::new(Mutex::new(Store::default()));
        let shared = store.clone();
        std::thread::spawn(move || {
            loop {
                let mut data = [0u8; 4096];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let Ok(received) = rustix::net::recvmsg(
                    &socket,
                    &mut [IoSliceMut::new(&mut data)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                ) else {
                    return;
                };
                let text = String::from_utf8_lossy(&data[..received.bytes]).into_owned();
                let mut fds: Vec<OwnedFd> = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                let mut store = shared.lock().unwrap();
                if text.lines().any(|l| l == "READY=1") {
                    store.ready += 1;
                }
                let name = text.lines().find_map(|l| l.strip_prefix("FDNAME="));
                if text.contains("FDSTOREREMOVE=1") {
                    if store.fd.as_ref().map(|(n, _)| Some(n.as_str())) == Some(name) {
                        store.fd = None;
                    }
                } else if text.contains("FDSTORE=1")
                    && let (Some(name), Some(fd)) = (name, fds.pop())
                {
                    store.fd = Some((name.to_string(), fd));
                }
            }
        });
        FakeSystemd { path, store }
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("NOTIFY_SOCKET", self.path.to_str().expect("UTF-8 path"))]
    }

    fn wait_ready(&self, count: usize) {
        wait_for("READY=1", Duration::from_secs(20), || {
            self.store.lock().unwrap().ready >= count
        });
    }

    /// The stored connection: its name and a descriptor the test keeps.
    fn stored(&self) -> (String, OwnedFd) {
        wait_for("FDSTORE=1", Duration::from_secs(20), || {
            self.store.lock().unwrap().fd.is_some()
        });
        let store = self.store.lock().unwrap();
        let (name, fd) = store.fd.as_ref().expect("stored");
        (name.clone(), fd.try_clone().expect("dup"))
    }
}

/// Readers that open, read and close the token in a loop, counting errors
/// and wrong bytes, and the longest a read took.
struct Readers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<(u64, Duration)>>,
}

impl Readers {
    fn start(token: PathBuf, count: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let threads = (0..count)
            .map(|_| {
                let (stop, reads, token) = (stop.clone(), reads.clone(), token.clone());
                std::thread::spawn(move || {
                    let (mut failures, mut longest) = (0, Duration::ZERO);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        match fs::read(&token) {
                            Ok(bytes) if bytes == TOKEN.as_bytes() => {}
                            Ok(_) | Err(_) => failures += 1,
                        }
                        longest = longest.max(started.elapsed());
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    (failures, longest)
                })
            })
            .collect();
        Readers {
            stop,
            reads,
            threads,
        }
    }

    /// Waits until `more` reads beyond now have been done.
    fn wait_for_reads(&self, more: u64) {
        let target = self.reads.load(Ordering::Relaxed) + more;
        wait_for("reads", Duration::from_secs(20), || {
            self.reads.load(Ordering::Relaxed) >= target
        });
    }

    /// (failures, longest read) over all readers.
    fn finish(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("reader"))
            .fold((0, Duration::ZERO), |(f, l), (tf, tl)| (f + tf, l.max(tl)))
    }
}

/// A container-style reader: its own mount namespace, with
/// `MNT/registries/x` bind-mounted and read in a loop until `stop` exists.
/// Returns the child and the file its failures go to.
fn container_reader(daemon: &Daemon) -> (Child, PathBuf, PathBuf) {
    let dir = daemon.dir.path();
    let (target, failures, stop) = (dir.join("bound"), dir.join("failures"), dir.join("stop"));
    fs::create_dir_all(&target).unwrap();
    let script = format!(
        "mount --bind {src} {dst} && touch {failures}.started && \
         while [ ! -e {stop} ]; do cat {dst}/token > /dev/null 2>> {failures} || echo failed >> {failures}; done",
        src = daemon.path("registries/x").display(),
        dst = target.display(),
        failures = failures.display(),
        stop = stop.display(),
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    let started = PathBuf::from(format!("{}.started", failures.display()));
    wait_for(
        "the container's bind mount",
        Duration::from_secs(10),
        || started.exists(),
    );
    (child, failures, stop)
}

fn mount_line(mnt: &Path) -> String {
    let wanted = format!(" {} ", mnt.display());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|line| line.contains(&wanted))
        .unwrap_or_else(|| panic!("{} is not mounted", mnt.display()))
        .to_string()
}

fn start(systemd: Option<&FakeSystemd>) -> Daemon {
    require_program("unshare");
    let mut daemon = Daemon::prepare(CONFIG);
    daemon.secret(TOKEN);
    match systemd {
        Some(systemd) => daemon.spawn_with_env(&systemd.env()),
        None => daemon.spawn(),
    }
    daemon
}

/// Runs `replace` (which swaps the daemon) under 8 readers and a container
/// reader; asserts nobody saw an error and the mount is the same one.
/// Returns the longest read.
fn under_readers(
    daemon: &mut Daemon,
    rounds: usize,
    mut replace: impl FnMut(&mut Daemon),
) -> Duration {
    let before = mount_line(&daemon.mnt);
    let readers = Readers::start(daemon.path("registries/x/token"), 8);
    let (mut container, failures, stop) = container_reader(daemon);
    readers.wait_for_reads(100);
    for _ in 0..rounds {
        replace(daemon);
        readers.wait_for_reads(100);
    }
    fs::write(&stop, "").unwrap();
    let _ = container.wait();
    let (failed, longest) = readers.finish();
    assert_eq!(failed, 0, "readers saw errors: {}", daemon.log());
    let container_failures = fs::read_to_string(&failures).unwrap_or_default();
    assert!(
        container_failures.is_empty(),
        "the container saw: {container_failures}"
    );
    assert_eq!(mount_line(&daemon.mnt), before, "the same mount");
    assert_eq!(
        fs::read(daemon.path("registries/x/token")).unwrap(),
        TOKEN.as_bytes()
    );
    longest
}

fn kill_and_restart(daemon: &mut Daemon, systemd: &FakeSystemd, ready: &mut usize) {
    let (name, fd) = systemd.stored();
    daemon.crash();
    daemon.spawn_adopting(fd.as_raw_fd(), &name, &systemd.env());
    *ready += 1;
    systemd.wait_ready(*ready);
    assert!(
        daemon.log().contains("adopted the live mount"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_sigkill_and_a_restart_with_the_stored_connection_lose_no_read() {
    let scratch = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(scratch.path());
    let mut daemon = start(Some(&systemd));
    let mut ready = 1;
    systemd.wait_ready(ready);
    let longest = under_readers(&mut daemon, 1, |daemon| {
        kill_and_restart(daemon, &systemd, &mut ready)
    });
    eprintln!("longest read across a SIGKILL and restart: {longest:?}");
    // The new daemon stored the connection under its own epoch.
    let (name, _) = systemd.stored();
    assert!(name.starts_with("fuse-"), "{name}");
}

#[test]
fn twenty_kill_and_restart_rounds_in_a_row_lose_no_read() {
    let scratch = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(scratch.path());
    let mut daemon = start(Some(&systemd));
    let mut ready = 1;
    systemd.wait_ready(ready);
    let longest = under_readers(&mut daemon, 20, |daemon| {
        kill_and_restart(daemon, &systemd, &mut ready)
    });
    eprintln!("longest read over 20 SIGKILL rounds: {longest:?}");
}

#[test]
fn a_takeover_upgrade_loses_no_read() {
    let mut daemon = start(None);
    let longest = under_readers(&mut daemon, 3, |daemon| {
        let old = daemon.spawn_taking_over(&[]);
        assert!(old.success(), "the old daemon exits 0: {old}");
    });
    eprintln!("longest read across 3 takeovers: {longest:?}");
    assert_eq!(daemon.log().matches("handing the mount over").count(), 3);
}

#[test]
fn an_open_reader_keeps_reading_and_an_upload_in_progress_fails_with_eio() {
    let scratch = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(scratch.path());
    let mut daemon = start(Some(&systemd));
    systemd.wait_ready(1);
    let go = daemon.dir.path().join("go");
    let script = format!(
        r#"
import errno, os, sys, time
token = open({token:?}, "rb", buffering=0)
first = token.read(3)
upload = os.open({upload:?}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(upload, b"PK\x03\x04" + b"x" * 100000)
print("opened", flush=True)
while not os.path.exists({go:?}):
    time.sleep(0.01)
rest = token.read()
print("token", (first + rest).decode(), flush=True)
try:
    os.write(upload, b"y" * 100000)
    os.close(upload)
    print("upload ok")
except OSError as e:
    print("upload", errno.errorcode[e.errno])
"#,
        token = daemon.path("registries/x/token").display().to_string(),
        upload = daemon.path("projects/b/cut.zip").display().to_string(),
        go = go.display().to_string(),
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "opened");
    let mut ready = 1;
    kill_and_restart(&mut daemon, &systemd, &mut ready);
    fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(rest.contains(&format!("token {TOKEN}")), "{rest}");
    assert!(rest.contains("upload EIO"), "{rest}");
    assert!(!daemon.store().join("b/cut.zip").exists(), "nothing stored");
    let spool = daemon.dir.path().join("spool");
    wait_for(
        "the dead daemon's spool to go",
        Duration::from_secs(10),
        || spool_files(&spool).is_empty(),
    );
}

#[test]
fn sigusr2_leaves_the_mount_to_the_next_daemon_systemd_starts() {
    let scratch = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(scratch.path());
    let mut daemon = start(Some(&systemd));
    let mut ready = 1;
    systemd.wait_ready(ready);
    under_readers(&mut daemon, 1, |daemon| {
        let (name, fd) = systemd.stored();
        let status = daemon.stop_with(libc::SIGUSR2);
        assert_eq!(status.code(), Some(75), "non-zero: Restart=on-failure");
        daemon.spawn_adopting(fd.as_raw_fd(), &name, &systemd.env());
        ready += 1;
        systemd.wait_ready(ready);
    });
}

/// A registry whose helper takes `seconds` and leaves a mark when it starts.
fn slow_config(dir: &Path, seconds: u32) -> String {
    let helper = dir.join("slow-helper");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\ntouch {mark}\nsleep {seconds}\necho '{{\"username\": \"u\", \"password\": \"slow-token-7e7e\"}}'\n",
            mark = dir.join("helper-started").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}[registries.slow]\nprovider = \"helper\"\nregistry = \"slow.example\"\ncommand = [\"{}\"]\n",
        CONFIG.replace("@DIR@", &dir.to_string_lossy()),
        helper.display()
    )
}

/// Starts `cat MNT/registries/slow/token`, kills the daemon while the
/// helper behind it runs, starts the next one with the stored connection,
/// and returns what `cat` printed, its success, and how long it took.
fn crash_during_a_slow_read(readers: &str) -> (String, bool, Duration) {
    let scratch = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::start(scratch.path());
    let mut daemon = Daemon::prepare("");
    fs::write(&daemon.config, slow_config(daemon.dir.path(), 3)).unwrap();
    daemon.secret(TOKEN);
    let mut env = systemd.env().to_vec();
    env.push(("CREDFS_FUSE_READERS", readers));
    daemon.spawn_with_env(&env);
    systemd.wait_ready(1);
    let started = Instant::now();
    let cat = Command::new("cat")
        .arg(daemon.path("registries/slow/token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mark = daemon.dir.path().join("helper-started");
    wait_for("the helper to start", Duration::from_secs(10), || {
        mark.exists()
    });
    let (name, fd) = systemd.stored();
    daemon.crash();
    daemon.spawn_adopting(fd.as_raw_fd(), &name, &env);
    systemd.wait_ready(2);
    let out = cat.wait_with_output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    // The tree serves on either way.
    assert_eq!(
        fs::read(daemon.path("registries/x/token")).unwrap(),
        TOKEN.as_bytes()
    );
    (printed, out.status.success(), started.elapsed())
}

#[test]
fn a_request_in_flight_at_a_crash_is_resent_to_the_next_daemon() {
    let (printed, success, _) = crash_during_a_slow_read("shared");
    assert!(success, "{printed}");
    assert_eq!(printed, "slow-token-7e7e");
}

#[test]
fn read_from_clones_a_request_in_flight_at_a_crash_fails_instead_of_hanging() {
    // What kernels before 6.9 get (they cannot resend): the error at once,
    // not a caller stuck for ever.
    let (printed, success, took) = crash_during_a_slow_read("clones");
    assert!(!success, "{printed}");
    assert!(
        printed.contains("Software caused connection abort"),
        "{printed}"
    );
    assert!(
        took < Duration::from_secs(3),
        "before the helper would answer: {took:?}"
    );
}

/// A descriptor in `LISTEN_FDS` that is not /dev/fuse (here a socket whose
/// other end could write forged requests) is never adopted: the daemon
/// mounts afresh and serves.
#[test]
fn a_descriptor_that_is_not_dev_fuse_is_never_adopted() {
    let mut daemon = Daemon::prepare(CONFIG);
    daemon.secret(TOKEN);
    let (ours, _forger) = std::os::unix::net::UnixStream::pair().unwrap();
    daemon.spawn_adopting(ours.as_raw_fd(), "fuse-7", &[]);
    assert_eq!(
        fs::read(daemon.path("registries/x/token")).unwrap(),
        TOKEN.as_bytes()
    );
    let log = daemon.log();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains("adopted the live mount"), "{log}");
}
