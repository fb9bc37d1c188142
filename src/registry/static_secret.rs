//! `static`: a username and password from the config (Docker Hub, GHCR,
//! GitLab, NGC access tokens).

use super::{Credential, RegistryProvider};
use crate::config::StaticConfig;
use crate::error::Result;
use async_trait::async_trait;

pub struct StaticProvider {
    credential: Credential,
}

impl StaticProvider {
    pub fn new(config: &StaticConfig) -> Self {
        StaticProvider {
            credential: Credential {
                registry: config.registry.clone(),
                username: config.username.clone(),
                password: config.password.clone(),
                token: config.password.clone(),
                expires_at: None,
            },
        }
    }
}

#[async_trait]
impl RegistryProvider for StaticProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        Ok(self.credential.clone())
    }
}
