//! What each inode number names. Numbers are handed out on first sight and
//! stay with their entry for the life of the daemon; a rename moves the
//! number with the file, as on a disk filesystem.

use crate::registry::RegistryFile;
use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Registries,
    Registry(String),
    RegistryFile(String, RegistryFile),
    /// `registries/<name>/refresh`: writing forces a new credential.
    RegistryRefresh(String),
    Docker,
    DockerConfig,
    Secrets,
    SecretGroup(String),
    Secret(String, String),
    Status,
    Projects,
    Bucket(String),
    Archive(String, String),
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(
            self,
            Node::Root
                | Node::Registries
                | Node::Registry(_)
                | Node::Docker
                | Node::Secrets
                | Node::SecretGroup(_)
                | Node::Projects
                | Node::Bucket(_)
        )
    }

    pub fn name(&self) -> String {
        match self {
            Node::Root => String::new(),
            Node::Registries => "registries".into(),
            Node::Docker => "docker".into(),
            Node::Secrets => "secrets".into(),
            Node::Projects => "projects".into(),
            Node::Status => "status.json".into(),
            Node::DockerConfig => "config.json".into(),
            Node::RegistryFile(_, file) => file.name().into(),
            Node::RegistryRefresh(_) => "refresh".into(),
            Node::Registry(name)
            | Node::SecretGroup(name)
            | Node::Bucket(name)
            | Node::Secret(_, name)
            | Node::Archive(_, name) => name.clone(),
        }
    }

    /// Files whose bytes are credentials, and the directories of them: what
    /// the audit log records opens of.
    pub fn holds_secrets(&self) -> bool {
        matches!(
            self,
            Node::Registry(_)
                | Node::RegistryFile(..)
                | Node::DockerConfig
                | Node::SecretGroup(_)
                | Node::Secret(..)
        )
    }

    /// Whether what it shows depends on who reads it: an aggregate of
    /// entries each with its own owner and mode.
    pub fn is_per_caller(&self) -> bool {
        matches!(self, Node::DockerConfig)
    }

    pub fn parent(&self) -> Option<Node> {
        Some(match self {
            Node::Root => return None,
            Node::Registries | Node::Docker | Node::Secrets | Node::Projects | Node::Status => {
                Node::Root
            }
            Node::Registry(_) => Node::Registries,
            Node::RegistryFile(r, _) | Node::RegistryRefresh(r) => Node::Registry(r.clone()),
            Node::DockerConfig => Node::Docker,
            Node::SecretGroup(_) => Node::Secrets,
            Node::Secret(g, _) => Node::SecretGroup(g.clone()),
            Node::Bucket(_) => Node::Projects,
            Node::Archive(b, _) => Node::Bucket(b.clone()),
        })
    }

    /// The path below the mount point, for logs and the audit trail.
    pub fn path(&self) -> String {
        match self {
            Node::Root => "/".into(),
            Node::Registries | Node::Docker | Node::Secrets | Node::Projects | Node::Status => {
                self.name()
            }
            Node::Registry(r) => format!("registries/{r}"),
            Node::RegistryFile(r, f) => format!("registries/{r}/{}", f.name()),
            Node::RegistryRefresh(r) => format!("registries/{r}/refresh"),
            Node::DockerConfig => "docker/config.json".into(),
            Node::SecretGroup(g) => format!("secrets/{g}"),
            Node::Secret(g, k) => format!("secrets/{g}/{k}"),
            Node::Bucket(b) => format!("projects/{b}"),
            Node::Archive(b, n) => format!("projects/{b}/{n}"),
        }
    }
}

pub struct Inodes {
    inner: Mutex<Table>,
}

struct Table {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut table = Table {
            by_node: HashMap::new(),
            by_ino: HashMap::new(),
            next: ROOT_INO + 1,
        };
        table.by_node.insert(Node::Root, ROOT_INO);
        table.by_ino.insert(ROOT_INO, Node::Root);
        Inodes {
            inner: Mutex::new(table),
        }
    }
}

impl Inodes {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn ino(&self, node: &Node) -> u64 {
        let mut table = self.table();
        if let Some(ino) = table.by_node.get(node) {
            return *ino;
        }
        let ino = table.next;
        table.next += 1;
        table.by_node.insert(node.clone(), ino);
        table.by_ino.insert(ino, node.clone());
        ino
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.table().by_ino.get(&ino).cloned()
    }

    pub fn all(&self) -> Vec<(u64, Node)> {
        self.table()
            .by_ino
            .iter()
            .map(|(ino, node)| (*ino, node.clone()))
            .collect()
    }

    /// `from`'s number now names `to`; whatever `to` had is forgotten and its
    /// number returned so the kernel can be told.
    pub fn rename(&self, from: &Node, to: &Node) -> Option<u64> {
        let mut table = self.table();
        let replaced = table.by_node.remove(to);
        if let Some(old) = replaced {
            table.by_ino.remove(&old);
        }
        if let Some(ino) = table.by_node.remove(from) {
            table.by_ino.insert(ino, to.clone());
            table.by_node.insert(to.clone(), ino);
        }
        replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_move_on_rename() {
        let inodes = Inodes::default();
        let staging = Node::Archive("b".into(), "zi123".into());
        let target = Node::Archive("b".into(), "x.zip".into());
        let a = inodes.ino(&staging);
        assert_eq!(inodes.ino(&staging), a);
        let old_target = inodes.ino(&target);
        assert_eq!(inodes.rename(&staging, &target), Some(old_target));
        assert_eq!(inodes.node(a), Some(target.clone()));
        assert_eq!(inodes.node(old_target), None);
        assert_ne!(inodes.ino(&staging), a, "the old name gets a fresh number");
        assert_eq!(inodes.ino(&Node::Root), ROOT_INO);
    }
}
