//! The plain values the core's methods take and return: attributes, open
//! flags and results, what a read returns, what setattr asks.

use super::namespace::Ownership;
use crate::error::{Error, Result};
use crate::secret::Secret;
use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

/// How long the kernel may trust names and attributes without asking; kept
/// short because other hosts can change a store, and values that change
/// through us are invalidated at once.
pub const TTL: Duration = Duration::from_secs(1);

/// Reported as st_blksize and by statfs: copy tools size their buffers by
/// it, and fewer, larger writes cost less through FUSE.
pub const BLOCK_SIZE: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub ownership: Ownership,
    /// What it shows depends on who asks: the kernel must not keep it for
    /// the next caller.
    pub per_caller: bool,
}

impl Attr {
    /// How long the kernel may keep this name and these attributes.
    pub fn ttl(&self) -> Duration {
        if self.per_caller { Duration::ZERO } else { TTL }
    }
}

/// The one rule for names that are not UTF-8: nothing in this tree has
/// one, so looking one up finds nothing (ENOENT) and making one is refused
/// (EINVAL).
pub(super) fn existing_name(name: &OsStr) -> Result<&str> {
    name.to_str()
        .ok_or_else(|| Error::not_found("a name that is not UTF-8"))
}

pub(super) fn new_name(name: &OsStr) -> Result<&str> {
    name.to_str()
        .ok_or_else(|| Error::invalid("names here are UTF-8 text"))
}

/// What `setattr` asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    /// The handle it came through (`ftruncate`), if any.
    pub fh: Option<u64>,
    /// chmod, chown, or new times: owner-only, and they change nothing.
    pub mode: bool,
    pub owner: bool,
    pub times: bool,
}

/// What `statfs` reports: nothing to fill, and the sizes copy tools use.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub block_size: u32,
    pub name_max: u32,
}

/// Where the number of an attribute reply comes from.
pub(super) enum Numbering {
    /// A lookup: the kernel will hold the number until it forgets it.
    Lookup,
    /// The kernel asked by number (getattr).
    Known(u64),
}

/// What an attribute reply tells the page-cache bookkeeping.
pub(super) enum Content {
    None,
    Value(u64),
    Archive(u64),
    Failed,
}

/// What a read returns. A value is answered from the secret itself, so no
/// unwiped copy of it outlives the reply.
pub enum ReadData {
    Bytes(Vec<u8>),
    Secret(Secret, std::ops::Range<usize>),
}

impl ReadData {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadData::Bytes(bytes) => bytes,
            ReadData::Secret(secret, range) => &secret.expose()[range.clone()],
        }
    }
}

/// How the kernel may cache an opened file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// The kernel's cached pages are current: keep them.
    KeepCache,
    /// Every read and write comes to us.
    Direct,
}

#[derive(Clone, Debug)]
pub struct Opened {
    pub fh: u64,
    pub cache: CachePolicy,
    /// Closing needs no round trip (nothing to commit).
    pub no_flush: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub write: bool,
    pub truncate: bool,
}
