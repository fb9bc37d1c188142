//! `projects/`: archives committed on the writer's close or by a staging
//! rename, the archive check, `max_object_size`, renames, deletes, and a
//! store that fails.

use super::harness::*;
use credfs::error::{Error, ErrorKind};
use credfs::store::faulty::StoreOp;
use credfs::vfs::{OpenFlags, RenameFlags, SetAttr};

const B: &str = "b";

#[tokio::test]
async fn an_archive_is_committed_on_its_writers_close() {
    let core = Core::start().await;
    let archive = zip(b"first version");
    let parent = core.lookup("projects/b", OWNER).await.expect("bucket").ino;
    let (attr, opened) = core
        .fs
        .create(parent, "p.zip", OWNER)
        .await
        .expect("create");
    assert!(!opened.no_flush, "the close commits");
    core.fs
        .write(opened.fh, 0, archive.clone(), OWNER)
        .await
        .expect("write");
    let pending = core.fs.getattr(attr.ino, Some(opened.fh), OWNER).await;
    assert_eq!(pending.expect("getattr").size, archive.len() as u64);
    assert_eq!(
        core.memory.get(B, "p.zip"),
        None,
        "nothing before the close"
    );
    assert_eq!(core.list("projects/b", OWNER).await.expect("ls"), ["p.zip"]);
    core.fs.flush(opened.fh, OWNER).await.expect("close");
    core.fs.release(opened.fh).await;
    assert_eq!(core.memory.get(B, "p.zip"), Some(archive.clone()));
    assert_eq!(
        core.read("projects/b/p.zip", OWNER).await.expect("cat"),
        archive
    );
    let size = core
        .lookup("projects/b/p.zip", OWNER)
        .await
        .expect("stat")
        .size;
    assert_eq!(size, archive.len() as u64);

    let second = zip(b"second version, longer");
    core.write(B, "p.zip", &second, OWNER)
        .await
        .expect("overwrite");
    assert_eq!(core.memory.get(B, "p.zip"), Some(second));
    let audited = core.audited("upload").len() + core.audited("overwrite").len();
    assert_eq!(audited, 2);
    assert_eq!(core.audited("overwrite")[0].0, "projects/b/p.zip");
}

#[tokio::test]
async fn only_the_buckets_owner_may_write_and_a_read_only_store_none() {
    let core = Core::start().await;
    let archive = zip(b"x");
    assert_eq!(
        kind(core.write(B, "p.zip", &archive, OTHER).await),
        ErrorKind::PermissionDenied
    );
    // A read-only store's bucket shows no write bit, and the mode decides
    // first (EROFS is for a caller past the mode bits).
    let ro = core.lookup("projects/ro", OWNER).await.expect("ro");
    assert_eq!(ro.ownership.perm & 0o222, 0);
    assert_eq!(
        kind(core.write("ro", "p.zip", &archive, OWNER).await),
        ErrorKind::PermissionDenied
    );
    let writable = core.lookup("projects/b", OWNER).await.expect("b");
    assert_eq!(writable.ownership.perm & 0o200, 0o200);
    assert!(core.memory.names().is_empty());
}

#[tokio::test]
async fn a_bad_archive_is_einval_at_close_and_the_old_one_stays() {
    let core = Core::start().await;
    let good = zip(b"good");
    core.write(B, "p.zip", &good, OWNER).await.expect("upload");
    let mut truncated = zip(b"cut short");
    truncated.truncate(truncated.len() - 5);
    for bad in [b"not a zip at all, just text".to_vec(), truncated] {
        let refused = core.write(B, "p.zip", &bad, OWNER).await;
        assert_eq!(refused.map_err(|e| e.errno()), Err(libc::EINVAL));
        assert_eq!(core.memory.get(B, "p.zip"), Some(good.clone()));
    }
    let results: Vec<String> = core.audited("overwrite").into_iter().map(|l| l.2).collect();
    assert_eq!(results, ["EINVAL", "EINVAL"]);
}

#[tokio::test]
async fn max_object_size_is_efbig_and_stores_nothing() {
    let core = Core::start().await;
    // 4 KiB is the store's limit: this archive crosses it.
    let big = zip(&[7u8; 4096]);
    let refused = core.write(B, "big.zip", &big, OWNER).await;
    assert_eq!(refused.map_err(|e| e.errno()), Err(libc::EFBIG));
    assert_eq!(core.memory.get(B, "big.zip"), None);
    assert_eq!(
        core.list("projects/b", OWNER).await.expect("ls"),
        Vec::<String>::new()
    );

    // A truncation past the limit is refused as well.
    let parent = core.lookup("projects/b", OWNER).await.expect("bucket").ino;
    let (attr, opened) = core
        .fs
        .create(parent, "t.zip", OWNER)
        .await
        .expect("create");
    let ftruncate = SetAttr {
        size: Some(4097),
        fh: Some(opened.fh),
        ..SetAttr::default()
    };
    let grown = core.fs.setattr(attr.ino, ftruncate, OWNER).await;
    assert_eq!(kind(grown), ErrorKind::TooBig);
    core.fs.release(opened.fh).await;
    let fits = zip(&[7u8; 3000]);
    core.write(B, "fits.zip", &fits, OWNER)
        .await
        .expect("under the limit");
}

#[tokio::test]
async fn a_staging_file_is_committed_by_its_rename() {
    let core = Core::start().await;
    let archive = zip(b"written by zip(1)");
    core.write(B, "zi123456", &archive, OWNER)
        .await
        .expect("staging");
    assert!(
        core.memory.names().is_empty(),
        "a staging file is not stored"
    );
    assert_eq!(
        core.list("projects/b", OWNER).await.expect("ls"),
        ["zi123456"]
    );
    let bucket = core.lookup("projects/b", OWNER).await.expect("bucket").ino;
    let flags = RenameFlags::default();
    core.fs
        .rename(bucket, "zi123456", bucket, "p.zip", flags, OWNER)
        .await
        .expect("rename");
    assert_eq!(core.memory.get(B, "p.zip"), Some(archive));
    assert_eq!(core.list("projects/b", OWNER).await.expect("ls"), ["p.zip"]);
    let renamed = core.audit();
    let line = renamed
        .iter()
        .find(|l| l["op"] == "rename")
        .expect("rename line");
    assert_eq!(line["from"], "projects/b/zi123456");
    assert_eq!(line["path"], "projects/b/p.zip");
    assert_eq!(core.audited("upload").len(), 1);

    // A staging file that is no archive stays staged, and says why.
    core.write(B, "zi999", b"garbage", OWNER)
        .await
        .expect("staging");
    let refused = core
        .fs
        .rename(bucket, "zi999", bucket, "q.zip", flags, OWNER)
        .await;
    assert_eq!(kind(refused), ErrorKind::InvalidInput);
    assert_eq!(core.memory.get(B, "q.zip"), None);
    assert!(
        core.list("projects/b", OWNER)
            .await
            .expect("ls")
            .contains(&"zi999".to_string())
    );
}

#[tokio::test]
async fn invalid_zip_names_are_einval_for_create_and_rename() {
    let core = Core::start().await;
    let bucket = core.lookup("projects/b", OWNER).await.expect("bucket").ino;
    assert_eq!(
        kind(core.fs.create(bucket, "My Project.zip", OWNER).await),
        ErrorKind::InvalidInput
    );
    core.write(B, "p.zip", &zip(b"p"), OWNER)
        .await
        .expect("upload");
    core.write(B, "zi1", &zip(b"s"), OWNER)
        .await
        .expect("staging");
    let flags = RenameFlags::default();
    for (from, to) in [
        ("zi1", ".hidden.zip"),
        ("p.zip", "a b.zip"),
        ("p.zip", "notes.txt"),
    ] {
        let renamed = core.fs.rename(bucket, from, bucket, to, flags, OWNER).await;
        assert_eq!(
            renamed.map_err(|e| e.errno()),
            Err(libc::EINVAL),
            "{from} -> {to}"
        );
    }
    assert_eq!(core.memory.names(), [(B.to_string(), "p.zip".to_string())]);
    let listed = core.list("projects/b", OWNER).await.expect("ls");
    assert_eq!(listed, ["p.zip", "zi1"]);
}

#[tokio::test]
async fn unlink_and_rename_of_committed_archives() {
    let core = Core::start().await;
    let bucket = core.lookup("projects/b", OWNER).await.expect("bucket").ino;
    let (a, b) = (zip(b"a"), zip(b"b"));
    core.write(B, "a.zip", &a, OWNER).await.expect("a");
    core.write(B, "b.zip", &b, OWNER).await.expect("b");
    let no_replace = RenameFlags {
        no_replace: true,
        exchange: false,
    };
    let refused = core
        .fs
        .rename(bucket, "a.zip", bucket, "b.zip", no_replace, OWNER);
    assert_eq!(kind(refused.await), ErrorKind::AlreadyExists);
    let flags = RenameFlags::default();
    core.fs
        .rename(bucket, "a.zip", bucket, "b.zip", flags, OWNER)
        .await
        .expect("replace");
    assert_eq!(core.memory.names(), [(B.to_string(), "b.zip".to_string())]);
    assert_eq!(core.memory.get(B, "b.zip"), Some(a));
    assert_eq!(
        kind(core.fs.unlink(bucket, "b.zip", OTHER).await),
        ErrorKind::PermissionDenied
    );
    core.fs.unlink(bucket, "b.zip", OWNER).await.expect("rm");
    assert!(core.memory.names().is_empty());
    assert_eq!(
        kind(core.fs.unlink(bucket, "b.zip", OWNER).await),
        ErrorKind::NotFound
    );
    let deletes: Vec<String> = core.audited("delete").into_iter().map(|l| l.2).collect();
    assert_eq!(deletes, ["EACCES", "ok", "ENOENT"]);
}

#[tokio::test]
async fn a_failing_store_is_eio_at_close_and_stores_nothing() {
    let core = Core::start().await;
    let archive = zip(b"never stored");
    core.store_faults.fail(
        StoreOp::Commit,
        ..,
        Error::provider("injected: the store is down"),
    );
    let failed = core.write(B, "p.zip", &archive, OWNER).await;
    assert_eq!(failed.map_err(|e| e.errno()), Err(libc::EIO));
    assert!(core.memory.names().is_empty());
    assert_eq!(
        core.list("projects/b", OWNER).await.expect("ls"),
        Vec::<String>::new()
    );
    assert_eq!(core.audited("upload")[0].2, "EIO");

    // Back up: the same upload goes through.
    core.store_faults.clear();
    core.write(B, "p.zip", &archive, OWNER)
        .await
        .expect("upload");
    assert_eq!(core.memory.get(B, "p.zip"), Some(archive));

    // A read that fails is EIO too, and the listing of a bucket whose
    // store cannot list is.
    core.store_faults
        .fail(StoreOp::Read, .., Error::provider("injected"));
    assert_eq!(
        kind(core.read("projects/b/p.zip", OWNER).await),
        ErrorKind::Provider
    );
    core.store_faults
        .fail(StoreOp::List, .., Error::provider("injected"));
    assert_eq!(
        kind(core.list("projects/b", OWNER).await),
        ErrorKind::Provider
    );
}

#[tokio::test]
async fn a_writer_that_keeps_an_archive_modifies_a_copy() {
    let core = Core::start().await;
    let original = zip(b"0123456789");
    core.write(B, "p.zip", &original, OWNER)
        .await
        .expect("upload");
    let ino = core
        .lookup("projects/b/p.zip", OWNER)
        .await
        .expect("stat")
        .ino;
    let keep = OpenFlags {
        write: true,
        truncate: false,
    };
    let opened = core.fs.open(ino, keep, OWNER).await.expect("open rw");
    // Same length, one byte of the body changed: still a complete archive.
    let at = original
        .windows(10)
        .position(|w| w == b"0123456789")
        .expect("body");
    core.fs
        .write(opened.fh, at as u64, b"X".to_vec(), OWNER)
        .await
        .expect("write");
    assert_eq!(core.memory.get(B, "p.zip"), Some(original.clone()));
    core.fs.flush(opened.fh, OWNER).await.expect("close");
    core.fs.release(opened.fh).await;
    let mut expected = original;
    expected[at] = b'X';
    assert_eq!(core.memory.get(B, "p.zip"), Some(expected));
}
