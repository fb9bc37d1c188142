//! A container reading its registry token through a bind mount of the
//! credfs tree, against the same container reading the same bytes from a
//! tmpfs file, in one run (root; podman, runc, umoci and busybox-static,
//! which tests/run.sh installs):
//!   cargo bench --bench container_bench
//! Times each `podman run --rm -v SOURCE:/run/secrets/x:ro IMAGE cat
//! /run/secrets/x/token` from its spawn to the token arriving on its stdout,
//! and to its exit; p50 over ROUNDS runs of each, interleaved so that the
//! machine's other load falls on both alike.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
#[path = "../tests/common/podman.rs"]
mod podman;

use common::Daemon;
use podman::{BUSYBOX, Podman, image};

const TOKEN: &str = "bench-container-token-0123456789abcdef";
const ROUNDS: usize = 11;

/// One container reading `source`'s token: (spawn to the token printed,
/// spawn to podman's exit).
fn one_run(podman: &Podman, image_id: &str, source: &Path) -> (Duration, Duration) {
    let volume = format!("{}:/run/secrets/x:ro", source.display());
    let start = Instant::now();
    let mut child = podman
        .run_command(&["-v", &volume, image_id, "cat", "/run/secrets/x/token"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("podman run");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut printed = Vec::new();
    let mut chunk = [0u8; 256];
    while printed.len() < TOKEN.len() {
        match stdout.read(&mut chunk).expect("the container's stdout") {
            0 => break,
            n => printed.extend_from_slice(&chunk[..n]),
        }
    }
    let to_token = start.elapsed();
    stdout
        .read_to_end(&mut printed)
        .expect("the container's stdout");
    let status = child.wait().expect("podman run");
    let to_exit = start.elapsed();
    assert!(
        status.success() && printed == TOKEN.as_bytes(),
        "podman run of {} exited with {status} (its stderr is above)",
        source.display()
    );
    (to_token, to_exit)
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scratch = PathBuf::from("/var/tmp/credfs-container-bench");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).expect("scratch");
    let shm = PathBuf::from("/dev/shm/credfs-container-bench");
    fs::create_dir_all(&shm).expect("tmpfs directory");
    fs::write(shm.join("token"), TOKEN).expect("tmpfs token");

    let config = format!(
        "[mount]\nallow_other = true\n[registries.x]\nprovider = \"static\"\nregistry = \"x.example\"\nusername = \"u\"\npassword = \"{TOKEN}\"\n"
    );
    let daemon = Daemon::start(&scratch, "containers", &config);
    let fuse = daemon.mnt.join("registries/x");

    // The image is copied into podman's storage once; containers run it by
    // id, so that neither side times the copy.
    let podman = Podman::new();
    let pulled = podman.output(&["pull", "--quiet", &image(BUSYBOX)], &[]);
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let id = String::from_utf8_lossy(&pulled.stdout).trim().to_string();

    one_run(&podman, &id, &fuse);
    one_run(&podman, &id, &shm);
    let (mut credfs, mut tmpfs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // credfs first in even rounds, tmpfs first in odd ones.
        if round % 2 == 0 {
            credfs.push(one_run(&podman, &id, &fuse));
            tmpfs.push(one_run(&podman, &id, &shm));
        } else {
            tmpfs.push(one_run(&podman, &id, &shm));
            credfs.push(one_run(&podman, &id, &fuse));
        }
    }
    drop(daemon);

    println!(
        "\n{:<44} {:>10} {:>18} {:>8} {:>8}",
        "measure", "credfs", "baseline", "ratio", "target"
    );
    let (credfs_token, credfs_exit): (Vec<_>, Vec<_>) = credfs.into_iter().unzip();
    let (tmpfs_token, tmpfs_exit): (Vec<_>, Vec<_>) = tmpfs.into_iter().unzip();
    let row = |name: &str, ours: Vec<Duration>, base: Vec<Duration>| {
        let (ours, base) = (ms(p50(ours)), ms(p50(base)));
        println!(
            "{name:<44} {ours:>10.1} {:>18} {:>8} {:>8}",
            format!("{base:.1} tmpfs"),
            format!("{:.2}x", ours / base),
            "<= 1.1x"
        );
    };
    row(
        "podman run to token printed p50 (ms)",
        credfs_token,
        tmpfs_token,
    );
    row("podman run to exit p50 (ms)", credfs_exit, tmpfs_exit);
    println!("({ROUNDS} runs each, interleaved, after one warm-up run of each)");
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&shm);
}
