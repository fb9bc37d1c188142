//! The `gcp` and `acr` providers against `ecr` on moto, in one run (root,
//! FUSE; run tests/run.sh once first for the venv):
//!   cargo bench --bench cloud_bench
//! - cold read: the first read of a registry, which waits for its token
//!   (gcp: one signed JWT exchanged at tests/token_servers.py; acr: an
//!   Entra ID token and ACR's exchange there; ecr: GetAuthorizationToken on
//!   moto), p50 over registries read one after another;
//! - warm read: open+read+close of a cached token, p50 and p99;
//! - token-endpoint calls over a day of reads (one read of each token per
//!   minute), measured on a daemon whose token lives (gcp 1 h, acr 3 h, ecr
//!   12 h) and day are scaled down 900 times, so the day takes 96 s; next
//!   to it the daemon's own schedule (`registry::refresh_delay`) run over a
//!   simulated day, and the calls a helper without a cache would make.

#[path = "../tests/common/mod.rs"]
mod fixtures;

mod common;

use common::{Daemon, Jitter, percentile, read_latency};
use credfs::registry::{Refresh, refresh_delay};
use fixtures::servers::Moto;
use fixtures::token_servers::{CLIENT_ID, KeyPair, TENANT, TokenServer};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Registries read cold, per provider.
const COLD: usize = 20;
const WARM_ROUNDS: usize = 5_000;
const SCALE: u64 = 900;
const DAY: Duration = Duration::from_secs(86_400);
const READ_EVERY: Duration = Duration::from_secs(60);
const MODEL_SEEDS: u64 = 2_000;
const ACR_SERVICE: &str = "myreg.azurecr.io";
const CLIENT_SECRET: &str = "bench-client-secret";
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

struct Provider {
    name: &'static str,
    /// A token's life in production.
    life: Duration,
    /// Token-endpoint calls per fetch.
    calls_per_fetch: u64,
}

const PROVIDERS: [Provider; 3] = [
    Provider {
        name: "gcp",
        life: Duration::from_secs(3600),
        calls_per_fetch: 1,
    },
    Provider {
        name: "acr",
        life: Duration::from_secs(3 * 3600),
        calls_per_fetch: 2,
    },
    Provider {
        name: "ecr",
        life: Duration::from_secs(12 * 3600),
        calls_per_fetch: 1,
    },
];

/// `[registries.NAME]` of each provider, `count` of each, the gcp key at
/// `key`.
fn registries(count: usize, server: &TokenServer, moto: &Moto, key: &Path) -> String {
    let mut config = String::new();
    for i in 0..count {
        config += &format!(
            "[registries.gcp-{i}]\nprovider = \"gcp\"\nregistry = \"gcr.io/bench-{i}\"\nkey = {{ file = \"{}\" }}\n",
            key.display()
        );
        config += &format!(
            "[registries.acr-{i}]\nprovider = \"acr\"\nregistry = \"{ACR_SERVICE}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nauthority_host = \"{}\"\nexchange_url = \"{}\"\n",
            server.url(""),
            server.url("/oauth2/exchange")
        );
        config += &format!(
            "[registries.ecr-{i}]\nprovider = \"ecr\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            moto.endpoint()
        );
    }
    config
}

/// A token server for `key`, its Google tokens living `gcp_life` and its
/// ACR refresh tokens `acr_life`.
fn token_server(key: &KeyPair, gcp_life: Duration, acr_life: Duration) -> TokenServer {
    let mut args = key.server_args();
    args.extend([
        "--lifetime".to_string(),
        gcp_life.as_secs().to_string(),
        "--acr-refresh-lifetime".into(),
        acr_life.as_secs_f64().to_string(),
        "--acr-service".into(),
        ACR_SERVICE.into(),
        "--client-id".into(),
        CLIENT_ID.into(),
        "--client-secret".into(),
        CLIENT_SECRET.into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TokenServer::start("bench", &args)
}

/// Calls a provider's token endpoints have answered.
fn calls(provider: &str, server: &TokenServer, moto: &Moto) -> u64 {
    match provider {
        "gcp" => server.calls("google_token"),
        "acr" => server.calls("entra_token") + server.calls("acr_exchange"),
        _ => moto.calls() as u64,
    }
}

fn token(mnt: &Path, registry: &str) -> PathBuf {
    mnt.join(format!("registries/{registry}/token"))
}

/// The first read of each of `COLD` registries: p50.
fn cold_read(mnt: &Path, provider: &str) -> Duration {
    let mut samples: Vec<Duration> = (0..COLD)
        .map(|i| {
            let start = Instant::now();
            let bytes = fs::read(token(mnt, &format!("{provider}-{i}"))).expect("a cold read");
            let took = start.elapsed();
            assert!(!bytes.is_empty());
            took
        })
        .collect();
    samples.sort();
    percentile(&samples, 0.5)
}

/// Fetches over `DAY` by the daemon's schedule (a cold fetch, then each
/// refresh), the mean over `MODEL_SEEDS` jitter streams.
fn modelled_fetches(life: Duration) -> f64 {
    let epoch = SystemTime::UNIX_EPOCH;
    let mut total = 0u64;
    for seed in 0..MODEL_SEEDS {
        let mut jitter = Jitter(seed);
        let (mut at, mut after) = (Duration::ZERO, Refresh::AfterColdFetch);
        let mut fetches = 1;
        loop {
            at += refresh_delay(epoch + at, epoch + at + life, after, jitter.next());
            after = Refresh::AfterRefresh;
            if at >= DAY {
                break;
            }
            fetches += 1;
        }
        total += fetches;
    }
    total as f64 / MODEL_SEEDS as f64
}

/// One read of each day registry per scaled minute for a scaled day:
/// (reads, failed reads, slowest read after the first, cold, one).
fn scaled_day(mnt: &Path) -> (u64, u64, Duration) {
    let (mut reads, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    let start = Instant::now();
    let mut next = start;
    while next < start + DAY / SCALE as u32 {
        for provider in &PROVIDERS {
            let begun = Instant::now();
            let read = fs::read(token(mnt, &format!("{}-0", provider.name)));
            if next > start {
                slowest = slowest.max(begun.elapsed());
            }
            reads += 1;
            failed += u64::from(read.is_err());
        }
        next += READ_EVERY / SCALE as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    (reads / PROVIDERS.len() as u64, failed, slowest)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scratch = PathBuf::from("/var/tmp/credfs-cloud-bench");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let key = KeyPair::generate();
    let key_file = scratch.join("sa.json");

    // Latency: production lives.
    let server = token_server(&key, PROVIDERS[0].life, PROVIDERS[1].life);
    key.write_service_account(&key_file, &server.url("/google/token"));
    let moto = Moto::start(PROVIDERS[2].life);
    let config = registries(COLD, &server, &moto, &key_file);
    let daemon = Daemon::start_with_env(&scratch, "latency", &config, &AWS_ENV);
    let cold: Vec<Duration> = PROVIDERS
        .iter()
        .map(|p| cold_read(&daemon.mnt, p.name))
        .collect();
    let warm: Vec<(Duration, Duration)> = PROVIDERS
        .iter()
        .map(|p| {
            let path = token(&daemon.mnt, &format!("{}-0", p.name));
            let expected = fs::read(&path).unwrap();
            (0..3)
                .map(|_| read_latency(&path, &expected, WARM_ROUNDS))
                .min()
                .unwrap()
        })
        .collect();
    let cold_calls: Vec<u64> = PROVIDERS
        .iter()
        .map(|p| calls(p.name, &server, &moto))
        .collect();
    drop(daemon);
    drop((server, moto));

    // Calls over a day, scaled.
    let server = token_server(
        &key,
        PROVIDERS[0].life / SCALE as u32,
        PROVIDERS[1].life / SCALE as u32,
    );
    key.write_service_account(&key_file, &server.url("/google/token"));
    let moto = Moto::start(PROVIDERS[2].life / SCALE as u32);
    let config = registries(1, &server, &moto, &key_file);
    let daemon = Daemon::start_with_env(&scratch, "day", &config, &AWS_ENV);
    let (reads, failed, slowest) = scaled_day(&daemon.mnt);
    let day_calls: Vec<u64> = PROVIDERS
        .iter()
        .map(|p| calls(p.name, &server, &moto))
        .collect();
    drop(daemon);

    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    let ecr_cold = cold[2].as_secs_f64();
    let mut rows: Vec<(String, [String; 3])> = vec![
        ("cold read p50 (ms)".into(), three(&cold, |d| ms(*d))),
        (
            "cold read against ecr on moto".into(),
            three(&cold, |d| format!("{:.2}x", d.as_secs_f64() / ecr_cold)),
        ),
        (
            format!("token calls for {COLD} cold reads"),
            three(&cold_calls, u64::to_string),
        ),
        ("warm read p50 (us)".into(), three(&warm, |w| us(w.0))),
        ("warm read p99 (us)".into(), three(&warm, |w| us(w.1))),
    ];
    rows.push((
        format!("token calls in a day of {reads} reads (1:{SCALE} run)"),
        three(&day_calls, u64::to_string),
    ));
    rows.push((
        "token calls a day, refresh_delay model".into(),
        PROVIDERS
            .each_ref()
            .map(|p| format!("{:.1}", modelled_fetches(p.life) * p.calls_per_fetch as f64)),
    ));
    rows.push((
        "token calls a day, no cache (one a read)".into(),
        PROVIDERS
            .each_ref()
            .map(|p| (reads * p.calls_per_fetch).to_string()),
    ));
    println!(
        "\n{:<46} {:>10} {:>10} {:>10}",
        "measure", "gcp", "acr", "ecr (moto)"
    );
    for (name, [gcp, acr, ecr]) in rows {
        println!("{name:<46} {gcp:>10} {acr:>10} {ecr:>10}");
    }
    println!(
        "\nscaled day: {failed} failed reads; slowest read after the cold one: {} ms",
        ms(slowest)
    );
    let _ = fs::remove_dir_all(&scratch);
}

/// One figure per provider, in `PROVIDERS` order.
fn three<T, U>(values: &[T], f: impl Fn(&T) -> U) -> [U; 3] {
    [f(&values[0]), f(&values[1]), f(&values[2])]
}
