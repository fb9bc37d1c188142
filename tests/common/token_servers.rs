//! tests/token_servers.py: local Google and Azure token services that check
//! what the real ones check (signatures, claims, grant types, form fields,
//! metadata headers) and count calls; and the keys the tests sign with.

use super::servers::{free_port, python};
use super::{require_program, run, stderr, wait_for};
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const GCP_USER: &str = "oauth2accesstoken";
pub const ACR_USER: &str = "00000000-0000-0000-0000-000000000000";
pub const EMAIL: &str = "pusher@credfs-test.iam.gserviceaccount.com";
pub const KEY_ID: &str = "credfs-test-key-1";
pub const TENANT: &str = "credfs-test-tenant";
pub const CLIENT_ID: &str = "credfs-test-client";

pub struct TokenServer {
    child: Child,
    pub port: u16,
    /// A part of every token the server issues.
    pub secret: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TokenServer {
    /// The server with `args` (see tests/token_servers.py) besides its
    /// port and secret.
    pub fn start(secret: &str, args: &[&str]) -> TokenServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("token-servers.log");
        let out = fs::File::create(&log).expect("log");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/token_servers.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", secret])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("token_servers.py");
        wait_for("the token server", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "token_servers.py exited with {status}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TokenServer {
            child,
            port,
            secret: secret.to_string(),
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Requests `endpoint` has had, refused ones included:
    /// google_token, google_metadata, entra_token, imds, acr_exchange.
    pub fn calls(&self, endpoint: &str) -> u64 {
        let mut response = ureq::get(self.url("/calls")).call().unwrap_or_else(|e| {
            panic!("{e}: {}", fs::read_to_string(&self.log).unwrap_or_default())
        });
        let text = response.body_mut().read_to_string().expect("calls");
        let calls: serde_json::Value = serde_json::from_str(&text).expect("calls JSON");
        calls[endpoint].as_u64().unwrap_or(0)
    }
}

/// An RSA key pair made with openssl: the private key in PKCS#8 PEM (as a
/// service-account key holds it) and the public half's file, for the
/// server.
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        require_program("openssl");
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        let out = run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &private.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "openssl genpkey: {}", stderr(&out));
        let out = run(
            "openssl",
            &[
                "pkey",
                "-in",
                &private.to_string_lossy(),
                "-pubout",
                "-out",
                &public.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "openssl pkey: {}", stderr(&out));
        KeyPair {
            private_pem: fs::read_to_string(&private).expect("private key"),
            public_pem: public,
            _dir: dir,
        }
    }

    /// A line of the private key's body: never to be seen in a log.
    pub fn secret_line(&self) -> &str {
        self.private_pem.lines().nth(2).expect("a PEM body")
    }

    /// Writes a service-account JSON key (mode 0600) for this key, whose
    /// token URI is `token_uri`.
    pub fn write_service_account(&self, path: &Path, token_uri: &str) {
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "credfs-test",
            "private_key_id": KEY_ID,
            "private_key": self.private_pem,
            "client_email": EMAIL,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        fs::write(path, key.to_string()).expect("service-account key");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// The server arguments that make it accept this key.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--google-public-key".into(),
            self.public_pem.to_string_lossy().into_owned(),
            "--google-email".into(),
            EMAIL.into(),
            "--google-key-id".into(),
            KEY_ID.into(),
        ]
    }
}
