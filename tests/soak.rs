//! A bounded soak: readers, writers, a flaky helper, config edits and
//! failed lookups at once, for `CREDFS_SOAK_SECONDS` (default 45). At the
//! end every close() result matches what is stored, nothing of an upload
//! is left behind, and the daemon's memory and descriptors are back near
//! where they started.

mod common;

use common::servers::S3Server;
use common::*;
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "soak-static-token-2c3d";
const KEY: &str = "soak-secret-key-4e5f";
const FLAKY: &str = "soak-flaky-pass-6a7b";

/// Writes archives in a loop until STOP exists; prints one JSON line per
/// upload: its name, kind, close() result and the source's sha256.
const WRITER: &str = r#"
import hashlib, json, os, random, sys, threading, zipfile, io
bucket, me, stop, big_ok = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == '1'
def good(size):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        z.writestr('data.bin', os.urandom(size))
    return buf.getvalue()
n = 0
while not os.path.exists(stop):
    n += 1
    kind = random.choice(['good', 'good', 'bad', 'threaded-good', 'threaded-bad'])
    size = 12 << 20 if big_ok and random.random() < 0.1 else random.randint(1, 64) << 10
    data = good(size) if kind.endswith('good') else b'not a zip ' * random.randint(1, 5000)
    name = '%s-%d.zip' % (me, n)
    path = os.path.join(bucket, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    rc = []
    def close():
        try:
            os.close(fd); rc.append(0)
        except OSError as e:
            rc.append(e.errno)
    if kind.startswith('threaded'):
        t = threading.Thread(target=close); t.start(); t.join()
    else:
        close()
    print(json.dumps({'name': name, 'kind': kind, 'rc': rc[0], 'sha': hashlib.sha256(data).hexdigest()}), flush=True)
"#;

/// 16 reader threads until STOP exists; prints counts and any mismatch.
const READERS: &str = r#"
import os, random, sys, threading
mnt, stop, token, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
counts = {'ok': 0, 'eio': 0, 'enoent': 0, 'wrong': 0}
wrong = []
lock = threading.Lock()
def note(what, detail=None):
    with lock:
        counts[what] += 1
        if what == 'wrong' and len(wrong) < 10:
            wrong.append(detail)
def reader():
    while not os.path.exists(stop):
        which = random.randrange(6)
        try:
            if which == 0:
                ok = open(os.path.join(mnt, 'registries/static/token')).read() == token
            elif which == 1:
                ok = open(os.path.join(mnt, 'secrets/ci/key')).read() == key
            elif which == 2:
                open(os.path.join(mnt, 'registries/flaky/token')).read(); ok = True
            elif which == 3:
                ok = '"auths"' in open(os.path.join(mnt, 'docker/config.json')).read()
            elif which == 4:
                b = random.choice(['fs', 's3b'])
                names = [n for n in os.listdir(os.path.join(mnt, 'projects', b)) if n.endswith('.zip')]
                # A listing shows uploads in flight too (any bytes so far,
                # good or bad): what is stored is checked at the end.
                if names:
                    with open(os.path.join(mnt, 'projects', b, random.choice(names)), 'rb') as f:
                        f.read(2)
                ok = True
            else:
                os.stat(os.path.join(mnt, 'projects/fs', 'missing-%x.zip' % random.getrandbits(64)))
                ok = False
            note('ok' if ok else 'wrong', 'value %d' % which)
        except FileNotFoundError:
            note('enoent')
        except OSError as e:
            note('eio' if e.errno == 5 else 'wrong', 'errno %d in %d' % (e.errno, which))
threads = [threading.Thread(target=reader) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(counts, wrong, flush=True)
"#;

fn spawn_python(script: &str, args: &[&str]) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

fn output_of(mut child: Child) -> String {
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut text).expect("stdout");
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "a soak worker failed: {text}");
    text
}

fn proc_figure(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn soak_readers_writers_flaky_helper_and_edits() {
    let seconds: u64 = std::env::var("CREDFS_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let server = S3Server::start(&["s3b"]);
    let mut daemon = Daemon::prepare("");
    let dir = daemon.dir.path().to_path_buf();
    let helper = dir.join("flaky");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ $(( $(od -An -N1 -tu1 /dev/urandom) % 2 )) = 0 ] && {{ echo flaky >&2; exit 1; }}\necho '{{\"username\":\"u\",\"password\":\"{FLAKY}\"}}'\n"
        ),
    )
    .expect("helper");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir_all(daemon.store().join("fs")).expect("bucket");
    let spool = dir.join("spool");
    let store = daemon.store();
    let config = |edit: u64| {
        format!(
            "[registries.static]\nprovider = \"static\"\nregistry = \"static.example\"\nusername = \"u\"\npassword = \"{TOKEN}\"\n\
             [registries.flaky]\nprovider = \"helper\"\nregistry = \"flaky.example\"\ncommand = [\"{}\"]\ntimeout = \"2s\"\nttl = \"2s\"\n\
             [secrets.ci]\nkey = \"{KEY}\"\n[secrets.churn]\nedit = \"{edit}\"\n\
             [stores.disk]\nprovider = \"filesystem\"\nroot = \"{}\"\nbuckets = [\"fs\"]\n{}",
            helper.display(),
            store.display(),
            server.store_config("s3", &["s3b"], "part_size = \"5MiB\"", &spool),
        )
    };
    fs::write(&daemon.config, config(0)).expect("config");
    for secret in [TOKEN, KEY, FLAKY] {
        daemon.secret(secret);
    }
    daemon.spawn_with_env(&[("AWS_EC2_METADATA_DISABLED", "true")]);
    let pid = daemon.pid();
    // Warm: every kind of file read once, before the figures are taken.
    for path in [
        "registries/static/token",
        "secrets/ci/key",
        "docker/config.json",
    ] {
        fs::read(daemon.path(path)).expect("warm read");
    }
    let (rss_start, fds_start) = (proc_figure(pid, "VmRSS"), open_fds(pid));
    let sockets_start = sockets(pid).len();

    let stop = dir.join("stop");
    let stop_arg = stop.to_string_lossy().into_owned();
    let mnt = daemon.mnt.to_string_lossy().into_owned();
    let readers = spawn_python(READERS, &[&mnt, &stop_arg, TOKEN, KEY]);
    let writers: Vec<(String, Child)> = (0..4)
        .map(|i| {
            let bucket = if i % 2 == 0 { "fs" } else { "s3b" };
            let path = daemon.path(&format!("projects/{bucket}"));
            let me = format!("w{i}");
            let child = spawn_python(
                WRITER,
                &[
                    &path.to_string_lossy(),
                    &me,
                    &stop_arg,
                    if i == 1 { "1" } else { "0" },
                ],
            );
            (bucket.to_string(), child)
        })
        .collect();
    let started = Instant::now();
    let mut edits = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        edits += 1;
        let next = dir.join("config.next");
        fs::write(&next, config(edits)).expect("edit");
        fs::set_permissions(&next, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::rename(&next, &daemon.config).expect("rename into place");
    }
    fs::write(&stop, "").expect("stop");

    let read_counts = output_of(readers);
    assert!(
        read_counts.contains("'wrong': 0"),
        "a reader saw a wrong value: {read_counts}"
    );
    let mut uploads = 0;
    let mut committed = 0;
    for (bucket, child) in writers {
        for line in output_of(child).lines() {
            let upload: Value = serde_json::from_str(line).expect("a JSON line");
            let name = upload["name"].as_str().expect("name");
            let stored = match bucket.as_str() {
                "fs" => daemon.store().join("fs").join(name),
                _ => server.object("s3b", name),
            };
            let good = upload["kind"].as_str().unwrap_or("").ends_with("good");
            uploads += 1;
            if good {
                assert_eq!(upload["rc"], 0, "{line}");
                assert_eq!(
                    sha256(&stored),
                    upload["sha"].as_str().unwrap_or(""),
                    "{line}"
                );
                committed += 1;
            } else {
                assert_eq!(upload["rc"], libc::EINVAL, "{line}");
                assert!(!stored.exists(), "a refused upload is stored: {line}");
            }
        }
    }
    assert!(uploads >= 20, "only {uploads} uploads in {seconds} s");

    // Nothing of an upload is left: no spool file, no multipart state. The
    // daemon's own spool directories (a lock file each) stay while it runs.
    let leftovers = |dir: &Path| -> Vec<String> {
        files_in(dir)
            .into_iter()
            .filter(|n| !n.ends_with(".zip") && !n.starts_with(".credfs-instance-"))
            .collect()
    };
    wait_for("spools to be removed", Duration::from_secs(20), || {
        leftovers(&daemon.store().join("fs")).is_empty()
            && spool_files(&daemon.store().join("fs")).is_empty()
            && leftovers(&server.dir.path().join("data/s3b")).is_empty()
            && walk_files(&spool).is_empty()
    });
    // s3s-fs keeps each object's metadata beside the bucket as
    // `.bucket-*.object-*.json`; anything else there is upload state.
    let upload_state: Vec<String> = files_in(&server.dir.path().join("data"))
        .into_iter()
        .filter(|n| n != "s3b" && !n.starts_with(".bucket-"))
        .collect();
    assert!(
        upload_state.is_empty(),
        "multipart state left: {upload_state:?}"
    );
    // Back near where it started once the kernel lets go of what it held.
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
    let status = || -> Value {
        serde_json::from_slice(&fs::read(daemon.path("status.json")).expect("status"))
            .expect("JSON")
    };
    // The kernel's FORGETs arrive on their own time.
    wait_for("the kernel to forget", Duration::from_secs(10), || {
        status()["inodes"]["held"].as_u64().unwrap_or(u64::MAX) < 100
    });
    let status = status();
    let (rss_end, fds_end) = (proc_figure(pid, "VmRSS"), open_fds(pid));
    println!(
        "soak: {seconds} s, {edits} config edits, {uploads} uploads ({committed} committed), reads {read_counts}\
         soak: RSS {rss_start} -> {rss_end} KiB (peak {} KiB), fds {fds_start} -> {fds_end}, inodes {}",
        proc_figure(pid, "VmHWM"),
        status["inodes"]
    );
    // Idle keep-alive connections to the S3 server stay pooled for a while;
    // the daemon's own spool and journal directories, with their locks,
    // stay open for its life (one set per directory, made by the first
    // upload); every other descriptor is back.
    let fd_targets = fd_targets(pid);
    let own_dirs = fd_targets
        .iter()
        .filter(|t| t.contains("/.credfs-instance-"))
        .count();
    let sockets_end = sockets(pid).len();
    let (others_start, others_end) = (fds_start - sockets_start, fds_end - sockets_end - own_dirs);
    assert!(
        others_end <= others_start,
        "descriptors other than sockets: {others_start} -> {others_end}: {fd_targets:?}"
    );
    assert!(
        sockets_end <= sockets_start + 32,
        "sockets: {sockets_start} -> {sockets_end}: {fd_targets:?}"
    );
    // What the allocator keeps after a burst of 12 MiB multipart uploads;
    // a leak would grow with the soak's length instead.
    assert!(
        rss_end <= rss_start * 2,
        "RSS: {rss_start} -> {rss_end} KiB"
    );
    let log = daemon.log();
    assert!(!log.contains("panic"), "{log}");
}

fn fd_targets(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

fn sockets(pid: u32) -> Vec<String> {
    fd_targets(pid)
        .into_iter()
        .filter(|t| t.starts_with("socket:"))
        .collect()
}

fn walk_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk_files(&path));
        } else if !entry.file_name().to_string_lossy().ends_with("lock") {
            found.push(path.display().to_string());
        }
    }
    found
}
