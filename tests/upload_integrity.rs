//! Every upload tells its writer the truth, as real programs write: a close
//! on another thread than the open, a forked child, a dup'd descriptor, an
//! async runtime, a rename to a name the listing would never show.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

const CONFIG: &str = r#"
[stores.disk]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b"]
max_object_size = "2MiB"
"#;

fn start() -> (Daemon, PathBuf) {
    let daemon = Daemon::start(CONFIG);
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    fs::create_dir_all(daemon.store().join("b")).expect("bucket");
    (daemon, src)
}

/// Runs a python script with `ARCHIVE` (the mounted target) and `SOURCE`
/// defined; returns its stdout, trimmed.
fn python(script: &str, archive: &Path, source: &Path) -> String {
    let program = format!(
        "import os, sys, threading\nARCHIVE = {:?}\nSOURCE = {:?}\n{script}",
        archive.to_string_lossy(),
        source.to_string_lossy()
    );
    let out = run("python3", &["-c", &program]);
    assert!(out.status.success(), "python: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Open on the main thread, close on another: the close's result.
const CLOSE_ON_A_THREAD: &str = r#"
fd = os.open(ARCHIVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, open(SOURCE, 'rb').read())
result = []
def closer():
    try:
        os.close(fd)
        result.append(0)
    except OSError as e:
        result.append(e.errno)
t = threading.Thread(target=closer); t.start(); t.join()
print(result[0])
"#;

/// Open, write and close on three different threads, as a Go program's
/// goroutines may; then read it back at once.
const THREE_THREADS: &str = r#"
box = {}
def run(f):
    t = threading.Thread(target=f); t.start(); t.join()
def opener(): box['fd'] = os.open(ARCHIVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
def writer(): os.write(box['fd'], open(SOURCE, 'rb').read())
def closer():
    try:
        os.close(box['fd']); box['rc'] = 0
    except OSError as e:
        box['rc'] = e.errno
run(opener); run(writer); run(closer)
same = box['rc'] == 0 and open(ARCHIVE, 'rb').read() == open(SOURCE, 'rb').read()
print(box['rc'], 'same' if same else 'different')
"#;

#[test]
fn a_close_on_another_thread_returns_the_commit_result() {
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 10_000);
    let bad = src.join("bad.zip");
    fs::write(&bad, b"definitely not a zip\n".repeat(100)).expect("bad");
    let big = make_zip(&src, "big.zip", 3 << 20);
    let target = daemon.path("projects/b/t.zip");

    assert_eq!(
        python(CLOSE_ON_A_THREAD, &target, &bad),
        libc::EINVAL.to_string()
    );
    assert!(!daemon.store().join("b/t.zip").exists());
    assert_eq!(
        python(CLOSE_ON_A_THREAD, &target, &big),
        libc::EFBIG.to_string(),
        "over max_object_size"
    );
    assert_eq!(python(CLOSE_ON_A_THREAD, &target, &good), "0");
    assert_eq!(sha256(&daemon.store().join("b/t.zip")), sha256(&good));

    assert_eq!(
        python(THREE_THREADS, &daemon.path("projects/b/go.zip"), &good),
        "0 same",
        "committed and readable once close() returned"
    );
    assert_eq!(
        python(THREE_THREADS, &daemon.path("projects/b/go-bad.zip"), &bad),
        format!("{} different", libc::EINVAL)
    );
}

#[test]
fn a_tokio_fs_writer_gets_the_commit_result_from_close() {
    let (daemon, src) = start();
    let program = Path::new(BIN)
        .parent()
        .expect("target dir")
        .join("examples/tokio_upload");
    assert!(
        program.exists(),
        "{} is built by cargo test",
        program.display()
    );
    let good = make_zip(&src, "good.zip", 10_000);
    let bad = src.join("bad.zip");
    fs::write(&bad, b"not a zip at all").expect("bad");
    let upload = |source: &Path, name: &str| {
        let target = daemon.path(&format!("projects/b/{name}"));
        let out = run(
            &program.to_string_lossy(),
            &[&source.to_string_lossy(), &target.to_string_lossy()],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(upload(&bad, "t.zip"), format!("close {}", libc::EINVAL));
    assert_eq!(upload(&good, "t.zip"), "close 0 same");
}

#[test]
fn a_forked_child_closing_its_copy_does_not_commit() {
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 10_000);
    // The store's own file shows whether a commit happened: the mount
    // lists an upload in progress too.
    let stored = daemon.store().join("b/f.zip");
    let script = r#"
fd = os.open(ARCHIVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, open(SOURCE, 'rb').read())
pid = os.fork()
if pid == 0:
    os.close(fd)
    os._exit(0)
os.waitpid(pid, 0)
before = os.path.exists(STORED)
os.close(fd)
print(before, open(STORED, 'rb').read() == open(SOURCE, 'rb').read())
"#
    .replace("STORED", &format!("{:?}", stored.to_string_lossy()));
    let out = python(&script, &daemon.path("projects/b/f.zip"), &good);
    assert_eq!(out, "False True", "the child's close committed nothing");
}

#[test]
fn a_committed_archive_never_changes_through_another_descriptor() {
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 100_000);
    let target = daemon.path("projects/b/x.zip");
    // After the commit: a dup'd descriptor and a forked child's copy.
    let out = python(
        r#"
fd = os.open(ARCHIVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, open(SOURCE, 'rb').read())
dup = os.dup(fd)
os.close(fd)
results = []
try:
    os.pwrite(dup, b'JUNK', 0); results.append('dup wrote')
except OSError as e:
    results.append('dup %d' % e.errno)
pid = os.fork()
if pid == 0:
    try:
        os.pwrite(dup, b'JUNK', 100); os._exit(0)
    except OSError as e:
        os._exit(e.errno)
_, status = os.waitpid(pid, 0)
results.append('child %d' % os.waitstatus_to_exitcode(status))
try:
    os.ftruncate(dup, 10); results.append('truncated')
except OSError as e:
    results.append('truncate %d' % e.errno)
try:
    os.close(dup)
except OSError:
    pass
print(' '.join(results))
"#,
        &target,
        &good,
    );
    let eio = libc::EIO;
    assert_eq!(
        out,
        format!("dup {eio} child {eio} truncate {eio}"),
        "writes after the commit"
    );
    assert_eq!(sha256(&daemon.store().join("b/x.zip")), sha256(&good));
    assert_eq!(sha256(&target), sha256(&good));

    // During the check: junk written at offset 0 from another thread while
    // the owner closes. Either the junk landed first (the archive is
    // refused) or the check saw the good bytes and they are what is stored.
    for round in 0..20 {
        let out = python(
            r#"
fd = os.open(ARCHIVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, open(SOURCE, 'rb').read())
dup = os.dup(fd)
stop = threading.Event()
def junk():
    while not stop.is_set():
        try:
            os.pwrite(dup, b'JUNKJUNK', 0)
        except OSError:
            return
t = threading.Thread(target=junk); t.start()
try:
    os.close(fd); rc = 0
except OSError as e:
    rc = e.errno
stop.set(); t.join()
try:
    os.close(dup)
except OSError:
    pass
print(rc)
"#,
            &daemon.path(&format!("projects/b/race{round}.zip")),
            &good,
        );
        let stored = daemon.store().join(format!("b/race{round}.zip"));
        match out.as_str() {
            "0" => assert_eq!(sha256(&stored), sha256(&good), "round {round}"),
            rc => {
                assert_eq!(rc, libc::EINVAL.to_string(), "round {round}");
                assert!(!stored.exists(), "round {round}");
            }
        }
    }
}

#[test]
fn renaming_to_an_archive_name_the_listing_would_never_show_is_einval() {
    require_program("rsync");
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 10_000);
    let staged = daemon.path("projects/b/stage1");
    assert!(cp(&good, &staged).status.success());
    let refused = fs::rename(&staged, daemon.path("projects/b/My Project.zip"))
        .expect_err("a space is not an archive name");
    assert_eq!(refused.raw_os_error(), Some(libc::EINVAL));
    assert!(staged.exists(), "the staging file is kept for another try");
    let rsync = run(
        "rsync",
        &[
            &good.to_string_lossy(),
            &daemon.path("projects/b/My Project.zip").to_string_lossy(),
        ],
    );
    assert!(!rsync.status.success(), "rsync reports the refusal");
    assert!(
        stderr(&rsync).contains("Invalid argument"),
        "{}",
        stderr(&rsync)
    );
    let listed: Vec<String> = fs::read_dir(daemon.path("projects/b"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".zip"))
        .collect();
    assert!(listed.is_empty(), "nothing reported as stored: {listed:?}");
}

#[test]
fn writes_and_truncations_past_max_object_size_fail_when_they_happen() {
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 10_000);
    let out = python(
        r#"
fd = os.open(ARCHIVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, open(SOURCE, 'rb').read())
results = []
try:
    os.ftruncate(fd, 3 << 20); results.append('truncated')
except OSError as e:
    results.append('truncate %d' % e.errno)
try:
    os.pwrite(fd, b'x', 3 << 20); results.append('wrote')
except OSError as e:
    results.append('write %d' % e.errno)
print(' '.join(results))
try:
    os.close(fd)
except OSError:
    pass
"#,
        &daemon.path("projects/b/big.zip"),
        &good,
    );
    let efbig = libc::EFBIG;
    assert_eq!(out, format!("truncate {efbig} write {efbig}"));
    let truncate = run(
        "truncate",
        &[
            "-s",
            "3M",
            &daemon.path("projects/b/stage").to_string_lossy(),
        ],
    );
    assert!(
        stderr(&truncate).contains("File too large"),
        "{}",
        stderr(&truncate)
    );
}

#[test]
fn a_zip64_offset_that_overflows_is_einval_not_a_crash() {
    let (daemon, src) = start();
    let crafted = src.join("crafted.zip");
    let script = format!(
        "import struct\nz = b'PK\\x03\\x04' + bytes(60)\nz += b'PK\\x06\\x07' + bytes(4) + struct.pack('<Q', 0xFFFFFFFFFFFFFFF0) + struct.pack('<I', 1)\nz += b'PK\\x05\\x06' + bytes(4) + b'\\xff' * 4 + b'\\xff' * 8 + bytes(2)\nopen({:?}, 'wb').write(z)\n",
        crafted.to_string_lossy()
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = cp(&crafted, &daemon.path("projects/b/crafted.zip"));
    assert!(
        stderr(&refused).contains("Invalid argument"),
        "{}",
        stderr(&refused)
    );
    // The daemon is still serving.
    let good = make_zip(&src, "good.zip", 1000);
    assert!(
        cp(&good, &daemon.path("projects/b/good.zip"))
            .status
            .success()
    );
}

#[test]
fn a_name_that_is_not_utf8_is_never_found_and_never_made() {
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 1000);
    let staged = daemon.path("projects/b/staged");
    assert!(cp(&good, &staged).status.success());
    let out = python(
        r#"
import errno
b = os.path.dirname(ARCHIVE).encode()
def code(f):
    try:
        f(); return 0
    except OSError as e:
        return e.errno
print(code(lambda: os.stat(b + b'/\xff.zip')),
      code(lambda: os.close(os.open(b + b'/\xff.zip', os.O_WRONLY | os.O_CREAT))),
      code(lambda: os.rename(b + b'/staged', b + b'/\xff.zip')),
      code(lambda: os.unlink(b + b'/\xff.zip')),
      code(lambda: os.mkdir(b + b'/dir')))
"#,
        &daemon.path("projects/b/x.zip"),
        &good,
    );
    let (enoent, einval, eperm) = (libc::ENOENT, libc::EINVAL, libc::EPERM);
    assert_eq!(out, format!("{enoent} {einval} {einval} {enoent} {eperm}"));
    assert!(staged.exists(), "a refused rename keeps the staging file");
}
