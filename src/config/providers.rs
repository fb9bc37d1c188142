//! What each provider is configured with: one struct per provider, filled
//! by validation and taken as is by the registry or store it configures.

use crate::secret::Secret;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum RegistryProviderConfig {
    Ecr(EcrConfig),
    Gcp(GcpConfig),
    Acr(AcrConfig),
    Static(StaticConfig),
    Helper(HelperConfig),
    None(NoneConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EcrConfig {
    pub region: String,
    /// Shown instead of the proxy endpoint's host (a VPC endpoint, a
    /// mirror); by default the credential's own registry.
    pub registry: Option<String>,
    pub registry_id: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Google Artifact Registry / GCR: user `oauth2accesstoken`, password an
/// OAuth2 access token.
#[derive(Clone, Debug, PartialEq)]
pub struct GcpConfig {
    pub registry: String,
    pub source: GcpSource,
}

#[derive(Clone, Debug, PartialEq)]
pub enum GcpSource {
    /// A service-account key: a signed JWT exchanged at its token URI.
    ServiceAccount(ServiceAccountKey),
    /// The GCE metadata server at this host[:port]; by default
    /// `$GCE_METADATA_HOST`, else `metadata.google.internal`.
    Metadata { host: Option<String> },
}

/// What credfs uses of a service-account JSON key.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: Option<String>,
    /// The PEM private key.
    pub private_key: Secret,
    /// The config's `token_uri`, else the key's, else Google's.
    pub token_uri: String,
}

/// Azure Container Registry: an Entra ID access token exchanged at the
/// registry for an ACR refresh token.
#[derive(Clone, Debug, PartialEq)]
pub struct AcrConfig {
    pub registry: String,
    /// `https://<registry host>/oauth2/exchange` unless the config says.
    pub exchange_url: String,
    /// The Entra ID scope of the access token (ARM's by default).
    pub scope: String,
    pub identity: AzureIdentity,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AzureIdentity {
    /// An app registration's client credentials at
    /// `<authority_host>/<tenant_id>/oauth2/v2.0/token`.
    App {
        authority_host: String,
        tenant_id: String,
        client_id: String,
        credential: AppCredential,
    },
    /// The instance metadata service (IMDS) of a VM or node; `client_id`
    /// picks a user-assigned identity. The tenant, when not given, is the
    /// access token's own.
    ManagedIdentity {
        imds_endpoint: String,
        client_id: Option<String>,
        tenant_id: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum AppCredential {
    Secret(Secret),
    /// A federated token (workload identity), read anew for each request:
    /// the kubelet rotates it.
    FederatedTokenFile(PathBuf),
}

/// Also what a `thin-edge` registry becomes once its credentials are read.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticConfig {
    pub registry: String,
    pub username: Secret,
    pub password: Secret,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HelperConfig {
    pub registry: String,
    pub command: Vec<String>,
    pub protocol: HelperProtocol,
    pub timeout: Duration,
    pub ttl: Duration,
    /// Passed to the helper on top of a clean environment.
    pub env: BTreeMap<String, Secret>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperProtocol {
    /// thin-edge's `registry-credentials get IMAGE` printing `{"username","password"}`.
    ThinEdge,
    /// Docker's `docker-credential-X get`, server URL on stdin.
    Docker,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NoneConfig {
    pub registry: String,
}

impl RegistryProviderConfig {
    /// The registry host[:port][/path] the credential is for, when the
    /// config says (ECR learns it from its first token).
    pub fn registry(&self) -> Option<&str> {
        match self {
            RegistryProviderConfig::Ecr(ecr) => ecr.registry.as_deref(),
            RegistryProviderConfig::Gcp(GcpConfig { registry, .. })
            | RegistryProviderConfig::Acr(AcrConfig { registry, .. })
            | RegistryProviderConfig::Static(StaticConfig { registry, .. })
            | RegistryProviderConfig::Helper(HelperConfig { registry, .. })
            | RegistryProviderConfig::None(NoneConfig { registry }) => Some(registry),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RegistryProviderConfig::Ecr(_) => "ecr",
            RegistryProviderConfig::Gcp(_) => "gcp",
            RegistryProviderConfig::Acr(_) => "acr",
            RegistryProviderConfig::Static(_) => "static",
            RegistryProviderConfig::Helper(_) => "helper",
            RegistryProviderConfig::None(_) => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreProviderConfig {
    Filesystem(FilesystemConfig),
    S3(S3Config),
    Azure(AzureConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FilesystemConfig {
    pub root: PathBuf,
    /// fsync the archive and its directory before a commit is acknowledged.
    pub sync: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct S3Config {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub profile: Option<String>,
    pub force_path_style: bool,
    pub prefix: String,
    pub part_size: u64,
    pub checksums: bool,
    /// Where uploads wait for their commit.
    pub spool_dir: PathBuf,
    pub transfer: TransferConfig,
}

/// How much of an archive an object store moves at once: the ranges each
/// open handle may have in flight (and their size), and the parts each
/// upload may have in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    pub read_concurrency: usize,
    pub read_part_size: u64,
    pub write_concurrency: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            read_concurrency: 8,
            read_part_size: 8 << 20,
            write_concurrency: 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AzureConfig {
    pub connection_string: Option<Secret>,
    pub account: Option<String>,
    pub access_key: Option<Secret>,
    pub endpoint_url: Option<String>,
    pub prefix: String,
    pub spool_dir: PathBuf,
    pub transfer: TransferConfig,
}

impl StoreProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreProviderConfig::Filesystem(_) => "filesystem",
            StoreProviderConfig::S3(_) => "s3",
            StoreProviderConfig::Azure(_) => "azure",
        }
    }
}
