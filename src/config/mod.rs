//! Config parsing and validation, in one place: `load` turns a TOML file into a
//! `Config` whose secrets are resolved, or into errors that point at
//! `file:line:col`.

mod checker;
mod endpoint;
mod load;
mod raw;
mod registries;
mod stores;
mod thin_edge;
mod values;
pub mod watch;

pub use crate::names::check_name;
pub use checker::{ConfigError, ConfigErrors};
pub use load::{load, load_watched, parse, state_dir};
pub use values::{parse_duration, parse_size};

use crate::secret::Secret;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/credfs/credfs.toml";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub mount: MountConfig,
    pub audit: Option<AuditConfig>,
    pub registries: BTreeMap<String, RegistryConfig>,
    pub stores: BTreeMap<String, StoreConfig>,
    pub secrets: BTreeMap<String, BTreeMap<String, Secret>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MountConfig {
    pub path: Option<PathBuf>,
    pub allow_other: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    /// Uploads and staging files one uid may have pending at once.
    pub max_pending_uploads: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// An open of a secret fails (EIO) when its line cannot be written.
    pub fail_closed: bool,
}

/// Per-entry owner and mode; `None` falls back to `[mount]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Access {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegistryConfig {
    pub access: Access,
    pub provider: RegistryProviderConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperProtocol {
    /// thin-edge's `registry-credentials get IMAGE` printing `{"username","password"}`.
    ThinEdge,
    /// Docker's `docker-credential-X get`, server URL on stdin.
    Docker,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RegistryProviderConfig {
    Ecr {
        region: String,
        /// Shown instead of the proxy endpoint's host (a VPC endpoint, a
        /// mirror); by default the credential's own registry.
        registry: Option<String>,
        registry_id: Option<String>,
        profile: Option<String>,
        endpoint_url: Option<String>,
    },
    Static {
        registry: String,
        username: Secret,
        password: Secret,
    },
    Helper {
        registry: String,
        command: Vec<String>,
        protocol: HelperProtocol,
        timeout: Duration,
        ttl: Duration,
        /// Passed to the helper on top of a clean environment.
        env: BTreeMap<String, Secret>,
    },
    None {
        registry: String,
    },
}

impl RegistryProviderConfig {
    /// The registry host[:port][/path] the credential is for, when the
    /// config says (ECR learns it from its first token).
    pub fn registry(&self) -> Option<&str> {
        match self {
            RegistryProviderConfig::Ecr { registry, .. } => registry.as_deref(),
            RegistryProviderConfig::Static { registry, .. }
            | RegistryProviderConfig::Helper { registry, .. }
            | RegistryProviderConfig::None { registry } => Some(registry),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RegistryProviderConfig::Ecr { .. } => "ecr",
            RegistryProviderConfig::Static { .. } => "static",
            RegistryProviderConfig::Helper { .. } => "helper",
            RegistryProviderConfig::None { .. } => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub buckets: Vec<String>,
    pub read_only: bool,
    pub max_object_size: Option<u64>,
    pub access: Access,
    pub provider: StoreProviderConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreProviderConfig {
    Filesystem {
        root: PathBuf,
        /// fsync the archive and its directory before a commit is acknowledged.
        sync: bool,
    },
    S3 {
        endpoint_url: Option<String>,
        region: Option<String>,
        access_key_id: Option<Secret>,
        secret_access_key: Option<Secret>,
        profile: Option<String>,
        force_path_style: bool,
        prefix: String,
        part_size: u64,
        checksums: bool,
        /// Where uploads wait for their commit.
        spool_dir: PathBuf,
    },
    Azure {
        connection_string: Option<Secret>,
        account: Option<String>,
        access_key: Option<Secret>,
        endpoint_url: Option<String>,
        prefix: String,
        spool_dir: PathBuf,
    },
}

impl StoreProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreProviderConfig::Filesystem { .. } => "filesystem",
            StoreProviderConfig::S3 { .. } => "s3",
            StoreProviderConfig::Azure { .. } => "azure",
        }
    }
}
