//! Live config at scale (needs root for FUSE):
//!   cargo bench --bench reload_bench
//! With 1,000 registries and 1,000 secrets: the time from renaming a new
//! config into place to the new tree being served, next to the time it
//! takes just to read and validate that config in-process; and the daemon's
//! idle RSS next to a daemon serving one entry.

mod common;

use common::Daemon;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REGISTRIES: usize = 1000;
const SECRET_GROUPS: usize = 10;
const KEYS_PER_GROUP: usize = 100;
const ROUNDS: usize = 20;

/// `version` shows in `secrets/marker/version`; with `all_changed` every
/// registry's and secret's value changes too.
fn big_config(version: usize, all_changed: bool) -> String {
    let tag = if all_changed { version } else { 0 };
    let mut text = String::with_capacity(256 * (REGISTRIES + SECRET_GROUPS * KEYS_PER_GROUP));
    for i in 0..REGISTRIES {
        text.push_str(&format!(
            "[registries.r{i:04}]\nprovider = \"static\"\nregistry = \"r{i}.example\"\nusername = \"user{i}\"\npassword = \"token-{i}-{tag}\"\n"
        ));
    }
    for g in 0..SECRET_GROUPS {
        text.push_str(&format!("[secrets.g{g:02}]\n"));
        for k in 0..KEYS_PER_GROUP {
            text.push_str(&format!("k{k:03} = \"value-{g}-{k}-{tag}\"\n"));
        }
    }
    text.push_str(&format!("[secrets.marker]\nversion = \"{version}\"\n"));
    text
}

fn replace(config: &Path, text: &str) -> Instant {
    let staged = config.with_extension("new");
    fs::write(&staged, text).expect("staged config");
    let started = Instant::now();
    fs::rename(&staged, config).expect("rename over");
    started
}

fn served(marker: &Path, version: usize) -> bool {
    fs::read(marker).is_ok_and(|v| v == version.to_string().as_bytes())
}

/// Milliseconds from each edit to the new tree, sorted.
fn reload_times(daemon: &Daemon, all_changed: bool, first_version: usize) -> Vec<f64> {
    let marker = daemon.mnt.join("secrets/marker/version");
    let mut times: Vec<f64> = (first_version..first_version + ROUNDS)
        .map(|version| {
            let started = replace(&daemon.config, &big_config(version, all_changed));
            while !served(&marker, version) {
                assert!(started.elapsed() < Duration::from_secs(30), "no reload");
                std::thread::sleep(Duration::from_micros(200));
            }
            let took = started.elapsed().as_secs_f64() * 1000.0;
            // Let the watcher settle before the next edit.
            std::thread::sleep(Duration::from_millis(400));
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

fn parse_time(config: &Path) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        credfs::config::load(config).expect("the bench config is valid");
        best = best.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    best
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scratch = PathBuf::from("/var/tmp/credfs-reload-bench");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).expect("scratch");

    let small = Daemon::start(&scratch, "small", "[secrets.one]\nkey = \"value\"\n");
    let big = Daemon::start(&scratch, "big", &big_config(0, false));
    let parse_ms = parse_time(&big.config);
    let one_changed = reload_times(&big, false, 1);
    let all_changed = reload_times(&big, true, 1 + ROUNDS);
    // Every entry read once, then left alone.
    for i in 0..REGISTRIES {
        let _ = fs::read(big.mnt.join(format!("registries/r{i:04}/token")));
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = fs::read(small.mnt.join("secrets/one/key"));
    let (big_rss, small_rss) = (big.memory_kib("VmRSS"), small.memory_kib("VmRSS"));
    let mib = |kib: u64| kib as f64 / 1024.0;

    println!(
        "\nreload_bench: {REGISTRIES} registries, {} secrets, {ROUNDS} edits per row (rename over the config)\n",
        SECRET_GROUPS * KEYS_PER_GROUP
    );
    println!(
        "{:<44} {:>10} {:>22} {:>8} {:>10}",
        "measure", "credfs", "baseline", "ratio", "target"
    );
    let row = |name: &str, value: f64, baseline: f64, what: &str, target: &str| {
        println!(
            "{name:<44} {value:>10.1} {:>22} {:>7.2}x {target:>10}",
            format!("{baseline:.1} {what}"),
            value / baseline
        );
    };
    let p50 = |t: &[f64]| t[t.len() / 2];
    let max = |t: &[f64]| t[t.len() - 1];
    row(
        "reload, one entry changed, p50 (ms)",
        p50(&one_changed),
        parse_ms,
        "parse",
        "< 100 ms",
    );
    row(
        "reload, one entry changed, max (ms)",
        max(&one_changed),
        parse_ms,
        "parse",
        "",
    );
    row(
        "reload, every entry changed, p50 (ms)",
        p50(&all_changed),
        parse_ms,
        "parse",
        "< 100 ms",
    );
    row(
        "reload, every entry changed, max (ms)",
        max(&all_changed),
        parse_ms,
        "parse",
        "",
    );
    row(
        "idle RSS (MiB)",
        mib(big_rss),
        mib(small_rss),
        "one entry",
        "< 32 MiB",
    );
}
