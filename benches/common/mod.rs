//! What the benchmarks share: a credfs daemon on a scratch mount.
#![allow(dead_code)] // each bench uses its own share

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_credfs");

pub struct Daemon {
    child: Child,
    pub mnt: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    /// Writes `config` to `<dir>/<name>.toml` and mounts it on
    /// `<dir>/mnt-<name>`, waiting until `registries/` can be listed.
    pub fn start(dir: &Path, name: &str, config: &str) -> Daemon {
        let mnt = dir.join(format!("mnt-{name}"));
        fs::create_dir_all(&mnt).expect("mount point");
        let config_path = dir.join(format!("{name}.toml"));
        fs::write(&config_path, config).expect("config");
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let child = Command::new(BIN)
            .args(["--log-level", "warn", "mount", "--config"])
            .arg(&config_path)
            .arg(&mnt)
            .stdin(Stdio::null())
            .spawn()
            .expect("credfs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_dir(mnt.join("registries")).is_err() {
            assert!(Instant::now() < deadline, "credfs did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            child,
            mnt,
            config: config_path,
        }
    }

    /// A `/proc/PID/status` figure in KiB: `VmRSS` now, `VmHWM` at peak.
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
