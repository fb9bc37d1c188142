//! A daemon that adopts its predecessor's FUSE connection: the kernel's
//! inode numbers keep their meaning, a reader's handle is opened again by
//! its inode, a writer's fails.

use super::harness::*;
use credfs::error::ErrorKind;
use credfs::vfs::OpenFlags;

#[tokio::test]
async fn a_new_daemon_knows_the_numbers_the_old_one_gave_out() {
    let (old, new) = (Core::start().await, Core::start().await);
    for path in [
        "registries/open/password",
        "registries/team",
        "secrets/app/key",
        "docker/config.json",
        "projects/b",
    ] {
        let ino = old.lookup(path, OWNER).await.expect("lookup").ino;
        // No lookup on the new daemon: the kernel asks with the old number.
        let attr = new.fs.getattr(ino, None, OWNER).await;
        assert_eq!(attr.map(|a| a.ino).ok(), Some(ino), "{path}");
    }
    let secret = old.lookup("secrets/app/key", OWNER).await.unwrap().ino;
    let opened = new.fs.open(secret, OpenFlags::default(), OWNER).await;
    assert!(opened.is_ok(), "open by an adopted number");
    // A number nobody gave out stays unknown.
    let unknown = new.fs.getattr(0x1234_5678, None, OWNER).await;
    assert_eq!(kind(unknown), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_readers_handle_is_reopened_by_inode_as_the_process_asking() {
    let (core, ino, theirs) = opened_by_the_daemon_before("secrets/app/key").await;
    let dir = core.lookup("registries", OWNER).await.unwrap().ino;
    let their_dir = core.fs.opendir(dir, OWNER).await.unwrap();
    // The daemon is replaced: a new epoch.
    core.fs.set_handle_epoch(2);
    let read = core
        .fs
        .read(ino, theirs, 0, 100, OWNER)
        .await
        .expect("read");
    assert_eq!(read.as_slice(), SECRET.as_bytes());
    let again = core.fs.read(ino, theirs, 2, 3, OWNER).await.expect("read");
    assert_eq!(again.as_slice(), &SECRET.as_bytes()[2..5]);
    let listing = core
        .fs
        .readdir(dir, their_dir, OWNER)
        .await
        .expect("readdir");
    assert!(matches!(listing.as_ref(), credfs::vfs::Handle::Dir(e) if e.len() == 4));
    // The permission check is the asker's: another uid is refused.
    let stolen = core.fs.read(ino, theirs | 0xff, 0, 100, OTHER).await;
    assert_eq!(kind(stolen), ErrorKind::PermissionDenied);
    core.fs.release(theirs).await;
    core.fs.release(their_dir).await;
}

#[tokio::test]
async fn a_writers_handle_fails_at_its_next_write_and_close() {
    let core = Core::start().await;
    core.fs.set_handle_epoch(1);
    let bucket = core.lookup("projects/b", OWNER).await.unwrap().ino;
    let (_, writer) = core.fs.create(bucket, "cut.zip", OWNER).await.unwrap();
    core.fs.set_handle_epoch(2);
    let written = core.fs.write(writer.fh, 0, zip(b"data"), OWNER).await;
    assert_eq!(written.map_err(|e| e.errno()), Err(libc::EIO));
    let closed = core.fs.flush(writer.fh, OWNER).await;
    assert_eq!(closed.map_err(|e| e.errno()), Err(libc::EIO));
    core.fs.release(writer.fh).await;
}

#[tokio::test]
async fn a_readers_handle_of_a_file_rendered_per_caller_is_not_reopened() {
    let (core, ino, theirs) = opened_by_the_daemon_before("docker/config.json").await;
    core.fs.set_handle_epoch(2);
    // Whoever holds the descriptor now would see their own credentials
    // through it: EIO, for every caller, the owner too.
    for caller in [OTHER, OWNER] {
        let read = core.fs.read(ino, theirs, 0, 100, caller).await;
        assert_eq!(read.map(|_| ()).map_err(|e| e.errno()), Err(libc::EIO));
    }
    core.fs.release(theirs).await;
}

/// A core serving handles of epoch 1, and `path` opened by its owner under
/// that epoch: its inode and handle.
async fn opened_by_the_daemon_before(path: &str) -> (Core, u64, u64) {
    let core = Core::start().await;
    core.fs.set_handle_epoch(1);
    let ino = core.lookup(path, OWNER).await.unwrap().ino;
    let opened = core.fs.open(ino, OpenFlags::default(), OWNER).await;
    (core, ino, opened.unwrap().fh)
}
