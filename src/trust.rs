//! sshd's StrictModes for everything credfs trusts: the config, the secret
//! files and helper programs it names, the spool and the store roots. A path
//! is trusted when every entry on the way to it, from `/` down, symlinks
//! included, is owned by root or by the daemon's user, and no directory on
//! the way can be written by anyone else. A directory with the sticky bit
//! (like `/tmp`) may be world-writable, because nobody else can replace an
//! entry in it that root or we own. The walk opens each entry relative to the
//! descriptor of its directory without following links, and checks what it
//! opened, so no name can be swapped between the check and the use; symlinks
//! are resolved by hand, through directories that were checked the same way.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// More than this many links on one path is a loop (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Why a path is not trusted, or could not be looked at.
#[derive(Debug)]
pub struct Distrust {
    /// The entry that failed, as resolved.
    pub at: PathBuf,
    pub reason: Reason,
}

#[derive(Debug)]
pub enum Reason {
    Symlink,
    Owner(u32),
    Writable {
        group: bool,
        others: bool,
        mode: u32,
    },
    NotADirectory,
    NotAFile,
    TooManyLinks,
    /// Swapped for another entry between two looks at it.
    Changed,
    Io(io::Error),
}

impl Distrust {
    fn new(at: &Path, reason: Reason) -> Self {
        Distrust {
            at: at.to_path_buf(),
            reason,
        }
    }

    /// The I/O error, when the path could not be opened at all (missing,
    /// denied) rather than being found untrustworthy.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.reason {
            Reason::Io(e) => Some(e),
            _ => None,
        }
    }

    /// "{what} {named}: {reason}", naming the entry that failed when it is
    /// not `named` itself.
    pub fn describe(&self, what: &str, named: &Path) -> String {
        if self.at == named {
            format!("{what} {} {}", named.display(), self.reason)
        } else {
            format!(
                "{what} {}: {} {}",
                named.display(),
                self.at.display(),
                self.reason
            )
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Symlink => f.write_str("is a symlink"),
            Reason::Owner(uid) => write!(
                f,
                "is owned by uid {uid}, not by root or the daemon's uid {}",
                euid()
            ),
            Reason::Writable {
                group,
                others,
                mode,
            } => {
                let who = match (group, others) {
                    (true, true) => "group and others",
                    (true, false) => "group",
                    _ => "others",
                };
                write!(f, "is writable by {who} (mode {mode:04o})")
            }
            Reason::NotADirectory => f.write_str("is not a directory"),
            Reason::NotAFile => f.write_str("is not a regular file"),
            Reason::TooManyLinks => f.write_str("leads through too many symlinks"),
            Reason::Changed => f.write_str("changed while it was being checked"),
            Reason::Io(e) => write!(f, "cannot be opened: {e}"),
        }
    }
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What the last entry of a path must be, and how it is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A regular file, opened for reading.
    File,
    /// A regular file that is run, not read: looked at only.
    Program,
    /// A directory that is not itself a symlink, opened for listing;
    /// missing directories are made (mode 0700) when `create`.
    Dir { create: bool },
}

/// Opens `path` for reading once it and every directory on the way are
/// trusted; the checks are of the descriptor returned.
pub fn open_file(path: &Path) -> Result<File, Distrust> {
    match walk(path, Want::File)? {
        Some(fd) => Ok(File::from(fd)),
        None => Err(missing(path)),
    }
}

/// The whole of a trusted file (`open_file`); it can hold secrets.
pub fn read_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, Distrust> {
    let mut file = open_file(path)?;
    let io = |e| Distrust::new(path, Reason::Io(e));
    let size = file.metadata().map_err(io)?.len();
    // Sized up front: a grown buffer would leave unwiped copies behind.
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(size as usize + 1));
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Checks a program credfs runs and its directories. A program that does
/// not exist yet passes when the directories that do exist are trusted:
/// only root or the daemon's user could then put it there.
pub fn check_program(path: &Path) -> Result<(), Distrust> {
    walk(path, Want::Program).map(|_| ())
}

/// Checks a file credfs reads anew later (a rotated token) and its
/// directories; a missing one passes like a missing program.
pub fn check_file(path: &Path) -> Result<(), Distrust> {
    walk(path, Want::Program).map(|_| ())
}

/// Checks a directory credfs writes into, which must not be a symlink; a
/// missing one passes like a missing program (it is made when opened).
pub fn check_dir(path: &Path) -> Result<(), Distrust> {
    walk(path, Want::Dir { create: false }).map(|_| ())
}

/// Opens a directory credfs writes into, making what is missing with mode
/// 0700. Everything done in it afterwards goes through the descriptor.
pub fn open_dir(path: &Path) -> Result<OwnedFd, Distrust> {
    walk(path, Want::Dir { create: true })?.ok_or_else(|| missing(path))
}

/// Opens (making it when missing) the directory `name` inside the trusted
/// directory `parent` (shown as `shown`), with the same checks.
pub fn open_subdir(parent: &OwnedFd, shown: &Path, name: &str) -> Result<OwnedFd, Distrust> {
    subdir(parent, shown, name, true)
}

/// `open_subdir` of a directory that must exist already: one that was
/// just removed is not made again.
pub fn open_existing_subdir(
    parent: &OwnedFd,
    shown: &Path,
    name: &str,
) -> Result<OwnedFd, Distrust> {
    subdir(parent, shown, name, false)
}

fn subdir(parent: &OwnedFd, shown: &Path, name: &str, create: bool) -> Result<OwnedFd, Distrust> {
    let at = shown.join(name);
    let mut opened = open_entry(parent.as_fd(), OsStr::new(name), &at, true);
    if create && matches!(&opened, Err(d) if is_missing(d)) {
        make_dir(parent.as_fd(), OsStr::new(name), &at)?;
        opened = open_entry(parent.as_fd(), OsStr::new(name), &at, true);
    }
    let (fd, stat) = opened?;
    if kind(&stat) == FileType::Symlink {
        return Err(Distrust::new(&at, Reason::Symlink));
    }
    trusted(&at, &stat, true)?;
    if kind(&stat) != FileType::Directory {
        return Err(Distrust::new(&at, Reason::NotADirectory));
    }
    Ok(fd)
}

fn missing(path: &Path) -> Distrust {
    Distrust::new(path, Reason::Io(io::Error::from(io::ErrorKind::NotFound)))
}

fn is_missing(distrust: &Distrust) -> bool {
    distrust
        .io_error()
        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
}

fn kind(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

fn io_at(at: &Path) -> impl Fn(rustix::io::Errno) -> Distrust + '_ {
    move |e| Distrust::new(at, Reason::Io(io::Error::from(e)))
}

/// Owner root or us; and, for a directory on the way or the entry itself,
/// nobody else may write it. A read-only mount makes write bits moot (a
/// Kubernetes ConfigMap volume is 0777 but mounted read-only).
fn trusted_stat(at: &Path, stat: &Stat, last: bool, read_only: bool) -> Result<(), Distrust> {
    let uid = stat.st_uid;
    if uid != 0 && uid != euid() {
        return Err(Distrust::new(at, Reason::Owner(uid)));
    }
    let mode = stat.st_mode & 0o7777;
    let file_type = kind(stat);
    let sticky_parent = !last && file_type == FileType::Directory && mode & 0o1000 != 0;
    let checked = file_type != FileType::Symlink && !sticky_parent && !read_only;
    if checked && mode & 0o022 != 0 {
        return Err(Distrust::new(
            at,
            Reason::Writable {
                group: mode & 0o020 != 0,
                others: mode & 0o002 != 0,
                mode,
            },
        ));
    }
    Ok(())
}

fn trusted(at: &Path, stat: &Stat, last: bool) -> Result<(), Distrust> {
    trusted_stat(at, stat, last, false)
}

/// Opens `name` in `dir` without following it: a symlink comes back as
/// itself. `readable` opens a file or directory for reading (never a link,
/// never blocking on a FIFO) instead of as a bare location.
fn open_entry(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    at: &Path,
    readable: bool,
) -> Result<(OwnedFd, Stat), Distrust> {
    let located = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_at(at))?;
    let stat = rustix::fs::fstat(&located).map_err(io_at(at))?;
    if !readable || kind(&stat) == FileType::Symlink {
        return Ok((located, stat));
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let opened = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            Distrust::new(at, Reason::Changed)
        } else {
            io_at(at)(e)
        }
    })?;
    let now = rustix::fs::fstat(&opened).map_err(io_at(at))?;
    if (now.st_dev, now.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(Distrust::new(at, Reason::Changed));
    }
    Ok((opened, now))
}

fn make_dir(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, at: &Path) -> Result<(), Distrust> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(io_at(at)(e)),
    }
}

fn read_only(fd: &OwnedFd) -> bool {
    rustix::fs::fstatvfs(fd).is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// Walks again when an entry changed under the walk, or vanished: a
/// Kubernetes ConfigMap update swaps `..data` and then removes the old
/// generation, which a walk may have just resolved.
fn walk(path: &Path, want: Want) -> Result<Option<OwnedFd>, Distrust> {
    let mut attempts = 1;
    loop {
        match walk_once(path, want) {
            Err(d)
                if attempts < WALK_ATTEMPTS
                    && (matches!(d.reason, Reason::Changed) || is_missing(&d)) =>
            {
                attempts += 1;
            }
            done => return done,
        }
    }
}

const WALK_ATTEMPTS: u32 = 3;

/// The walk itself. `Ok(None)`: an entry is missing and `want` allows it.
fn walk_once(path: &Path, want: Want) -> Result<Option<OwnedFd>, Distrust> {
    let path = std::path::absolute(path).map_err(|e| Distrust::new(path, Reason::Io(e)))?;
    let root = Path::new("/");
    let root_fd = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_at(root))?;
    let root_stat = rustix::fs::fstat(&root_fd).map_err(io_at(root))?;
    trusted(root, &root_stat, false)?;
    // The directories walked through, each with its resolved path: `..`
    // goes back up what was really walked, not what the text says.
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root_fd, root.to_path_buf())];
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, &path);
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = pending.is_empty();
        let (dir_fd, dir_path) = stack.last().ok_or_else(|| missing(&path))?;
        let at = dir_path.join(&name);
        let readable = last && want != Want::Program;
        let mut opened = open_entry(dir_fd.as_fd(), &name, &at, readable);
        if let Err(d) = &opened
            && is_missing(d)
        {
            match want {
                Want::Dir { create: true } => {
                    make_dir(dir_fd.as_fd(), &name, &at)?;
                    opened = open_entry(dir_fd.as_fd(), &name, &at, readable);
                }
                // A directory is checked again when the daemon makes or
                // opens it.
                Want::Dir { create: false } => return Ok(None),
                Want::Program => {
                    // Whoever may create entries in the directory could put
                    // a program there later: the sticky bit only guards
                    // entries that exist.
                    let parent = rustix::fs::fstat(dir_fd).map_err(io_at(dir_path))?;
                    trusted_stat(dir_path, &parent, true, false)?;
                    return Ok(None);
                }
                Want::File => {}
            }
        }
        let (fd, stat) = opened?;
        let file_type = kind(&stat);
        if file_type == FileType::Symlink {
            if last && matches!(want, Want::Dir { .. }) {
                return Err(Distrust::new(&at, Reason::Symlink));
            }
            trusted(&at, &stat, last)?;
            links += 1;
            if links > MAX_LINKS {
                return Err(Distrust::new(&path, Reason::TooManyLinks));
            }
            let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(io_at(&at))?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            if target.is_absolute() {
                stack.truncate(1);
            }
            push_components(&mut pending, &target);
            continue;
        }
        trusted_stat(&at, &stat, last, read_only(&fd))?;
        if !last {
            if file_type != FileType::Directory {
                return Err(Distrust::new(&at, Reason::NotADirectory));
            }
            stack.push((fd, at));
            continue;
        }
        return match (want, file_type) {
            (Want::Dir { .. }, FileType::Directory) => Ok(Some(fd)),
            (Want::Dir { .. }, _) => Err(Distrust::new(&at, Reason::NotADirectory)),
            (_, FileType::RegularFile) => Ok(Some(fd)),
            _ => Err(Distrust::new(&at, Reason::NotAFile)),
        };
    }
    // The path was `/` itself, or ended in `..`.
    let (fd, at) = stack.pop().ok_or_else(|| missing(&path))?;
    match want {
        Want::Dir { .. } => {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            rustix::fs::openat(&fd, ".", flags, Mode::empty())
                .map(Some)
                .map_err(io_at(&at))
        }
        _ => Err(Distrust::new(&at, Reason::NotAFile)),
    }
}

/// Queues the components of `path` so that `pop` yields them in order.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let names = path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    });
    let names: Vec<OsString> = names.collect();
    pending.extend(names.into_iter().rev());
}

/// Whether `stat` of an entry in a trusted directory shows a regular file.
pub fn is_regular(stat: &Stat) -> bool {
    kind(stat) == FileType::RegularFile
}

/// `stat` of `name` in `dir` without following a symlink.
pub fn stat_in(dir: &OwnedFd, name: &str) -> io::Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn reason(result: Result<(), Distrust>) -> String {
        match result {
            Ok(()) => "trusted".into(),
            Err(d) => format!("{} {}", d.at.display(), d.reason),
        }
    }

    #[test]
    fn a_private_tempdir_under_sticky_tmp_is_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("f"), "x").expect("write");
        assert_eq!(reason(check_dir(dir.path())), "trusted");
        assert!(open_file(&dir.path().join("f")).is_ok());
        assert_eq!(reason(check_dir(&dir.path().join("not/yet"))), "trusted");
    }

    #[test]
    fn writable_directories_and_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("mkdir");
        fs::write(sub.join("f"), "x").expect("write");
        chmod(&sub, 0o775);
        assert_eq!(
            reason(check_dir(&sub)),
            format!("{} is writable by group (mode 0775)", sub.display())
        );
        let err = open_file(&sub.join("f")).expect_err("group-writable parent");
        assert_eq!(err.at, sub);
        chmod(&sub, 0o700);
        chmod(&sub.join("f"), 0o646);
        let err = open_file(&sub.join("f")).expect_err("world-writable file");
        assert_eq!(
            err.describe("secret file", &sub.join("f")),
            format!(
                "secret file {} is writable by others (mode 0646)",
                sub.join("f").display()
            )
        );
        // A sticky world-writable parent is fine; a sticky leaf is not.
        chmod(&sub, 0o1777);
        chmod(&sub.join("f"), 0o600);
        assert!(open_file(&sub.join("f")).is_ok());
        assert!(check_dir(&sub).is_err());
    }

    #[test]
    fn symlinks_are_followed_only_through_trusted_places() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("..2026_a");
        fs::create_dir(&real).expect("mkdir");
        fs::write(real.join("config.toml"), "x").expect("write");
        symlink("..2026_a", dir.path().join("..data")).expect("symlink");
        symlink("..data/config.toml", dir.path().join("config.toml")).expect("symlink");
        assert!(open_file(&dir.path().join("config.toml")).is_ok());
        // A directory credfs writes into may not be a link itself.
        assert_eq!(
            reason(check_dir(&dir.path().join("..data"))),
            format!("{} is a symlink", dir.path().join("..data").display())
        );
        // A link to a place another user owns.
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        fs::write(theirs.join("f"), "x").expect("write");
        std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).expect("chown");
        symlink(&theirs, dir.path().join("link")).expect("symlink");
        let err = open_file(&dir.path().join("link/f")).expect_err("owned by 1000");
        assert_eq!(err.at, theirs);
        assert!(matches!(err.reason, Reason::Owner(1000)));
    }

    #[test]
    fn open_dir_makes_private_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = dir.path().join("state/spool");
        let fd = open_dir(&made).expect("made");
        let mode = fs::metadata(&made).expect("made").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        let bucket = open_subdir(&fd, &made, "b").expect("bucket");
        assert!(rustix::fs::fstat(&bucket).is_ok());
        symlink("/etc", made.join("evil")).expect("symlink");
        let err = open_subdir(&fd, &made, "evil").expect_err("a symlinked bucket");
        assert!(matches!(err.reason, Reason::Symlink));
    }
}
