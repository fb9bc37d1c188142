//! Memory of a daemon that runs for months: RSS after a million failed
//! `stat`s of random names and after a hundred thousand archives created
//! and deleted, against the same daemon's idle RSS measured in the same
//! run. Target: within 1.2x idle. `CREDFS_BENCH_STATS` and
//! `CREDFS_BENCH_ARCHIVES` shrink the counts for a quick look.

#[path = "common/mod.rs"]
mod common;

use common::Daemon;
use std::process::Command;

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn python(script: &str) {
    let status = Command::new("python3")
        .args(["-c", script])
        .status()
        .expect("python3");
    assert!(status.success(), "python3 failed");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let stats = count("CREDFS_BENCH_STATS", 1_000_000);
    let archives = count("CREDFS_BENCH_ARCHIVES", 100_000);
    let dir = tempfile::Builder::new()
        .prefix("credfs-bounded-")
        .tempdir()
        .expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("b")).expect("bucket");
    let config = format!(
        "[secrets.ci]\nkey = \"bench\"\n[stores.disk]\nprovider = \"filesystem\"\nroot = \"{}\"\nbuckets = [\"b\"]\n",
        store.display()
    );
    let daemon = Daemon::start(dir.path(), "bounded", &config);
    let bucket = daemon.mnt.join("projects/b");
    let bucket = bucket.to_string_lossy();
    // Idle: mounted, one secret read, one listing.
    python(&format!(
        "import os\nopen({:?}).read()\nos.listdir({bucket:?})\n",
        daemon.mnt.join("secrets/ci/key").to_string_lossy()
    ));
    let idle = daemon.memory_kib("VmRSS");

    let started = std::time::Instant::now();
    python(&format!(
        "import os, random\nb = {bucket:?}\nfor i in range({stats}):\n    try:\n        os.stat(os.path.join(b, 'n%032x.zip' % random.getrandbits(128)))\n    except FileNotFoundError:\n        pass\n"
    ));
    let stat_time = started.elapsed();
    let after_stats = daemon.memory_kib("VmRSS");

    // The smallest valid archive: an empty one (an end record alone).
    let started = std::time::Instant::now();
    python(&format!(
        "import os\nb = {bucket:?}\nempty = b'PK\\x05\\x06' + bytes(18)\nfor i in range({archives}):\n    p = os.path.join(b, 'a%d.zip' % i)\n    with open(p, 'wb') as f:\n        f.write(empty)\n    os.stat(p)\n    os.unlink(p)\n"
    ));
    let archive_time = started.elapsed();
    let after_archives = daemon.memory_kib("VmRSS");
    let peak = daemon.memory_kib("VmHWM");

    println!(
        "\nbounded_bench: daemon RSS against its idle RSS ({:.1} MiB), same run",
        mib(idle)
    );
    println!(
        "{:<52} {:>10} {:>8} {:>8}",
        "after", "RSS MiB", "x idle", "target"
    );
    let row = |what: String, kib: u64| {
        println!(
            "{what:<52} {:>10.1} {:>8.2} {:>8}",
            mib(kib),
            kib as f64 / idle.max(1) as f64,
            "<= 1.20"
        );
    };
    row(
        format!("{stats} failed stats ({:.0} s)", stat_time.as_secs_f64()),
        after_stats,
    );
    row(
        format!(
            "{archives} archives created and deleted ({:.0} s)",
            archive_time.as_secs_f64()
        ),
        after_archives,
    );
    row("peak (VmHWM) over the whole run".to_string(), peak);
}
