//! `none`: an open registry that needs no token.

use super::{Credential, RegistryProvider};
use crate::config::NoneConfig;
use crate::error::Result;
use crate::secret::Secret;
use async_trait::async_trait;

pub struct NoneProvider {
    config: NoneConfig,
}

impl NoneProvider {
    pub fn new(config: &NoneConfig) -> Self {
        NoneProvider {
            config: config.clone(),
        }
    }
}

#[async_trait]
impl RegistryProvider for NoneProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        Ok(Credential {
            registry: self.config.registry.clone(),
            username: Secret::empty(),
            password: Secret::empty(),
            token: Secret::empty(),
            expires_at: None,
        })
    }
}
