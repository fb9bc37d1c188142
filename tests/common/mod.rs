//! Test fixture: a real credfs daemon on a real FUSE mount, driven by real
//! programs. Every daemon's log is checked for the secrets it was given.
#![allow(dead_code)]

pub mod podman;
pub mod servers;
pub mod token_servers;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_credfs");

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let wanted = mountpoint.to_string_lossy().to_string();
    mounts
        .lines()
        .any(|l| l.starts_with("credfs ") && l.split(' ').nth(1) == Some(wanted.as_str()))
}

pub fn require_program(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is not installed: run tests/run.sh, which installs what the tests need"
    );
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Values that must never appear in the log or status.json.
    secrets: Vec<String>,
}

impl Daemon {
    /// A scratch directory with `config.toml` (mode 0600), `mnt/` and `store/`.
    /// `@DIR@` in the config text is replaced by the scratch directory.
    pub fn prepare(config: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("credfs-test-")
            .tempdir()
            .expect("tempdir");
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).expect("mnt");
        fs::create_dir_all(dir.path().join("store")).expect("store");
        let config_path = dir.path().join("config.toml");
        let text = config.replace("@DIR@", &dir.path().to_string_lossy());
        fs::write(&config_path, text).expect("config");
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        Daemon {
            log: dir.path().join("daemon.log"),
            dir,
            mnt,
            config: config_path,
            child: None,
            secrets: Vec::new(),
        }
    }

    pub fn start(config: &str) -> Daemon {
        let mut daemon = Self::prepare(config);
        daemon.spawn();
        daemon
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.mnt.join(relative)
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Registers values the daemon must never log.
    pub fn secret(&mut self, value: &str) {
        self.secrets.push(value.to_string());
    }

    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        self.spawn_wrapped(&[], env);
    }

    /// Starts credfs through `wrapper` (a program and its arguments, such
    /// as setpriv dropping capabilities), with `env` added.
    pub fn spawn_wrapped(&mut self, wrapper: &[&str], env: &[(&str, &str)]) {
        self.spawn_configured(wrapper, env, |_| {});
    }

    /// Starts credfs with the live connection `fd` in `LISTEN_FDS` under
    /// `name`, as systemd restarts a unit whose store holds it.
    pub fn spawn_adopting(&mut self, fd: std::os::fd::RawFd, name: &str, env: &[(&str, &str)]) {
        let mut env = env.to_vec();
        env.extend([("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", name)]);
        // LISTEN_PID is the daemon's own pid, known only once it runs.
        let wrapper = ["sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""];
        self.spawn_configured(&wrapper, &env, move |command| {
            use std::os::unix::process::CommandExt;
            // SAFETY: dup2 and fcntl are async-signal-safe. dup2 clears
            // close-on-exec on 3, except when `fd` is 3 already (then it
            // does nothing, and fcntl must).
            unsafe {
                command.pre_exec(move || {
                    let done = match fd {
                        3 => libc::fcntl(3, libc::F_SETFD, 0),
                        _ => libc::dup2(fd, 3) - 3,
                    };
                    match done {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        });
    }

    /// Starts `credfs mount --takeover`: the running daemon hands the live
    /// mount over and exits; its exit status is returned.
    pub fn spawn_taking_over(&mut self, env: &[(&str, &str)]) -> ExitStatus {
        let mut old = self.child.take().expect("a running daemon to take over");
        self.spawn_configured(&[], env, |command| {
            command.arg("--takeover");
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = old.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the old daemon did not leave");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn spawn_configured(
        &mut self,
        wrapper: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        command
            .args(["--log-level", "debug", "mount", "--config"])
            .arg(&self.config)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        configure(&mut command);
        let child = command.spawn().expect("spawn credfs");
        self.child = Some(child);
        let status = self.mnt.join("status.json");
        let mnt = self.mnt.clone();
        let log_path = self.log.clone();
        let child = self.child.as_mut().expect("child");
        wait_for("the mount", Duration::from_secs(20), || {
            if let Ok(Some(exit)) = child.try_wait() {
                panic!(
                    "credfs exited with {exit}: {}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            // Listing needs a live daemon; a stale mount answers ENOTCONN.
            is_mounted(&mnt) && fs::read_dir(&mnt).is_ok() && fs::read(&status).is_ok()
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Stops the daemon with `signal` and returns its exit status, after
    /// checking that no secret reached its log.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        self.signal(signal);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "credfs did not exit on signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        self.assert_no_secret_in(&self.log(), "the daemon log");
        status
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    pub fn assert_no_secret_in(&self, text: &str, place: &str) {
        for secret in &self.secrets {
            assert!(!text.contains(secret.as_str()), "a secret reached {place}");
        }
    }

    /// Kills the daemon without letting it unmount (a crash).
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            if !std::thread::panicking() {
                assert!(
                    status.success(),
                    "credfs exited with {status}: {}",
                    self.log()
                );
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
    }
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Shell commands that write `archive` through each common tool: (tool,
/// command); `dst(tool)` is where that tool writes.
pub fn writer_commands(
    archive: &Path,
    dst: impl Fn(&str) -> PathBuf,
) -> Vec<(&'static str, String)> {
    let z = archive.to_string_lossy();
    let to = |tool: &str| dst(tool).to_string_lossy().into_owned();
    vec![
        ("cp", format!("cp {z} {}", to("cp"))),
        ("dd", format!("dd if={z} of={} bs=1M status=none", to("dd"))),
        (
            "py",
            format!(
                "python3 -c 'import shutil; shutil.copy(\"{z}\", \"{}\")'",
                to("py")
            ),
        ),
        (
            "pyfile",
            format!(
                "python3 -c 'import shutil; shutil.copyfile(\"{z}\", \"{}\")'",
                to("pyfile")
            ),
        ),
        ("rsync", format!("rsync {z} {}", to("rsync"))),
    ]
}

/// `cp FROM TO`.
pub fn cp(from: &Path, to: &Path) -> Output {
    run("cp", &[&from.to_string_lossy(), &to.to_string_lossy()])
}

/// Runs `program` as `uid` (its own group, no others), as another user on
/// the host would.
pub fn as_user(uid: &str, program: &str, args: &[&str]) -> Output {
    let mut argv = vec!["--reuid", uid, "--regid", uid, "--clear-groups", program];
    argv.extend_from_slice(args);
    run("setpriv", &argv)
}

pub fn sh(script: &str) -> Output {
    run("sh", &["-c", script])
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a real ZIP archive of about `payload` random bytes with python's
/// zipfile, and returns its path.
pub fn make_zip(dir: &Path, name: &str, payload: usize) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        "import os, zipfile\nwith zipfile.ZipFile({:?}, 'w') as z:\n    z.writestr('data.bin', os.urandom({payload}))\n    z.writestr('readme.txt', 'project {name}')\n",
        path.to_string_lossy()
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "python3 zipfile: {}", stderr(&out));
    path
}

/// `zip -r target tree` run from `src`, over a small `tree/a.txt`: zip's
/// create, write, seek back and rewrite the header.
pub fn zip_tree_into(src: &Path, target: &Path) {
    let tree = src.join("tree");
    fs::create_dir_all(&tree).expect("mkdir tree");
    fs::write(tree.join("a.txt"), "alpha").expect("write a.txt");
    let out = sh(&format!(
        "cd {} && zip -qr {} tree",
        src.display(),
        target.display()
    ));
    assert!(out.status.success(), "zip: {}", stderr(&out));
}

pub fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[&path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The errno a raw open(2) of `path` fails with, via python (0 = success).
pub fn open_errno(path: &Path, flags: &str) -> i32 {
    let script = format!(
        "import os, sys\ntry:\n    os.close(os.open({:?}, {flags}, 0o644))\n    print(0)\nexcept OSError as e:\n    print(e.errno)\n",
        path.to_string_lossy()
    );
    let out = run("python3", &["-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("errno")
}

/// Upload spool files under `dir`: loose ones, and those in the daemons'
/// own directories (`.credfs-instance-*`), as paths.
pub fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".credfs-instance-") && entry.path().is_dir() {
            found.extend(spool_files(&entry.path()));
        } else if name.starts_with(".credfs-upload-") {
            found.push(entry.path());
        }
    }
    found.sort();
    found
}

/// The daemons' own directories in `dir`.
pub fn instance_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".credfs-instance-")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// A python process writing `target` that stops in the middle: it runs
/// `body` with `f` open for writing, prints "ready" and waits for the
/// file `go`; then it runs `after`, closes `f` and prints "closed", or
/// "errno N" when the close fails. Killed if the test ends first.
pub struct PausedWriter {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    go: PathBuf,
}

impl PausedWriter {
    pub fn start(target: &Path, go: &Path, body: &str, after: &str) -> PausedWriter {
        let script = format!(
            "import os, sys, time\nf = open({:?}, 'wb')\n{body}\nf.flush()\nprint('ready', flush=True)\nwhile not os.path.exists({:?}): time.sleep(0.01)\n{after}\ntry:\n    f.close()\n    print('closed', flush=True)\nexcept OSError as e:\n    print('errno', e.errno, flush=True)\n",
            target.to_string_lossy(),
            go.to_string_lossy()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut writer = PausedWriter {
            child,
            stdout,
            go: go.to_path_buf(),
        };
        assert_eq!(writer.line(), "ready", "the writer did not get going");
        writer
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut self.stdout, &mut line);
        line.trim().to_string()
    }

    /// Lets it go on; returns what its close did: "closed" or "errno N".
    pub fn finish(mut self) -> String {
        fs::write(&self.go, "").expect("go");
        self.line()
    }
}

impl Drop for PausedWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `credfs check --probe` of `config`, with `env` added.
pub fn probe(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["check", "--probe", "--config"])
        .arg(config)
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("credfs check")
}

/// Opens `target` (holding `old`), reads its last 64 KiB, replaces it with
/// `new` through `cp`, then reads its first 64 KiB through the same
/// handle: "errno N" when that read fails, else which bytes it returned.
pub fn replaced_mid_read(target: &Path, old: &Path, new: &Path) -> String {
    let script = format!(
        "import subprocess\nold, new = open({old:?}, 'rb').read(), open({new:?}, 'rb').read()\nf = open({target:?}, 'rb', buffering=0)\nf.seek(-65536, 2)\nassert f.read(65536) == old[-65536:], 'the tail before the replacement'\nsubprocess.run(['cp', {new:?}, {target:?}], check=True)\nf.seek(0)\ntry:\n    head = f.read(65536)\n    print('old bytes' if head == old[:65536] else 'new bytes' if head == new[:65536] else 'other bytes')\nexcept OSError as e:\n    print('errno', e.errno)\n",
        old = old.to_string_lossy(),
        new = new.to_string_lossy(),
        target = target.to_string_lossy(),
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One handle reads one version: `target` (an S3 or Azure archive) is
/// replaced while a handle on it is open; the handle's next GET fails with
/// EIO rather than mixing in new bytes, and a fresh open reads the new one.
pub fn assert_one_version_per_handle(src: &Path, target: &Path) {
    let old = make_zip(src, "a.zip", 20 << 20);
    let new = make_zip(src, "b.zip", 20 << 20);
    let size = |p: &Path| fs::metadata(p).expect("stat").len();
    assert_eq!(size(&old), size(&new));
    assert!(cp(&old, target).status.success());
    assert_eq!(
        replaced_mid_read(target, &old, &new),
        format!("errno {}", libc::EIO)
    );
    assert_eq!(
        sha256(target),
        sha256(&new),
        "a fresh open reads the new one"
    );
}

/// `readers` threads, each with its own handle on `target`, read it at
/// `seeks` random offsets each (some followed by a few sequential reads,
/// so windows grow and are thrown away), every read compared with
/// `source`: "ok", or the first mismatch.
pub fn random_reads(target: &Path, source: &Path, readers: usize, seeks: usize) -> String {
    let script = format!(
        "import os, random, threading\ndata = open({source:?}, 'rb').read()\nsize = len(data)\nbad = []\ndef reader(seed):\n    rnd = random.Random(seed)\n    with open({target:?}, 'rb', buffering=0) as f:\n        for _ in range({seeks}):\n            offset = rnd.randrange(size + 1000)\n            for _ in range(rnd.choice([1, 1, 2, 8])):\n                n = rnd.choice([1, 100, 4096, 65536, 1 << 20, 3 << 20])\n                f.seek(offset)\n                got = b''\n                while len(got) < n:\n                    chunk = f.read(n - len(got))\n                    if not chunk:\n                        break\n                    got += chunk\n                if got != data[offset:offset + n]:\n                    bad.append('%d bytes at %d' % (n, offset))\n                    return\n                offset += n\nthreads = [threading.Thread(target=reader, args=(s,)) for s in range({readers})]\nfor t in threads: t.start()\nfor t in threads: t.join()\nprint('mismatch: ' + bad[0] if bad else 'ok')\n",
        source = source.to_string_lossy(),
        target = target.to_string_lossy(),
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Reads `target` (holding `old`) in 1 MiB chunks through one handle,
/// calls `midway` after the first 8 MiB (which replaces the object, or
/// stops its server), and reads on to the end: "old bytes" when every
/// chunk was the old object's, "errno N" when a read failed (and nothing
/// else was read before it), "mixed" otherwise.
pub fn read_with_midway(target: &Path, old: &Path, midway: impl FnOnce()) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = format!(
        "import os, time\nold = open({old:?}, 'rb').read()\nf = open({target:?}, 'rb', buffering=0)\noffset = 0\ndef chunk():\n    global offset\n    got = f.read(1 << 20)\n    if got != old[offset:offset + len(got)]:\n        print('mixed', flush=True)\n        raise SystemExit(0)\n    offset += len(got)\n    return got\nwhile offset < 8 << 20:\n    chunk()\nprint('ready', flush=True)\nwhile not os.path.exists({go:?}): time.sleep(0.01)\ntry:\n    while chunk(): pass\n    print('old bytes' if offset == len(old) else 'short', flush=True)\nexcept OSError as e:\n    print('errno', e.errno, flush=True)\n",
        old = old.to_string_lossy(),
        target = target.to_string_lossy(),
        go = go.to_string_lossy(),
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut stdout, &mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        return line.trim().to_string();
    }
    midway();
    fs::write(&go, "").expect("go");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    let _ = child.wait();
    rest.trim().to_string()
}
