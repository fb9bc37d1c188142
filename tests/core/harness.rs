//! The core (`CredFs`) in process: a config parsed from TOML, an in-memory
//! store and the real static providers, each behind a fault-injecting
//! wrapper, and an audit log in a temporary directory. No root, no mount,
//! no server: a test calls the methods the FUSE adapter calls.

use credfs::config::{self, Config, RegistryProviderConfig, StoreConfig};
use credfs::error::{ErrorKind, Result};
use credfs::faults::Faults;
use credfs::registry::faulty::{FaultyRegistry, RegistryOp};
use credfs::registry::{self, RegistryProvider};
use credfs::store::faulty::{FaultyStore, StoreOp};
use credfs::store::{MemoryStore, ProjectStore};
use credfs::vfs::inode::ROOT_INO;
use credfs::vfs::{Attr, Caller, CredFs, Handle, OpenFlags, Providers};
use std::path::PathBuf;
use std::sync::Arc;

/// The mount's owner (`[mount] uid/gid`).
pub const OWNER: Caller = caller(1000, 1000);
/// The owner of registry `team`.
pub const TEAM: Caller = caller(2000, 2000);
/// In no class but "other" anywhere.
pub const OTHER: Caller = caller(3000, 3000);

/// pid 0: the core reads nothing of /proc (no supplementary groups, no
/// capabilities), so only uid, gid and mode decide.
pub const fn caller(uid: u32, gid: u32) -> Caller {
    Caller { pid: 0, uid, gid }
}

pub const TEAM_PASSWORD: &str = "team-pass-5150";
pub const OPEN_PASSWORD: &str = "open-pass-2112";
pub const SECRET: &str = "s3cret-value-77";

/// Two registries (one for its owner only), a secret, a writable bucket `b`
/// limited to 4 KiB and a read-only bucket `ro`. `@DIR@` is the test's
/// scratch directory.
pub const CONFIG: &str = r#"
[mount]
uid = 1000
gid = 1000
file_mode = "0440"
dir_mode = "0555"

[audit]
path = "@DIR@/audit.jsonl"

[registries.team]
provider = "static"
registry = "team.example:5000"
username = "team-user"
password = "team-pass-5150"
uid = 2000
gid = 2000
mode = "0400"

[registries.open]
provider = "static"
registry = "open.example"
username = "open-user"
password = "open-pass-2112"
mode = "0444"

[stores.main]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b"]
max_object_size = "4KiB"

[stores.frozen]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["ro"]
read_only = true

[secrets.app]
key = "s3cret-value-77"
"#;

pub struct Core {
    pub fs: CredFs,
    pub dir: tempfile::TempDir,
    /// What the store holds, under the fault-injecting wrapper.
    pub memory: Arc<MemoryStore>,
    pub store_faults: Arc<Faults<StoreOp>>,
    /// Shared by every registry's provider.
    pub registry_faults: Arc<Faults<RegistryOp>>,
}

impl Core {
    pub async fn start() -> Core {
        Self::start_with(CONFIG).await
    }

    /// Starts the core on `config` as the daemon does: the namespace built
    /// through the providers, then the audit log opened.
    pub async fn start_with(config: &str) -> Core {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = Arc::new(MemoryStore::new(["b", "ro"]));
        let store_faults = Faults::new();
        let registry_faults = Faults::new();
        let store: Arc<dyn ProjectStore> =
            Arc::new(FaultyStore::new(memory.clone(), store_faults.clone()));
        let registry_plan = registry_faults.clone();
        let providers = Providers::new(
            move |_: &StoreConfig| {
                let store = store.clone();
                async move { Ok(store) }
            },
            move |config: &RegistryProviderConfig| -> Arc<dyn RegistryProvider> {
                let real = registry::provider_for(config);
                Arc::new(FaultyRegistry::new(real, registry_plan.clone()))
            },
        );
        let config = parse(&dir, config);
        let fs = CredFs::start(config, providers)
            .await
            .expect("the core starts");
        Core {
            fs,
            dir,
            memory,
            store_faults,
            registry_faults,
        }
    }

    /// `text` with `@DIR@` filled in, as the daemon would load it.
    pub fn config(&self, text: &str) -> Config {
        parse(&self.dir, text)
    }

    /// Walks `path` from the root as the kernel does, one lookup a name.
    pub async fn lookup(&self, path: &str, who: Caller) -> Result<Attr> {
        let mut attr = self.fs.getattr(ROOT_INO, None, who).await?;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            attr = self.fs.lookup(attr.ino, name, who).await?;
        }
        Ok(attr)
    }

    /// open, read to the end, release: what `cat` does.
    pub async fn read(&self, path: &str, who: Caller) -> Result<Vec<u8>> {
        let ino = self.lookup(path, who).await?.ino;
        let opened = self.fs.open(ino, OpenFlags::default(), who).await?;
        let mut bytes = Vec::new();
        let outcome = loop {
            match self
                .fs
                .read(ino, opened.fh, bytes.len() as u64, 1000, who)
                .await
            {
                Ok(chunk) if chunk.as_slice().is_empty() => break Ok(()),
                Ok(chunk) => bytes.extend_from_slice(chunk.as_slice()),
                Err(e) => break Err(e),
            }
        };
        self.fs.release(opened.fh).await;
        outcome.map(|()| bytes)
    }

    pub async fn read_text(&self, path: &str, who: Caller) -> String {
        let bytes = self.read(path, who).await.expect("readable");
        String::from_utf8(bytes).expect("text")
    }

    /// create, write in 1000-byte pieces, close: what `cp` does. The error
    /// is the first write's or the close's, as `cp` would report it.
    pub async fn write(&self, bucket: &str, name: &str, bytes: &[u8], who: Caller) -> Result<()> {
        let parent = self.lookup(&format!("projects/{bucket}"), who).await?.ino;
        let (_, opened) = self.fs.create(parent, name, who).await?;
        let mut written = Ok(());
        for (i, piece) in bytes.chunks(1000).enumerate() {
            let offset = (i * 1000) as u64;
            if let Err(e) = self.fs.write(opened.fh, offset, piece.to_vec(), who).await {
                written = Err(e);
                break;
            }
        }
        let closed = self.fs.flush(opened.fh, who).await;
        self.fs.release(opened.fh).await;
        written.and(closed)
    }

    /// `echo 1 > registries/NAME/refresh`: open for writing, write, close;
    /// the write's outcome (a refused refresh fails the write).
    pub async fn refresh(&self, registry: &str, who: Caller) -> Result<()> {
        let path = format!("registries/{registry}/refresh");
        let ino = self.lookup(&path, who).await?.ino;
        let writing = OpenFlags {
            write: true,
            truncate: false,
        };
        let opened = self.fs.open(ino, writing, who).await?;
        let written = self.fs.write(opened.fh, 0, b"1".to_vec(), who).await;
        self.fs.release(opened.fh).await;
        written.map(|_| ())
    }

    /// The names a listing of `path` shows, `.` and `..` aside.
    pub async fn list(&self, path: &str, who: Caller) -> Result<Vec<String>> {
        let ino = self.lookup(path, who).await?.ino;
        let fh = self.fs.opendir(ino, who).await?;
        let handle = self.fs.readdir(ino, fh, who).await?;
        let names = match handle.as_ref() {
            Handle::Dir(entries) => entries.iter().skip(2).map(|e| e.name.clone()).collect(),
            _ => panic!("a directory handle"),
        };
        self.fs.release(fh).await;
        Ok(names)
    }

    /// The audit log so far, one JSON object a line.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        for secret in [SECRET, TEAM_PASSWORD, OPEN_PASSWORD] {
            assert!(!text.contains(secret), "a secret reached the audit log");
        }
        text.lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
            .collect()
    }

    /// The audit lines of `op`, as (path, uid, result).
    pub fn audited(&self, op: &str) -> Vec<(String, u64, String)> {
        self.audit()
            .iter()
            .filter(|line| line["op"] == op)
            .map(|line| {
                let text = |key: &str| line[key].as_str().unwrap_or_default().to_string();
                (
                    text("path"),
                    line["uid"].as_u64().unwrap_or(0),
                    text("result"),
                )
            })
            .collect()
    }
}

fn parse(dir: &tempfile::TempDir, text: &str) -> Config {
    let text = text.replace("@DIR@", &dir.path().to_string_lossy());
    let path: PathBuf = dir.path().join("credfs.toml");
    config::parse(&path, &text).unwrap_or_else(|e| panic!("the test config is valid: {e}"))
}

/// The kind of error `outcome` failed with.
pub fn kind<T>(outcome: Result<T>) -> ErrorKind {
    match outcome {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.kind(),
    }
}

/// A complete one-entry ZIP archive (stored, no compression) holding
/// `body`: what the archive check accepts.
pub fn zip(body: &[u8]) -> Vec<u8> {
    let name = b"data.bin";
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    zip.extend_from_slice(&(body.len() as u32).to_le_bytes());
    zip.extend_from_slice(&(body.len() as u32).to_le_bytes());
    zip.extend_from_slice(&(name.len() as u16).to_le_bytes());
    zip.extend_from_slice(&[0, 0]);
    zip.extend_from_slice(name);
    zip.extend_from_slice(body);
    let directory = zip.len() as u32;
    zip.extend_from_slice(b"PK\x01\x02");
    zip.extend_from_slice(&[0; 24]);
    zip.extend_from_slice(&(name.len() as u16).to_le_bytes());
    zip.extend_from_slice(&[0; 16]);
    zip.extend_from_slice(name);
    let directory_len = zip.len() as u32 - directory;
    zip.extend_from_slice(b"PK\x05\x06");
    zip.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    zip.extend_from_slice(&directory_len.to_le_bytes());
    zip.extend_from_slice(&directory.to_le_bytes());
    zip.extend_from_slice(&[0, 0]);
    zip
}
