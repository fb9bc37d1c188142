//! Stores whose configuration is accepted but whose client is not part of
//! this build yet: every operation fails with EIO.

use super::{ObjectInfo, ObjectReader, ProjectStore, Upload};
use crate::error::{Error, Result};
use async_trait::async_trait;

pub struct Unavailable {
    kind: &'static str,
}

impl Unavailable {
    pub fn new(kind: &'static str) -> Self {
        Unavailable { kind }
    }

    fn error(&self) -> Error {
        Error::provider(format!(
            "the `{}` store provider is not available in this build",
            self.kind
        ))
    }
}

#[async_trait]
impl ProjectStore for Unavailable {
    async fn list(&self, _: &str) -> Result<Vec<(String, ObjectInfo)>> {
        Err(self.error())
    }
    async fn stat(&self, _: &str, _: &str) -> Result<Option<ObjectInfo>> {
        Err(self.error())
    }
    async fn open(&self, _: &str, _: &str) -> Result<Box<dyn ObjectReader>> {
        Err(self.error())
    }
    async fn begin_upload(&self, _: &str) -> Result<Box<dyn Upload>> {
        Err(self.error())
    }
    async fn delete(&self, _: &str, _: &str) -> Result<()> {
        Err(self.error())
    }
    async fn rename(&self, _: &str, _: &str, _: &str) -> Result<ObjectInfo> {
        Err(self.error())
    }
}
