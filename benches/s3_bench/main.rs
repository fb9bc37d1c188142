//! Project archives through credfs against s3fs, rclone mount and the AWS
//! SDK directly, on two S3 endpoints in one run (root; needs s3s-fs from
//! tests/run.sh and Debian's s3fs and rclone):
//!   cargo bench --bench s3_bench
//! The endpoints: s3s-fs on loopback, and the same server behind a proxy
//! that behaves like S3 over a network (each connection capped at 50 MiB/s
//! each way, 20 ms before the first byte of each response). Objects are
//! seeded through the S3 API. Measured on each: a 1 GiB archive written
//! with `cp` and read with `cat`, and open-to-last-byte of a 1 MiB archive
//! read and written (its name looked up just before), against the SDK with
//! one stream (GetObject; one part at a time; one GET/PUT for 1 MiB) and
//! with parallel ranges and parts (8 MiB, 8 in flight); and credfs's peak
//! RSS. Prints the table and the targets as ratios.
//! Each figure is the median of CREDFS_BENCH_ROUNDS rounds (3) taken in
//! turn, so a busy moment of a shared machine falls on every row; the 1 MiB
//! times take CREDFS_BENCH_RUNS samples (5) per round. Other knobs:
//! CREDFS_BENCH_MIB (1024), CREDFS_BENCH_RATE_MIB (50),
//! CREDFS_BENCH_DELAY_MS (20).

mod mounts;
mod proxy;
mod sdk;

use mounts::{Mounted, drop_caches, peak_rss_mib, timed};
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SEED: &str = "seed-large.zip";
const SEED_SMALL: &str = "seed-small.zip";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the run shares: the server, the archives, the runtime.
struct Bench {
    scratch: PathBuf,
    runtime: tokio::runtime::Runtime,
    archive: PathBuf,
    size: u64,
    small: Vec<u8>,
    /// Samples of each small-archive time per round.
    runs: usize,
    /// Rounds of every measurement.
    rounds: usize,
}

/// What one way of reading and writing measured, over the rounds.
#[derive(Default)]
struct Row {
    writes: Vec<f64>,
    reads: Vec<f64>,
    small_reads: Vec<Duration>,
    small_writes: Vec<Duration>,
}

fn median<T: Copy + PartialOrd>(sample: &[T]) -> Option<T> {
    let mut sorted = sample.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len() / 2).copied()
}

impl Row {
    fn write(&self) -> Option<f64> {
        median(&self.writes)
    }
    fn read(&self) -> Option<f64> {
        median(&self.reads)
    }
    fn small_read(&self) -> Option<f64> {
        median(&self.small_reads).map(|d| d.as_secs_f64() * 1000.0)
    }
    fn small_write(&self) -> Option<f64> {
        median(&self.small_writes).map(|d| d.as_secs_f64() * 1000.0)
    }
}

struct Endpoint {
    title: String,
    rows: Vec<(&'static str, Row)>,
    credfs_rss: f64,
}

const SDK_ONE: &str = "SDK, one stream";
const SDK_PARALLEL: &str = "SDK, 8 x 8 MiB";

impl Bench {
    fn mib_per_s(&self, took: Duration) -> f64 {
        self.size as f64 / (1 << 20) as f64 / took.as_secs_f64()
    }

    /// Where the server keeps `key`.
    fn stored(&self, key: &str) -> PathBuf {
        self.scratch.join("data").join(sdk::BUCKET).join(key)
    }

    /// The kernel caches dropped, then the server's copy of `key` read back
    /// in: a client finds the server warm, and nothing of its own cached.
    fn cold_client(&self, key: &str, level: u8) {
        drop_caches(level);
        let _ = fs::read(self.stored(key));
    }

    fn samples(&self, mut sample: impl FnMut() -> Duration) -> Vec<Duration> {
        (0..self.runs).map(|_| sample()).collect()
    }

    /// One round of the SDK, with `in_flight` parts or ranges.
    fn sdk_round(&self, client: &aws_sdk_s3::Client, in_flight: usize, row: &mut Row) {
        let _ = fs::read(&self.archive);
        let start = Instant::now();
        self.runtime
            .block_on(sdk::upload(client, &self.archive, "sdk.zip", in_flight));
        row.writes.push(self.mib_per_s(start.elapsed()));
        self.runtime.block_on(sdk::delete(client, "sdk.zip"));
        self.cold_client(SEED, 3);
        let start = Instant::now();
        let got = match in_flight {
            1 => self.runtime.block_on(sdk::download(client, SEED)),
            n => self
                .runtime
                .block_on(sdk::download_ranges(client, SEED, self.size, n)),
        };
        assert_eq!(got, self.size);
        row.reads.push(self.mib_per_s(start.elapsed()));
        if in_flight == 1 {
            row.small_reads.extend(self.samples(|| {
                self.cold_client(SEED_SMALL, 1);
                self.runtime.block_on(sdk::get(client, SEED_SMALL))
            }));
            row.small_writes.extend(self.samples(|| {
                self.runtime
                    .block_on(sdk::put(client, "sdk-small.zip", &self.small))
            }));
        }
    }

    /// One round through a mount: `cp` in, `cat` out, and the small archive.
    fn mount_round(&self, tool: &str, mounted: &Mounted, row: &mut Row) {
        let a = self.archive.display();
        let _ = fs::read(&self.archive);
        let target = mounted.dir.join(format!("{tool}.zip"));
        row.writes
            .push(self.mib_per_s(timed(&format!("cp {a} {}", target.display()))));
        let _ = fs::remove_file(&target);
        self.cold_client(SEED, 3);
        let seed = mounted.dir.join(SEED);
        row.reads
            .push(self.mib_per_s(timed(&format!("cat {} > /dev/null", seed.display()))));
        let small = mounted.dir.join(SEED_SMALL);
        row.small_reads.extend(self.samples(|| {
            self.cold_client(SEED_SMALL, 1);
            mounts::read_small(&small)
        }));
        let own = mounted.dir.join(format!("{tool}-small.zip"));
        fs::write(&own, &self.small).expect("the first small write");
        row.small_writes
            .extend(self.samples(|| mounts::write_small(&own, &self.small)));
        let _ = fs::remove_file(&own);
    }

    /// Every way in turn, round after round, so that a slower moment of a
    /// shared machine falls on all of them.
    fn endpoint(&self, title: String, endpoint: &str) -> Endpoint {
        let tools: [(&'static str, Mount); 3] = [
            ("credfs", mounts::credfs),
            ("s3fs", mounts::s3fs),
            ("rclone mount", mounts::rclone),
        ];
        let mounted: Vec<(&'static str, Mounted)> = tools
            .into_iter()
            .map(|(tool, mount)| (tool, mount(&self.scratch, endpoint)))
            .collect();
        let client = self.runtime.block_on(sdk::client(endpoint));
        let mut rows: Vec<(&'static str, Row)> = mounted
            .iter()
            .map(|(tool, _)| *tool)
            .chain([SDK_ONE, SDK_PARALLEL])
            .map(|name| (name, Row::default()))
            .collect();
        for _ in 0..self.rounds {
            for (index, (name, row)) in rows.iter_mut().enumerate() {
                match mounted.get(index) {
                    Some((_, m)) => {
                        self.mount_round(name.split(' ').next().unwrap_or(name), m, row)
                    }
                    None if *name == SDK_ONE => self.sdk_round(&client, 1, row),
                    None => self.sdk_round(&client, sdk::IN_FLIGHT, row),
                }
            }
        }
        let credfs_rss = peak_rss_mib(mounted[0].1.pid());
        Endpoint {
            title,
            rows,
            credfs_rss,
        }
    }
}

/// Mounts a file system on the bucket at an endpoint.
type Mount = fn(&Path, &str) -> Mounted;

/// s3s-fs on a free loopback port, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start_server(scratch: &Path) -> (Server, SocketAddr) {
    let s3s = PathBuf::from(
        std::env::var("CREDFS_S3S_FS").unwrap_or_else(|_| "/var/cache/credfs/bin/s3s-fs".into()),
    );
    assert!(
        s3s.exists(),
        "s3s-fs is needed: run tests/run.sh, which installs it"
    );
    let address = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let child = Command::new(&s3s)
        .args(["--host", "127.0.0.1", "--port", &address.port().to_string()])
        .args(["--access-key", sdk::KEY_ID, "--secret-key", sdk::SECRET])
        .arg(scratch.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs");
    mounts::wait("s3s-fs", || TcpStream::connect(address).is_ok());
    (Server(child), address)
}

/// A stored ZIP archive of `mib` MiB of random bytes, with python.
fn make_archive(path: &Path, kib: u64) {
    let script = format!(
        "import os, zipfile\nwith zipfile.ZipFile({:?}, 'w', zipfile.ZIP_STORED) as z:\n    with z.open('payload.bin', 'w', force_zip64=True) as f:\n        for _ in range({kib}):\n            f.write(os.urandom(1024))\n",
        path.to_string_lossy()
    );
    let made = Command::new("python3").args(["-c", &script]).status();
    assert!(made.is_ok_and(|s| s.success()), "python3 zipfile");
}

fn cell(value: Option<f64>, precision: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.precision$}"))
}

fn print(endpoint: &Endpoint) {
    println!("\n{}\n", endpoint.title);
    println!(
        "{:<16} {:>12} {:>11} {:>15} {:>16}",
        "through", "write MiB/s", "read MiB/s", "1 MiB read ms", "1 MiB write ms"
    );
    for (name, row) in &endpoint.rows {
        println!(
            "{name:<16} {:>12} {:>11} {:>15} {:>16}",
            cell(row.write(), 0),
            cell(row.read(), 0),
            cell(row.small_read(), 1),
            cell(row.small_write(), 1)
        );
    }
    let row = |name: &str| {
        endpoint
            .rows
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r)
    };
    let (Some(credfs), Some(s3fs), Some(rclone), Some(one), Some(parallel)) = (
        row("credfs"),
        row("s3fs"),
        row("rclone mount"),
        row(SDK_ONE),
        row(SDK_PARALLEL),
    ) else {
        return;
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(0.0, |(a, b)| a / b);
    let best = |f: fn(&Row) -> Option<f64>| f(s3fs).into_iter().chain(f(rclone)).reduce(f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    for (what, get) in [
        ("write", Row::write as fn(&Row) -> Option<f64>),
        ("read", Row::read),
    ] {
        let peers = ratio(get(credfs), best(get));
        let sdk = ratio(get(credfs), get(parallel));
        println!(
            "1 GiB {what}: {peers:.2}x the best of s3fs and rclone (target >= 1.2x: {}), {sdk:.2}x the parallel SDK (target >= 0.9x: {})",
            verdict(peers >= 1.2),
            verdict(sdk >= 0.9)
        );
    }
    let read = ratio(credfs.small_read(), one.small_read());
    let write = ratio(credfs.small_write(), one.small_write());
    println!(
        "1 MiB: read {read:.2}x the SDK's GET, write {write:.2}x its PUT (target <= 1.2x: {}, {})",
        verdict(read <= 1.2),
        verdict(write <= 1.2)
    );
    println!(
        "credfs peak RSS: {:.1} MiB (target <= 128 MiB: {})",
        endpoint.credfs_rss,
        verdict(endpoint.credfs_rss <= 128.0)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (_, _) = (mounts::need("s3fs"), mounts::need("rclone"));
    let mib = knob("CREDFS_BENCH_MIB", 1024);
    let link = proxy::Link {
        rate: knob("CREDFS_BENCH_RATE_MIB", 50) << 20,
        delay: Duration::from_millis(knob("CREDFS_BENCH_DELAY_MS", 20)),
    };
    let scratch = PathBuf::from("/var/tmp/credfs-s3-bench");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(scratch.join("data").join(sdk::BUCKET)).expect("scratch");
    let (_server, address) = start_server(&scratch);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let proxy_port = runtime
        .block_on(proxy::start(address, link))
        .expect("proxy");

    let archive = scratch.join("archive.zip");
    make_archive(&archive, mib << 10);
    let small_path = scratch.join("small.zip");
    make_archive(&small_path, 1024);
    let plain = format!("http://{address}");
    let seeding = runtime.block_on(sdk::client(&plain));
    runtime.block_on(sdk::upload(&seeding, &archive, SEED, sdk::IN_FLIGHT));
    runtime.block_on(sdk::upload(&seeding, &small_path, SEED_SMALL, 1));
    let bench = Bench {
        size: fs::metadata(&archive).expect("archive").len(),
        small: fs::read(&small_path).expect("small archive"),
        runs: knob("CREDFS_BENCH_RUNS", 5).max(1) as usize,
        rounds: knob("CREDFS_BENCH_ROUNDS", 3).max(1) as usize,
        scratch: scratch.clone(),
        runtime,
        archive,
    };
    let endpoints = [
        bench.endpoint(
            format!("{mib} MiB archive, s3s-fs on loopback"),
            &plain,
        ),
        bench.endpoint(
            format!(
                "{mib} MiB archive, s3s-fs behind the proxy: {} MiB/s per connection, {} ms to first byte",
                link.rate >> 20,
                link.delay.as_millis()
            ),
            &format!("http://127.0.0.1:{proxy_port}"),
        ),
    ];
    for endpoint in &endpoints {
        print(endpoint);
    }
    drop(bench);
    let _ = fs::remove_dir_all(&scratch);
}
