//! What each inode number names, for as long as anyone holds the number:
//! the kernel (counted by lookups and forgets, the FUSE contract), an open
//! directory listing, or the daemon itself (entries it watches). A number
//! nobody holds is dropped, so names looked up once, failed lookups and
//! deleted archives cost nothing afterwards. A rename moves the number with
//! the file, as on a disk filesystem.
//!
//! A number is a hash of the entry's path (FNV-1a, fixed here, so every
//! build and every daemon agrees): a daemon that adopts a live FUSE
//! connection from its predecessor gives the kernel's numbers the same
//! meaning without any state handed over. Two paths whose hashes meet take
//! the next of a fixed sequence of salted hashes.

use crate::registry::RegistryFile;
use crate::sync::lock;
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

    /// What the inode number is a hash of: the kind and the path (a secret
    /// and an archive may share a path shape, never a kind).
    fn key(&self) -> String {
        let kind = match self {
            Node::Archive(..) => "a",
            node if node.is_dir() => "d",
            _ => "f",
        };
        format!("{kind}:{}", self.path())
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

struct Entry {
    node: Node,
    /// Lookups the kernel was answered and has not forgotten.
    lookups: u64,
    /// Open directory listings that showed this number.
    listings: u64,
    /// Kept for the daemon's life (the root, watched entries).
    pinned: bool,
}

impl Entry {
    fn held(&self) -> bool {
        self.pinned || self.lookups > 0 || self.listings > 0
    }
}

struct Table {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Entry>,
}

/// FNV-1a (64-bit): a hash fixed by its definition, the same in every
/// build and process, unlike std's hasher.
pub(crate) fn fnv1a<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The numbers `node` may take, in order: a hash of its kind and path,
/// then salted ones. Never 0 (no inode) or 1 (the root); below 2^63.
pub fn candidate_inos(node: &Node) -> impl Iterator<Item = u64> {
    let key = node.key();
    (0u64..).map(move |salt| {
        if *node == Node::Root {
            return ROOT_INO;
        }
        let hash = fnv1a(salt.to_le_bytes().iter().chain(key.as_bytes()));
        (hash >> 1).max(2)
    })
}

impl Table {
    fn entry(&mut self, node: &Node) -> (u64, &mut Entry) {
        let ino = match self.by_node.get(node) {
            Some(ino) => *ino,
            None => {
                let by_ino = &self.by_ino;
                let ino = candidate_inos(node)
                    .find(|ino| !by_ino.contains_key(ino))
                    .unwrap_or(ROOT_INO);
                self.by_node.insert(node.clone(), ino);
                self.by_ino.insert(
                    ino,
                    Entry {
                        node: node.clone(),
                        lookups: 0,
                        listings: 0,
                        pinned: false,
                    },
                );
                ino
            }
        };
        let entry = self
            .by_ino
            .get_mut(&ino)
            .expect("by_node and by_ino name the same entries");
        (ino, entry)
    }

    /// Drops `ino` if nobody holds it any more; whether it was dropped.
    fn drop_if_unheld(&mut self, ino: u64) -> bool {
        if self.by_ino.get(&ino).is_none_or(Entry::held) {
            return false;
        }
        if let Some(entry) = self.by_ino.remove(&ino)
            && self.by_node.get(&entry.node) == Some(&ino)
        {
            self.by_node.remove(&entry.node);
        }
        true
    }
}

impl Default for Inodes {
    fn default() -> Self {
        let mut table = Table {
            by_node: HashMap::new(),
            by_ino: HashMap::new(),
        };
        table.entry(&Node::Root).1.pinned = true;
        Inodes {
            inner: Mutex::new(table),
        }
    }
}

impl Inodes {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.inner)
    }

    /// The number of `node` for an entry the kernel is about to be given
    /// (a lookup or create reply): held until the kernel forgets it.
    pub fn lookup(&self, node: &Node) -> u64 {
        let mut table = self.table();
        let (ino, entry) = table.entry(node);
        entry.lookups += 1;
        ino
    }

    /// The kernel dropped `count` of its lookups of `ino`. Returns whether
    /// the number is gone now.
    pub fn forget(&self, ino: u64, count: u64) -> bool {
        let mut table = self.table();
        match table.by_ino.get_mut(&ino) {
            Some(entry) => entry.lookups = entry.lookups.saturating_sub(count),
            None => return false,
        }
        table.drop_if_unheld(ino)
    }

    /// The number a directory listing shows for `node`, held until
    /// `unlisted`: the lookups `ls -l` sends next find the same number.
    pub fn listed(&self, node: &Node) -> u64 {
        let mut table = self.table();
        let (ino, entry) = table.entry(node);
        entry.listings += 1;
        ino
    }

    /// A listing that showed `inos` was closed. Returns the numbers gone.
    pub fn unlisted(&self, inos: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut table = self.table();
        inos.into_iter()
            .filter(|ino| {
                if let Some(entry) = table.by_ino.get_mut(ino) {
                    entry.listings = entry.listings.saturating_sub(1);
                }
                table.drop_if_unheld(*ino)
            })
            .collect()
    }

    /// The number of an entry the daemon watches for the rest of its life.
    pub fn pin(&self, node: &Node) -> u64 {
        let mut table = self.table();
        let (ino, entry) = table.entry(node);
        entry.pinned = true;
        ino
    }

    /// Gives `ino` the meaning `node` (a number the kernel got from the
    /// daemon before this one, found again by its hash), held as one
    /// lookup: the kernel's count is unknown, and forgetting early is
    /// harmless, since the same path always gets the same number back.
    pub fn adopt(&self, ino: u64, node: &Node) -> bool {
        let mut table = self.table();
        if table.by_ino.contains_key(&ino) || table.by_node.contains_key(node) {
            return table.by_node.get(node) == Some(&ino);
        }
        table.by_node.insert(node.clone(), ino);
        table.by_ino.insert(
            ino,
            Entry {
                node: node.clone(),
                lookups: 1,
                listings: 0,
                pinned: false,
            },
        );
        true
    }

    /// The number of `node` if anyone holds one.
    pub fn peek(&self, node: &Node) -> Option<u64> {
        self.table().by_node.get(node).copied()
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.table().by_ino.get(&ino).map(|e| e.node.clone())
    }

    pub fn all(&self) -> Vec<(u64, Node)> {
        self.table()
            .by_ino
            .iter()
            .map(|(ino, entry)| (*ino, entry.node.clone()))
            .collect()
    }

    /// How many numbers are held, for tests and benchmarks.
    pub fn len(&self) -> usize {
        self.table().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `from`'s number now names `to`; the number `to` had is returned so
    /// the kernel can be told. The kernel still holds it until it forgets
    /// it, but it names nothing any more.
    pub fn rename(&self, from: &Node, to: &Node) -> Option<u64> {
        let mut table = self.table();
        let replaced = table.by_node.remove(to);
        if let Some(old) = replaced {
            table.by_ino.remove(&old);
        }
        if let Some(ino) = table.by_node.remove(from) {
            if let Some(entry) = table.by_ino.get_mut(&ino) {
                entry.node = to.clone();
            }
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
        let a = inodes.lookup(&staging);
        assert_eq!(inodes.lookup(&staging), a);
        let old_target = inodes.lookup(&target);
        assert_eq!(inodes.rename(&staging, &target), Some(old_target));
        assert_eq!(inodes.node(a), Some(target.clone()));
        assert_eq!(inodes.node(old_target), None);
        assert_ne!(
            inodes.lookup(&staging),
            a,
            "the old name gets another number while the moved one is held"
        );
        assert_eq!(inodes.peek(&Node::Root), Some(ROOT_INO));
    }

    #[test]
    fn every_table_gives_a_path_the_same_number() {
        let nodes = [
            Node::Registries,
            Node::RegistryFile("ecr".into(), RegistryFile::Token),
            Node::Secret("ci".into(), "key".into()),
            Node::Archive("b".into(), "x.zip".into()),
            Node::Bucket("b".into()),
        ];
        let (first, second) = (Inodes::default(), Inodes::default());
        let numbers: Vec<u64> = nodes.iter().map(|n| first.lookup(n)).collect();
        for (node, ino) in nodes.iter().rev().zip(numbers.iter().rev()) {
            assert_eq!(second.lookup(node), *ino, "{node:?}");
            assert!(*ino > ROOT_INO && *ino < 1 << 63);
        }
        // FNV-1a of the salt and "f:status.json" (checked by hand): a
        // later build must agree.
        assert_eq!(
            candidate_inos(&Node::Status).next(),
            Some(1_579_315_613_929_161_334)
        );
        // An adopted number means its path again.
        let third = Inodes::default();
        assert!(third.adopt(numbers[1], &nodes[1]));
        assert_eq!(third.node(numbers[1]), Some(nodes[1].clone()));
        assert_eq!(third.lookup(&nodes[1]), numbers[1]);
        assert!(third.forget(numbers[1], 2));
    }

    #[test]
    fn paths_whose_hashes_meet_take_the_next_candidate() {
        let inodes = Inodes::default();
        let a = Node::Archive("b".into(), "a.zip".into());
        let b = Node::Archive("b".into(), "b.zip".into());
        // Stand-in for a collision: `b` already holds `a`'s first number.
        let first = candidate_inos(&a).next().unwrap();
        assert!(inodes.adopt(first, &b));
        let second = candidate_inos(&a).nth(1).unwrap();
        assert_eq!(inodes.lookup(&a), second);
        assert_ne!(first, second);
    }

    #[test]
    fn a_number_lives_while_the_kernel_a_listing_or_the_daemon_holds_it() {
        let inodes = Inodes::default();
        let archive = Node::Archive("b".into(), "a.zip".into());
        let ino = inodes.lookup(&archive);
        inodes.lookup(&archive);
        assert!(!inodes.forget(ino, 1), "one lookup is still held");
        assert!(inodes.forget(ino, 1));
        assert_eq!(inodes.node(ino), None);
        assert_eq!(inodes.peek(&archive), None);
        assert_eq!(inodes.len(), 1, "only the root is left");

        let listed = inodes.listed(&archive);
        assert_eq!(inodes.lookup(&archive), listed, "ls -l sees one number");
        assert!(inodes.unlisted([listed]).is_empty(), "the kernel holds it");
        assert!(inodes.forget(listed, 1));
        let listed = inodes.listed(&archive);
        assert_eq!(inodes.unlisted([listed]), [listed]);

        let watched = inodes.pin(&Node::DockerConfig);
        inodes.lookup(&Node::DockerConfig);
        assert!(!inodes.forget(watched, 1), "pinned");
        assert!(!inodes.forget(ROOT_INO, 5), "the root stays");
        assert!(!inodes.forget(12345, 1), "an unknown number is ignored");
        assert_eq!(inodes.len(), 2);
    }
}
