//! One loaded config, ready to serve: registries with their caches, buckets
//! with their stores, secrets, and who owns what.

use super::Providers;
use crate::config::{Access, Config, MountConfig};
use crate::registry::CachedRegistry;
use crate::status::EntryStatus;
use crate::store::{self, ProjectStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::warn;

pub struct Bucket {
    pub store_name: String,
    pub store: Arc<dyn ProjectStore>,
    pub read_only: bool,
    pub max_object_size: Option<u64>,
    pub access: Access,
}

pub struct Namespace {
    pub config: Config,
    pub loaded_at: SystemTime,
    pub registries: BTreeMap<String, Arc<CachedRegistry>>,
    pub buckets: BTreeMap<String, Arc<Bucket>>,
    pub store_status: BTreeMap<String, EntryStatus>,
}

/// Owner and permission bits of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub perm: u16,
}

impl Namespace {
    /// Builds the namespace of `config`, keeping from `previous` the cached
    /// credentials and open stores whose configuration did not change; what
    /// changed comes new from `providers`.
    pub async fn build(
        config: Config,
        previous: Option<&Namespace>,
        providers: &Providers,
    ) -> Self {
        let registries = config
            .registries
            .iter()
            .map(|(name, r)| {
                let unchanged = previous.and_then(|p| {
                    (p.config.registries.get(name) == Some(r))
                        .then(|| p.registries.get(name).cloned())
                        .flatten()
                });
                let cached = unchanged.unwrap_or_else(|| {
                    Arc::new(CachedRegistry::new(providers.registry(&r.provider)))
                });
                (name.clone(), cached)
            })
            .collect();
        let mut buckets = BTreeMap::new();
        let mut store_status = BTreeMap::new();
        for (name, store_config) in &config.stores {
            let unchanged = previous.and_then(|p| {
                let same = p.config.stores.get(name) == Some(store_config);
                let store = store_config.buckets.first().and_then(|b| p.buckets.get(b));
                same.then(|| store.map(|b| b.store.clone())).flatten()
            });
            let opened = match unchanged {
                Some(store) => Ok(store),
                None => providers.open_store(store_config).await.inspect(|store| {
                    // In the background: aborting a dead daemon's uploads
                    // waits on the provider. Only the dead's files go, so
                    // this is safe at any reload.
                    let store = store.clone();
                    tokio::spawn(async move { store.sweep().await });
                }),
            };
            let store = match opened {
                Ok(store) => {
                    store_status.insert(name.clone(), EntryStatus::ok(None));
                    store
                }
                Err(e) => {
                    warn!(store = %name, error = %e, "store unavailable");
                    store_status.insert(name.clone(), EntryStatus::error(e.message()));
                    Arc::new(store::FailedStore(e)) as Arc<dyn ProjectStore>
                }
            };
            for bucket in &store_config.buckets {
                let entry = Bucket {
                    store_name: name.clone(),
                    store: store.clone(),
                    read_only: store_config.read_only,
                    max_object_size: store_config.max_object_size,
                    access: store_config.access.clone(),
                };
                buckets.insert(bucket.clone(), Arc::new(entry));
            }
        }
        Namespace {
            config,
            loaded_at: SystemTime::now(),
            registries,
            buckets,
            store_status,
        }
    }

    fn mount(&self) -> &MountConfig {
        &self.config.mount
    }

    pub fn dir_ownership(&self) -> Ownership {
        let mount = self.mount();
        Ownership {
            uid: mount.uid,
            gid: mount.gid,
            perm: mount.dir_mode as u16,
        }
    }

    pub fn file_ownership(&self) -> Ownership {
        let mount = self.mount();
        Ownership {
            uid: mount.uid,
            gid: mount.gid,
            perm: mount.file_mode as u16,
        }
    }

    /// An entry's files take its own uid/gid/mode; its directory gets the
    /// same owner and can be searched by whoever may read the files.
    fn entry_ownership(&self, access: &Access, dir: bool) -> Ownership {
        let mount = self.mount();
        let file_mode = access.mode.unwrap_or(mount.file_mode);
        let perm = if !dir {
            file_mode
        } else if access.mode.is_some() {
            let readable = file_mode & 0o444;
            readable | (readable >> 2)
        } else {
            mount.dir_mode
        };
        Ownership {
            uid: access.uid.unwrap_or(mount.uid),
            gid: access.gid.unwrap_or(mount.gid),
            perm: perm as u16,
        }
    }

    pub fn registry_ownership(&self, name: &str, dir: bool) -> Ownership {
        match self.config.registries.get(name) {
            Some(r) => self.entry_ownership(&r.access, dir),
            None => self.file_ownership(),
        }
    }

    /// Buckets and archives are writable by their owner unless the store is
    /// read-only.
    pub fn bucket_ownership(&self, bucket: &Bucket, dir: bool) -> Ownership {
        let mut ownership = self.entry_ownership(&bucket.access, dir);
        if !bucket.read_only {
            ownership.perm |= 0o200;
        }
        ownership
    }
}
