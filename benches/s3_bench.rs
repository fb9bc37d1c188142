//! Project archives through credfs against s3fs, rclone mount and the AWS
//! SDK directly, on one s3s-fs server, in one run (root; needs s3s-fs from
//! tests/run.sh and Debian's s3fs and rclone):
//!   cargo bench --bench s3_bench
//! A 1 GiB archive (CREDFS_BENCH_MIB to change) is written with `cp` and
//! read back with `cat`, page cache dropped before each, through each
//! mount; the SDK writes it as a multipart upload of 8 MiB parts and reads
//! it with one GET. Prints MiB/s, the ratio to the SDK, and credfs's peak
//! RSS.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_credfs");
const KEY_ID: &str = "bench-ak";
const SECRET: &str = "bench-sk-9f8e7d";
const BUCKET: &str = "bench";
const PART: u64 = 8 << 20;

struct Background(Child, Option<PathBuf>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mnt) = &self.1 {
            let _ = Command::new("fusermount3").arg("-uz").arg(mnt).status();
        }
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn need(program: &str) -> PathBuf {
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

fn wait(what: &str, mut ready: impl FnMut() -> bool) {
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

fn drop_caches() {
    Command::new("sync").status().unwrap();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn timed(script: &str) -> Duration {
    drop_caches();
    let start = Instant::now();
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

async fn sdk_client(endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new(KEY_ID, SECRET, None, None, "bench");
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn sdk_write(client: &aws_sdk_s3::Client, path: &Path, key: &str) {
    use aws_sdk_s3::primitives::{ByteStream, Length};
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let size = fs::metadata(path).unwrap().len();
    let created = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = created.upload_id().unwrap().to_string();
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1;
    while offset < size {
        let length = PART.min(size - offset);
        let body = ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(length))
            .build()
            .await
            .unwrap();
        let part = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(String::from))
                .build(),
        );
        offset += length;
        number += 1;
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn sdk_read(client: &aws_sdk_s3::Client, key: &str) -> u64 {
    let mut body = client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap()
        .body;
    let mut total = 0;
    while let Some(chunk) = body.try_next().await.unwrap() {
        total += chunk.len() as u64;
    }
    total
}

fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let s3s = PathBuf::from(
        std::env::var("CREDFS_S3S_FS").unwrap_or_else(|_| "/var/cache/credfs/bin/s3s-fs".into()),
    );
    assert!(
        s3s.exists(),
        "s3s-fs is needed: run tests/run.sh, which installs it"
    );
    let (s3fs, rclone) = (need("s3fs"), need("rclone"));
    let mib: u64 = std::env::var("CREDFS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let scratch = PathBuf::from("/var/tmp/credfs-s3-bench");
    let _ = fs::remove_dir_all(&scratch);
    for dir in [
        "data/bench",
        "spool",
        "mnt-credfs",
        "mnt-s3fs",
        "mnt-rclone",
    ] {
        fs::create_dir_all(scratch.join(dir)).unwrap();
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _server = Background(
        Command::new(&s3s)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                KEY_ID,
                "--secret-key",
                SECRET,
            ])
            .arg(scratch.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        None,
    );
    wait("s3s-fs", || TcpStream::connect(("127.0.0.1", port)).is_ok());

    let archive = scratch.join("archive.zip");
    let script = format!(
        "import os, zipfile\nwith zipfile.ZipFile({:?}, 'w', zipfile.ZIP_STORED) as z:\n    with z.open('payload.bin', 'w', force_zip64=True) as f:\n        for _ in range({mib}):\n            f.write(os.urandom(1 << 20))\n",
        archive.to_string_lossy()
    );
    assert!(
        Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    );
    let size = fs::metadata(&archive).unwrap().len();

    let config = scratch.join("credfs.toml");
    fs::write(
        &config,
        format!(
            "[stores.s3]\nprovider = \"s3\"\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\nforce_path_style = true\nbuckets = [\"{BUCKET}\"]\nspool_dir = \"{}\"\npart_size = \"8MiB\"\n",
            scratch.join("spool").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let credfs_mnt = scratch.join("mnt-credfs");
    let credfs = Background(
        Command::new(BIN)
            .args(["--log-level", "warn", "mount", "--config"])
            .arg(&config)
            .arg(&credfs_mnt)
            .spawn()
            .unwrap(),
        Some(credfs_mnt.clone()),
    );
    wait("credfs", || {
        fs::read_dir(credfs_mnt.join("projects")).is_ok()
    });

    let passwd = scratch.join("s3fs-passwd");
    fs::write(&passwd, format!("{KEY_ID}:{SECRET}\n")).unwrap();
    fs::set_permissions(&passwd, fs::Permissions::from_mode(0o600)).unwrap();
    let s3fs_mnt = scratch.join("mnt-s3fs");
    let _s3fs = Background(
        Command::new(&s3fs)
            .arg(BUCKET)
            .arg(&s3fs_mnt)
            .args(["-f", "-o", &format!("passwd_file={}", passwd.display())])
            .args([
                "-o",
                &format!("url={endpoint}"),
                "-o",
                "use_path_request_style",
                "-o",
                "endpoint=us-east-1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        Some(s3fs_mnt.clone()),
    );
    let rclone_conf = scratch.join("rclone.conf");
    fs::write(
        &rclone_conf,
        format!("[s3local]\ntype = s3\nprovider = Other\nendpoint = {endpoint}\naccess_key_id = {KEY_ID}\nsecret_access_key = {SECRET}\nforce_path_style = true\n"),
    )
    .unwrap();
    let rclone_mnt = scratch.join("mnt-rclone");
    let _rclone = Background(
        Command::new(&rclone)
            .env_remove("AWS_CA_BUNDLE")
            .arg("--config")
            .arg(&rclone_conf)
            .args(["mount", &format!("s3local:{BUCKET}")])
            .arg(&rclone_mnt)
            .args(["--vfs-cache-mode", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        Some(rclone_mnt.clone()),
    );
    wait("s3fs and rclone mounts", || {
        mounted(&s3fs_mnt) && mounted(&rclone_mnt)
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(sdk_client(&endpoint));
    drop_caches();
    let start = Instant::now();
    runtime.block_on(sdk_write(&client, &archive, "sdk.zip"));
    let sdk_write_speed = mib_per_s(size, start.elapsed());
    drop_caches();
    let start = Instant::now();
    assert_eq!(runtime.block_on(sdk_read(&client, "sdk.zip")), size);
    let sdk_read_speed = mib_per_s(size, start.elapsed());

    let a = archive.display();
    let targets = [
        ("credfs", credfs_mnt.join("projects").join(BUCKET)),
        ("s3fs", s3fs_mnt.clone()),
        ("rclone", rclone_mnt.clone()),
    ];
    let mut rows = vec![(
        "AWS SDK directly".to_string(),
        sdk_write_speed,
        sdk_read_speed,
    )];
    for (tool, dir) in &targets {
        let file = dir.join(format!("{tool}.zip"));
        let write = mib_per_s(size, timed(&format!("cp {a} {}", file.display())));
        let read = mib_per_s(size, timed(&format!("cat {} > /dev/null", file.display())));
        rows.push((tool.to_string(), write, read));
    }
    let rss = peak_rss_kib(credfs.0.id());

    println!("\n{mib} MiB archive on one s3s-fs server\n");
    println!(
        "{:<18} {:>12} {:>10} {:>12} {:>10}",
        "through", "write MiB/s", "vs SDK", "read MiB/s", "vs SDK"
    );
    for (tool, write, read) in &rows {
        println!(
            "{tool:<18} {write:>12.0} {:>9.2}x {read:>12.0} {:>9.2}x",
            write / sdk_write_speed,
            read / sdk_read_speed
        );
    }
    println!(
        "\ncredfs peak RSS: {:.1} MiB (target < 128 MiB); targets: credfs >= 0.9x the SDK, ahead of s3fs and rclone",
        rss as f64 / 1024.0
    );
    drop(credfs);
    let _ = fs::remove_dir_all(&scratch);
}
