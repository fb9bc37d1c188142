//! What value files show: a registry's files, docker/config.json (for each
//! caller, only what they may read), secrets and status.json; and the
//! handles that serve one value each.

use super::access::{self, Credentials};
use super::handles::Handle;
use super::inode::Node;
use super::namespace::Namespace;
use super::published::fingerprint;
use super::*;
use crate::error::{Error, ErrorKind, Result};
use crate::registry::{self, RegistryFile};
use crate::secret::Secret;
use crate::sync::lock;
use futures::future::join_all;
use tracing::debug;

/// The registry a config entry names, when it names one (ECR may leave it
/// to the provider's answer).
pub(super) fn configured_registry<'a>(ns: &'a Namespace, name: &str) -> Option<&'a str> {
    ns.config.registries.get(name)?.provider.registry()
}

/// The file's content is in the config: no provider call is needed.
pub(super) fn from_config(ns: &Namespace, name: &str, file: RegistryFile) -> bool {
    file == RegistryFile::Registry && configured_registry(ns, name).is_some()
}

/// The registry's provider is resting after a failure, with nothing valid
/// cached.
pub(super) fn resting(ns: &Namespace, name: &str) -> bool {
    ns.registries.get(name).is_some_and(|r| r.resting())
}

impl CredFs {
    /// The bytes a value file shows `caller` now.
    pub(super) async fn value(
        &self,
        ns: &Namespace,
        node: &Node,
        caller: Caller,
    ) -> Result<Secret> {
        match node {
            Node::RegistryFile(name, file) => {
                let cached = ns
                    .registries
                    .get(name)
                    .ok_or_else(|| Error::not_found(node.path()))?;
                // The config already says which registry this is: finding a
                // registry (`credfs get`, Docker's helper protocol) needs no
                // provider call, and a broken provider cannot hide it.
                if from_config(ns, name, *file)
                    && let Some(host) = configured_registry(ns, name)
                {
                    return Ok(Secret::from(host.to_string()));
                }
                // The cache logs each failed provider call once; a read
                // refused while the provider rests would only repeat it.
                let credential = cached.get().await.map_err(|e| {
                    debug!(path = %node.path(), error = %e, "credential unavailable");
                    e
                })?;
                Ok(registry::render(*file, &credential))
            }
            Node::DockerConfig => {
                // Only what the caller could read on its own, registry by
                // registry: the aggregate must not widen anyone's access.
                let mut credentials = Credentials::of(caller);
                let readable: Vec<_> = ns
                    .registries
                    .iter()
                    .filter(|(name, _)| {
                        let password = Node::RegistryFile((*name).clone(), RegistryFile::Password);
                        self.check_access_as(ns, &password, &mut credentials, access::READ)
                            .is_ok()
                    })
                    .collect();
                // All at once, under one deadline: a slow or hanging
                // provider is left out instead of holding up the others.
                let fetched = join_all(readable.into_iter().map(|(name, cached)| async move {
                    let outcome = cached.get_within(registry::AGGREGATE_WAIT).await;
                    if let Err(e) = &outcome {
                        debug!(registry = %name, error = %e, "left out of docker/config.json");
                    }
                    outcome.ok()
                }))
                .await;
                let available: Vec<_> = fetched.into_iter().flatten().collect();
                Ok(registry::docker_config_json(
                    available.iter().map(|c| c.as_ref()),
                ))
            }
            Node::RegistryRefresh(_) => Ok(Secret::empty()),
            Node::Secret(group, key) => ns
                .config
                .secrets
                .get(group)
                .and_then(|keys| keys.get(key))
                .cloned()
                .ok_or_else(|| Error::not_found(node.path())),
            Node::Status => {
                let last_error = lock(&self.last_error).clone();
                Ok(status_doc::render(
                    ns,
                    &self.uploads,
                    &self.audit,
                    self.held_inodes(),
                    last_error.as_ref(),
                ))
            }
            _ => Err(Error::new(ErrorKind::IsADirectory, node.path())),
        }
    }

    /// Answers a read-only open of a secret or of a cached credential's
    /// file at once, on the calling thread: the common case needs no hop to
    /// the async workers. `None`: ask `open`.
    pub fn open_now(&self, ino: u64, flags: OpenFlags, caller: Caller) -> Option<Opened> {
        if flags.write || flags.truncate {
            return None;
        }
        let ns = self.namespace();
        let node = self.inodes.node(ino)?;
        // A refusal is answered, and audited, by `open`.
        self.check_access(&ns, &node, caller, access::READ).ok()?;
        let value = match &node {
            Node::Secret(group, key) => ns.config.secrets.get(group)?.get(key)?.clone(),
            Node::RegistryFile(name, file) => {
                registry::render(*file, &*ns.registries.get(name)?.cached()?)
            }
            _ => return None,
        };
        // An open that cannot be recorded is answered by `open`.
        self.audit
            .record_open(|| node.path(), caller, Ok(()))
            .ok()?;
        Some(self.opened_value(ino, &node, value))
    }

    /// A handle on one value; the kernel keeps its cached copy only while
    /// that copy is the value.
    pub(super) fn opened_value(&self, ino: u64, node: &Node, value: Secret) -> Opened {
        let content = fingerprint(value.expose());
        // status.json changes without a fingerprint we track, and a
        // per-caller file must never be served from another caller's pages.
        let keep = *node != Node::Status
            && !node.is_per_caller()
            && self.published.observe(ino, content).kernel_copy_valid;
        let fh = self.handles.insert(Handle::Value(value));
        let cache = if keep {
            self.published.claim(fh, ino, content);
            CachePolicy::KeepCache
        } else {
            CachePolicy::Direct
        };
        Opened {
            fh,
            cache,
            no_flush: true,
        }
    }
}
