//! What the benchmarks share: a credfs daemon on a scratch mount.
#![allow(dead_code)] // each bench uses its own share

use std::fs;
use std::io::Read;
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
        Self::start_with_env(dir, name, config, &[])
    }

    /// `start`, with `env` added to the daemon's environment.
    pub fn start_with_env(dir: &Path, name: &str, config: &str, env: &[(&str, &str)]) -> Daemon {
        let mnt = dir.join(format!("mnt-{name}"));
        fs::create_dir_all(&mnt).expect("mount point");
        let config_path = dir.join(format!("{name}.toml"));
        fs::write(&config_path, config).expect("config");
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let child = Command::new(BIN)
            .args(["--log-level", "warn", "mount", "--config"])
            .arg(&config_path)
            .arg(&mnt)
            .envs(env.iter().copied())
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

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// open + read + close of `path` (which holds `expected`), in this
/// process, `rounds` times after a warm-up of a tenth of that: (p50, p99).
pub fn read_latency(path: &Path, expected: &[u8], rounds: usize) -> (Duration, Duration) {
    let mut buf = Vec::with_capacity(4096);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds + rounds / 10 {
        buf.clear();
        let start = Instant::now();
        let mut file = fs::File::open(path).unwrap();
        file.read_to_end(&mut buf).unwrap();
        drop(file);
        if round >= rounds / 10 {
            samples.push(start.elapsed());
        }
        assert_eq!(buf, expected);
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// splitmix64: a fixed, seedable stream of jitters in [-1, 1).
pub struct Jitter(pub u64);

impl Jitter {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}
