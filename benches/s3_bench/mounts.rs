//! The three file systems measured, each mounted on one endpoint, and the
//! same operations through each: `cp` and `cat` of the large archive, and
//! open-to-last-byte of the small one, read and written.

use super::sdk::{BUCKET, KEY_ID, SECRET};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_credfs");

/// A program running in the background, stopped (and its mount detached)
/// when dropped.
pub struct Mounted {
    child: Child,
    mnt: PathBuf,
    /// Where the bucket's objects appear.
    pub dir: PathBuf,
}

impl Mounted {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .status();
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn need(program: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| {
        panic!("{program} is needed: apt-get install s3fs rclone, and run tests/run.sh for s3s-fs")
    })
}

pub fn wait(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mounted(mnt: &Path) -> bool {
    let wanted = mnt.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(wanted.as_str()))
}

fn private_file(path: &Path, text: &str) {
    fs::write(path, text).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn mount_point(scratch: &Path, name: &str) -> PathBuf {
    let mnt = scratch.join(format!("mnt-{name}"));
    fs::create_dir_all(&mnt).expect("mount point");
    mnt
}

pub fn credfs(scratch: &Path, endpoint: &str) -> Mounted {
    let mnt = mount_point(scratch, "credfs");
    let spool = scratch.join("spool");
    fs::create_dir_all(&spool).expect("spool");
    let config = scratch.join("credfs.toml");
    private_file(
        &config,
        &format!(
            "[stores.s3]\nprovider = \"s3\"\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\nforce_path_style = true\nbuckets = [\"{BUCKET}\"]\nspool_dir = \"{}\"\n",
            spool.display()
        ),
    );
    let child = Command::new(BIN)
        .args(["--log-level", "warn", "mount", "--config"])
        .arg(&config)
        .arg(&mnt)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("STATE_DIRECTORY", scratch.join("state"))
        .spawn()
        .expect("credfs");
    let dir = mnt.join("projects").join(BUCKET);
    wait("credfs", || fs::read_dir(&dir).is_ok());
    Mounted { child, mnt, dir }
}

pub fn s3fs(scratch: &Path, endpoint: &str) -> Mounted {
    let mnt = mount_point(scratch, "s3fs");
    let passwd = scratch.join("s3fs-passwd");
    private_file(&passwd, &format!("{KEY_ID}:{SECRET}\n"));
    let child = Command::new(need("s3fs"))
        .arg(BUCKET)
        .arg(&mnt)
        .args(["-f", "-o", &format!("passwd_file={}", passwd.display())])
        .args(["-o", &format!("url={endpoint}")])
        .args(["-o", "use_path_request_style", "-o", "endpoint=us-east-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3fs");
    wait("s3fs", || mounted(&mnt));
    Mounted {
        child,
        dir: mnt.clone(),
        mnt,
    }
}

pub fn rclone(scratch: &Path, endpoint: &str) -> Mounted {
    let mnt = mount_point(scratch, "rclone");
    let conf = scratch.join("rclone.conf");
    private_file(
        &conf,
        &format!(
            "[s3local]\ntype = s3\nprovider = Other\nendpoint = {endpoint}\naccess_key_id = {KEY_ID}\nsecret_access_key = {SECRET}\nforce_path_style = true\n"
        ),
    );
    let child = Command::new(need("rclone"))
        .env_remove("AWS_CA_BUNDLE")
        .arg("--config")
        .arg(&conf)
        .args(["mount", &format!("s3local:{BUCKET}")])
        .arg(&mnt)
        .args(["--vfs-cache-mode", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rclone");
    wait("rclone", || mounted(&mnt));
    Mounted {
        child,
        dir: mnt.clone(),
        mnt,
    }
}

/// Drops the kernel's caches: `level` 1 the page cache, 3 also dentries
/// and inodes.
pub fn drop_caches(level: u8) {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", level.to_string());
}

/// Runs a shell command, timed.
pub fn timed(script: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// Open to last byte of `path`, its name looked up just before (as `ls`
/// or a first `stat` leaves it) and its pages not cached.
pub fn read_small(path: &Path) -> Duration {
    drop_caches(1);
    fs::metadata(path).expect("stat");
    let start = Instant::now();
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("read");
    start.elapsed()
}

/// Open (truncating) to a successful close of `path` holding `bytes`: the
/// upload is done when close returns.
pub fn write_small(path: &Path, bytes: &[u8]) -> Duration {
    fs::metadata(path).expect("stat");
    let start = Instant::now();
    let mut file = fs::File::create(path).expect("create");
    file.write_all(bytes).expect("write");
    let fd = file.into_raw_fd();
    // SAFETY: `fd` is ours (taken from the File) and closed once.
    let closed = unsafe { libc::close(fd) };
    assert_eq!(closed, 0, "close of {}", path.display());
    start.elapsed()
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    let kib: u64 = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}
