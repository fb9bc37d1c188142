//! Config parsing and validation, in one place: `load` turns a TOML file into a
//! `Config` whose secrets are resolved, or into errors that point at
//! `file:line:col`.

mod checker;
mod cloud;
mod endpoint;
mod load;
mod providers;
mod raw;
mod registries;
mod stores;
mod thin_edge;
mod values;
pub mod watch;

pub use crate::names::check_name;
pub use checker::{ConfigError, ConfigErrors};
pub use load::{load, load_watched, parse, state_dir};
pub use providers::{
    AcrConfig, AppCredential, AzureConfig, AzureIdentity, EcrConfig, FilesystemConfig, GcpConfig,
    GcpSource, HelperConfig, HelperProtocol, NoneConfig, RegistryProviderConfig, S3Config,
    ServiceAccountKey, StaticConfig, StoreProviderConfig, TransferConfig,
};
pub use values::{parse_duration, parse_size};

use crate::secret::Secret;
use std::collections::BTreeMap;
use std::path::PathBuf;

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

#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub buckets: Vec<String>,
    pub read_only: bool,
    pub max_object_size: Option<u64>,
    pub access: Access,
    pub provider: StoreProviderConfig,
}
