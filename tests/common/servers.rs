//! Real servers for tests: a Docker registry with htpasswd auth, and moto
//! serving the ECR API. Each is stopped when dropped.

use super::{require_program, run, stderr, wait_for};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(what: &str, port: u16, child: &mut Child, log: &Path) {
    wait_for(what, Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// `docker-registry` on loopback, accepting `user`/`password` only.
    pub fn start(user: &str, password: &str) -> Registry {
        for program in ["docker-registry", "htpasswd", "skopeo", "umoci"] {
            require_program(program);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = dir.path().join("htpasswd");
        let out = run(
            "htpasswd",
            &["-Bbc", &htpasswd.to_string_lossy(), user, password],
        );
        assert!(out.status.success(), "htpasswd: {}", stderr(&out));
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}, secret: x}}\nauth: {{htpasswd: {{realm: basic-realm, path: {}}}}}\n",
                dir.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .expect("registry config");
        let log_path = dir.path().join("registry.log");
        let log = fs::File::create(&log_path).expect("log");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry");
        wait_listening("docker-registry", port, &mut child, &log_path);
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of a fresh image built with umoci into `repo`, with
    /// `authfile`.
    pub fn push(&self, authfile: &Path, scratch: &Path, repo: &str) -> Output {
        let image = build_image(scratch);
        let destination = format!("docker://{}/test/{repo}:latest", self.host());
        run(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                "--authfile",
                &authfile.to_string_lossy(),
                &image,
                &destination,
            ],
        )
    }
}

fn build_image(dir: &Path) -> String {
    let layout = dir.join("oci");
    let layout = layout.to_string_lossy().to_string();
    if !Path::new(&layout).exists() {
        let out = run("umoci", &["init", "--layout", &layout]);
        assert!(out.status.success(), "umoci init: {}", stderr(&out));
        let out = run("umoci", &["new", "--image", &format!("{layout}:latest")]);
        assert!(out.status.success(), "umoci new: {}", stderr(&out));
    }
    format!("oci:{layout}:latest")
}

/// The venv python that tests/run.sh installs (moto, azure-storage-blob,
/// cryptography).
pub fn python() -> PathBuf {
    let python = std::env::var_os("CREDFS_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/credfs/venv/bin/python"));
    assert!(
        python.exists(),
        "the test venv (moto, cryptography) is not installed at {}: run tests/run.sh, which installs it",
        python.display()
    );
    python
}

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    calls: PathBuf,
    dir: tempfile::TempDir,
    lifetime: Duration,
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Moto {
    /// moto serving ECR, its tokens living `lifetime`.
    pub fn start(lifetime: Duration) -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut moto = Moto {
            child: None,
            port: free_port(),
            calls: dir.path().join("calls"),
            dir,
            lifetime,
        };
        moto.restart();
        moto
    }

    pub fn restart(&mut self) {
        let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto_ecr.py");
        let log_path = self.dir.path().join("moto.log");
        let log = fs::File::create(&log_path).expect("log");
        let mut child = Command::new(python())
            .arg(launcher)
            .arg(self.port.to_string())
            .env(
                "CREDFS_TEST_TOKEN_LIFETIME",
                self.lifetime.as_secs_f64().to_string(),
            )
            .env("CREDFS_TEST_CALLS_FILE", &self.calls)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("moto");
        wait_listening("moto", self.port, &mut child, &log_path);
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GetAuthorizationToken calls the server has answered.
    pub fn calls(&self) -> usize {
        fs::read_to_string(&self.calls).map_or(0, |c| c.lines().count())
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// s3s-fs (an S3 server over a directory, enforcing SigV4), as installed by
/// tests/run.sh.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "credfs-test-ak";
pub const S3_SECRET_KEY: &str = "credfs-test-sk-5a4b3c";

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn s3s_fs() -> PathBuf {
    let program = std::env::var_os("CREDFS_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/credfs/bin/s3s-fs"));
    assert!(
        program.exists(),
        "s3s-fs is not installed at {}: run tests/run.sh, which installs it",
        program.display()
    );
    program
}

impl S3Server {
    /// A server holding `buckets` (empty).
    pub fn start(buckets: &[&str]) -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        for bucket in buckets {
            fs::create_dir_all(dir.path().join("data").join(bucket)).expect("bucket");
        }
        let mut server = S3Server {
            child: None,
            port: free_port(),
            dir,
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        let log_path = self.dir.path().join("s3s.log");
        let log = fs::File::create(&log_path).expect("log");
        let mut child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.dir.path().join("data"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("s3s-fs");
        wait_listening("s3s-fs", self.port, &mut child, &log_path);
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Uploads `path` as `bucket/key` through the S3 API (boto3, parallel
    /// multipart), so the server keeps what it computes for an upload (its
    /// ETag) as it would in production.
    pub fn put(&self, bucket: &str, key: &str, path: &Path) {
        self.boto3(&format!(
            "s3.upload_file({:?}, {bucket:?}, {key:?}, Config=TransferConfig(multipart_chunksize=8 << 20, max_concurrency=8))",
            path.to_string_lossy()
        ));
    }

    /// The ETag the server gives `bucket/key` (HeadObject), quotes and all.
    pub fn etag(&self, bucket: &str, key: &str) -> String {
        self.boto3(&format!(
            "print(s3.head_object(Bucket={bucket:?}, Key={key:?})['ETag'])"
        ))
        .trim()
        .to_string()
    }

    /// Runs `statement` with `s3`, a boto3 client of this server; its stdout.
    fn boto3(&self, statement: &str) -> String {
        let script = format!(
            "import boto3\nfrom botocore.config import Config\nfrom boto3.s3.transfer import TransferConfig\ns3 = boto3.client('s3', endpoint_url={:?}, aws_access_key_id={S3_ACCESS_KEY:?}, aws_secret_access_key={S3_SECRET_KEY:?}, region_name='us-east-1', config=Config(s3={{'addressing_style': 'path'}}, request_checksum_calculation='when_required', response_checksum_validation='when_required'))\n{statement}\n",
            self.endpoint(),
        );
        let out = Command::new(python())
            .args(["-c", &script])
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Where the server keeps `bucket/key` on disk.
    pub fn object(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join("data").join(bucket).join(key)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `[stores.NAME]` entry for this server.
    pub fn store_config(&self, name: &str, buckets: &[&str], extra: &str, spool: &Path) -> String {
        let buckets: Vec<String> = buckets.iter().map(|b| format!("\"{b}\"")).collect();
        format!(
            "[stores.{name}]\nprovider = \"s3\"\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\nforce_path_style = true\nbuckets = [{}]\nspool_dir = \"{}\"\n{extra}\n",
            self.endpoint(),
            buckets.join(", "),
            spool.display()
        )
    }
}

/// Azurite's well-known development account.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service, as installed by tests/run.sh.
pub struct Azurite {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Azurite {
    pub fn start(containers: &[&str]) -> Azurite {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut azurite = Azurite {
            child: None,
            port: free_port(),
            dir,
        };
        azurite.restart();
        azurite.create_containers(containers);
        azurite
    }

    /// Creates `containers` unless they exist (Azurite may lose them when
    /// killed before it persisted them).
    pub fn create_containers(&self, containers: &[&str]) {
        for container in containers {
            let script = format!(
                "from azure.core.exceptions import ResourceExistsError\nfrom azure.storage.blob import BlobServiceClient\ntry:\n    BlobServiceClient.from_connection_string({:?}).create_container({container:?})\nexcept ResourceExistsError:\n    pass\n",
                self.connection_string(AZURE_KEY)
            );
            let out = run(&python().to_string_lossy(), &["-c", &script]);
            assert!(
                out.status.success(),
                "creating container {container}: {}",
                stderr(&out)
            );
        }
    }

    pub fn restart(&mut self) {
        let program = std::env::var_os("CREDFS_AZURITE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from("/var/cache/credfs/azurite/node_modules/.bin/azurite-blob")
            });
        assert!(
            program.exists(),
            "azurite is not installed at {}: run tests/run.sh",
            program.display()
        );
        let log_path = self.dir.path().join("azurite.log");
        let log = fs::File::create(&log_path).expect("log");
        let mut child = Command::new(program)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(self.dir.path().join("data"))
            .args([
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("azurite");
        wait_listening("azurite", self.port, &mut child, &log_path);
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn connection_string(&self, key: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={key};BlobEndpoint=http://127.0.0.1:{}/{AZURE_ACCOUNT};",
            self.port
        )
    }
}
