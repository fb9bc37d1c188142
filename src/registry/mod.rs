//! Container-registry credentials: providers behind `RegistryProvider`, one
//! file each, and the files every registry directory shows.

mod acr;
mod backoff;
mod cache;
mod ecr;
mod entra;
pub mod faulty;
mod files;
mod gcp;
mod helper;
pub mod matching;
mod none;
mod oauth;
pub mod probe;
mod static_secret;

pub use cache::{AGGREGATE_WAIT, CachedRegistry, Refresh, refresh_delay};
pub use files::{RegistryFile, docker_config_json, render};
pub(crate) use gcp::signing_key as gcp_signing_key;

use crate::config::RegistryProviderConfig;
use crate::error::Result;
use crate::secret::Secret;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::SystemTime;

/// One credential as a provider returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    /// host[:port][/path] the credential is for.
    pub registry: String,
    pub username: Secret,
    pub password: Secret,
    /// What `token` shows: the provider's own token (ECR: the base64
    /// authorizationToken), else the password.
    pub token: Secret,
    pub expires_at: Option<SystemTime>,
}

impl Credential {
    pub fn has_secret(&self) -> bool {
        !self.username.is_empty() || !self.password.is_empty()
    }
}

#[async_trait]
pub trait RegistryProvider: Send + Sync {
    /// `refresh` asks for a new credential even if the provider caches one
    /// (thin-edge's `--refresh`).
    async fn fetch(&self, refresh: bool) -> Result<Credential>;
}

pub fn provider_for(config: &RegistryProviderConfig) -> Arc<dyn RegistryProvider> {
    match config {
        RegistryProviderConfig::Static(config) => {
            Arc::new(static_secret::StaticProvider::new(config))
        }
        RegistryProviderConfig::None(config) => Arc::new(none::NoneProvider::new(config)),
        RegistryProviderConfig::Helper(config) => Arc::new(helper::HelperProvider::new(config)),
        RegistryProviderConfig::Ecr(config) => Arc::new(ecr::EcrProvider::new(config)),
        RegistryProviderConfig::Gcp(config) => Arc::new(gcp::GcpProvider::new(config)),
        RegistryProviderConfig::Acr(config) => Arc::new(acr::AcrProvider::new(config)),
    }
}
