//! The shape of the tree: which names a directory holds under the current
//! config, who owns each entry, and directory listings.

use super::access;
use super::handles::{DirEntry, Handle};
use super::inode::{Node, candidate_inos};
use super::namespace::{Namespace, Ownership};
use super::*;
use crate::error::{Error, ErrorKind, Result};
use crate::registry::RegistryFile;
use std::sync::Arc;

impl CredFs {
    /// The child called `name` of `parent`, if the current config has it.
    pub(super) fn child(&self, ns: &Namespace, parent: &Node, name: &str) -> Result<Node> {
        let missing = || Error::not_found(format!("{}/{name}", parent.path()));
        let child = match parent {
            Node::Root => match name {
                "registries" => Node::Registries,
                "docker" => Node::Docker,
                "secrets" => Node::Secrets,
                "projects" => Node::Projects,
                "status.json" => Node::Status,
                _ => return Err(missing()),
            },
            Node::Registries if ns.registries.contains_key(name) => Node::Registry(name.into()),
            Node::Registry(r) if name == "refresh" => Node::RegistryRefresh(r.clone()),
            Node::Registry(r) => {
                let file = RegistryFile::from_name(name).ok_or_else(missing)?;
                Node::RegistryFile(r.clone(), file)
            }
            Node::Docker if name == "config.json" => Node::DockerConfig,
            Node::Secrets if ns.config.secrets.contains_key(name) => Node::SecretGroup(name.into()),
            Node::SecretGroup(g)
                if ns
                    .config
                    .secrets
                    .get(g)
                    .is_some_and(|keys| keys.contains_key(name)) =>
            {
                Node::Secret(g.clone(), name.into())
            }
            Node::Projects if ns.buckets.contains_key(name) => Node::Bucket(name.into()),
            Node::Bucket(b) => Node::Archive(b.clone(), name.into()),
            node if !node.is_dir() => {
                return Err(Error::new(ErrorKind::NotADirectory, node.path()));
            }
            _ => return Err(missing()),
        };
        Ok(child)
    }

    /// Whether `node` still exists in the current config (a number handed
    /// out earlier may name a removed entry).
    pub(super) fn exists(&self, ns: &Namespace, node: &Node) -> bool {
        match node {
            Node::Registry(r) | Node::RegistryFile(r, _) | Node::RegistryRefresh(r) => {
                ns.registries.contains_key(r)
            }
            Node::SecretGroup(g) => ns.config.secrets.contains_key(g),
            Node::Secret(g, k) => ns
                .config
                .secrets
                .get(g)
                .is_some_and(|keys| keys.contains_key(k)),
            Node::Bucket(b) | Node::Archive(b, _) => ns.buckets.contains_key(b),
            _ => true,
        }
    }

    pub(super) fn ownership(&self, ns: &Namespace, node: &Node) -> Ownership {
        match node {
            Node::Registry(r) => ns.registry_ownership(r, true),
            Node::RegistryFile(r, _) => ns.registry_ownership(r, false),
            // Write-only: writing asks for a new credential.
            Node::RegistryRefresh(r) => Ownership {
                perm: 0o200,
                ..ns.registry_ownership(r, false)
            },
            Node::Bucket(b) | Node::Archive(b, _) => match ns.buckets.get(b) {
                Some(bucket) => ns.bucket_ownership(bucket, node.is_dir()),
                None => ns.file_ownership(),
            },
            // Health carries no secret: anyone who can reach it may read it.
            Node::Status => Ownership {
                perm: 0o444,
                ..ns.file_ownership()
            },
            node if node.is_dir() => ns.dir_ownership(),
            _ => ns.file_ownership(),
        }
    }

    pub async fn opendir(&self, ino: u64, caller: Caller) -> Result<u64> {
        let ns = self.namespace();
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Error::new(ErrorKind::NotADirectory, node.path()));
        }
        self.check_access(&ns, &node, caller, access::READ)?;
        let mut entries = vec![
            DirEntry::new(ino, Kind::Dir, "."),
            DirEntry::new(ino, Kind::Dir, ".."),
        ];
        let children = match &node {
            Node::Bucket(b) => self.archive_names(&ns, b).await?,
            node => config_children(&ns, node),
        };
        for child in children {
            let kind = if child.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            entries.push(DirEntry::new(
                self.inodes.listed(&child),
                kind,
                child.name(),
            ));
        }
        Ok(self.handles.insert(Handle::Dir(entries)))
    }

    pub async fn readdir(&self, ino: u64, fh: u64, caller: Caller) -> Result<Arc<Handle>> {
        let fh = self.own_handle(ino, fh, caller).await?;
        self.handles
            .get(fh)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "unknown directory handle"))
    }
}

/// The entries of a directory that the config alone defines (all but a
/// bucket's archives).
pub(super) fn config_children(ns: &Namespace, node: &Node) -> Vec<Node> {
    match node {
        Node::Root => vec![
            Node::Registries,
            Node::Docker,
            Node::Secrets,
            Node::Projects,
            Node::Status,
        ],
        Node::Registries => ns
            .registries
            .keys()
            .map(|r| Node::Registry(r.clone()))
            .collect(),
        Node::Registry(r) => RegistryFile::ALL
            .into_iter()
            .map(|f| Node::RegistryFile(r.clone(), f))
            .chain([Node::RegistryRefresh(r.clone())])
            .collect(),
        Node::Docker => vec![Node::DockerConfig],
        Node::Secrets => ns
            .config
            .secrets
            .keys()
            .map(|g| Node::SecretGroup(g.clone()))
            .collect(),
        Node::SecretGroup(g) => ns
            .config
            .secrets
            .get(g)
            .map(|keys| {
                keys.keys()
                    .map(|k| Node::Secret(g.clone(), k.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        Node::Projects => ns.buckets.keys().map(|b| Node::Bucket(b.clone())).collect(),
        _ => Vec::new(),
    }
}

/// The entry of the config's tree whose first inode number is `ino`: a
/// number the kernel was given by the daemon before this one.
pub(super) fn config_node_numbered(ns: &Namespace, ino: u64) -> Option<Node> {
    let mut pending = vec![Node::Root];
    while let Some(node) = pending.pop() {
        if candidate_inos(&node).next() == Some(ino) {
            return Some(node);
        }
        pending.extend(config_children(ns, &node));
    }
    None
}
