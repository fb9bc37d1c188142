//! Providers whose configuration is accepted but whose client is not part of
//! this build yet: reads fail with EIO and `status.json` says why.

use super::{Credential, RegistryProvider};
use crate::error::{Error, Result};
use async_trait::async_trait;

pub struct Unavailable {
    kind: &'static str,
}

impl Unavailable {
    pub fn new(kind: &'static str) -> Self {
        Unavailable { kind }
    }
}

#[async_trait]
impl RegistryProvider for Unavailable {
    async fn fetch(&self) -> Result<Credential> {
        Err(Error::provider(format!(
            "the `{}` registry provider is not available in this build",
            self.kind
        )))
    }
}
