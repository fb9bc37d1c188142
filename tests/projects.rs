//! Project archives in a `filesystem` store, written and read by real tools.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

const CONFIG: &str = r#"
[stores.disk]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b", "other"]
max_object_size = "2MiB"
[stores.frozen]
provider = "filesystem"
root = "@DIR@/frozen"
buckets = ["ro"]
read_only = true
"#;

fn start() -> (Daemon, PathBuf) {
    let daemon = Daemon::start(CONFIG);
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    (daemon, src)
}

/// What the store holds for bucket `b`, hidden upload files included
/// (the daemon's own directory is not an archive: only what is in it).
fn stored(daemon: &Daemon) -> Vec<String> {
    let bucket = daemon.store().join("b");
    let mut names: Vec<String> = fs::read_dir(&bucket)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".credfs-instance-"))
        .chain(
            spool_files(&bucket)
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        )
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_fails(out: &std::process::Output, message: &str) {
    assert!(!out.status.success(), "expected failure with {message}");
    assert!(
        stderr(out).contains(message),
        "expected {message:?} in {:?}",
        stderr(out)
    );
}

#[test]
fn ls_shows_buckets_and_archives_with_sizes_and_times() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "a.zip", 1000);
    fs::copy(&zip, daemon.store().join("b/outside.zip")).unwrap();
    fs::write(daemon.store().join("b/notes.txt"), "not an archive").unwrap();
    let mut buckets: Vec<String> = fs::read_dir(daemon.path("projects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    buckets.sort();
    assert_eq!(buckets, ["b", "other", "ro"]);
    let out = run(
        "ls",
        &[
            "-l",
            "--time-style=+%s",
            &daemon.path("projects/b").to_string_lossy(),
        ],
    );
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let line = listing
        .lines()
        .find(|l| l.ends_with("outside.zip"))
        .expect("listed");
    let size = fs::metadata(&zip).unwrap().len().to_string();
    assert!(line.split_whitespace().any(|f| f == size), "{line}");
    assert!(
        !listing.contains("notes.txt"),
        "only archives are listed: {listing}"
    );
    let mounted = fs::metadata(daemon.path("projects/b/outside.zip")).unwrap();
    let on_disk = fs::metadata(daemon.store().join("b/outside.zip")).unwrap();
    assert_eq!(mounted.modified().unwrap(), on_disk.modified().unwrap());
}

#[test]
fn cp_uploads_and_every_reader_gets_the_same_bytes() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "build.zip", 700_000);
    let target = daemon.path("projects/b/p1.zip");
    let out = cp(&zip, &target);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stored(&daemon), ["p1.zip"], "no temporary file is left");
    assert_eq!(sha256(&daemon.store().join("b/p1.zip")), sha256(&zip));
    assert_eq!(sha256(&target), sha256(&zip));
    let cat = run("cat", &[&target.to_string_lossy()]);
    assert_eq!(cat.stdout, fs::read(&zip).unwrap());
    let copy = src.join("back.zip");
    assert!(cp(&target, &copy).status.success());
    assert_eq!(sha256(&copy), sha256(&zip));
    let unzip = run("unzip", &["-t", &target.to_string_lossy()]);
    assert!(
        unzip.status.success(),
        "{}",
        String::from_utf8_lossy(&unzip.stdout)
    );
    assert_eq!(
        fs::metadata(&target).unwrap().len(),
        fs::metadata(&zip).unwrap().len()
    );
    assert!(run("rm", &[&target.to_string_lossy()]).status.success());
    assert!(stored(&daemon).is_empty());
    assert_eq!(
        fs::metadata(&target).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
}

#[test]
fn bad_archives_fail_at_close_and_keep_the_old_one() {
    let (daemon, src) = start();
    let good = make_zip(&src, "good.zip", 50_000);
    let target = daemon.path("projects/b/p.zip");
    assert!(cp(&good, &target).status.success());
    let before = sha256(&target);

    let not_zip = src.join("not.zip");
    fs::write(&not_zip, vec![b'x'; 10_000]).unwrap();
    let out = cp(&not_zip, &target);
    assert_fails(&out, "failed to close");
    assert_fails(&out, "Invalid argument");

    let truncated = src.join("truncated.zip");
    let bytes = fs::read(&good).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let out = cp(&truncated, &target);
    assert_fails(&out, "Invalid argument");

    let fresh = daemon.path("projects/b/fresh.zip");
    let out = cp(&not_zip, &fresh);
    assert_fails(&out, "Invalid argument");

    assert_eq!(sha256(&target), before, "the old archive is intact");
    assert_eq!(
        stored(&daemon),
        ["p.zip"],
        "nothing else stored, no temporary left"
    );
    assert!(daemon.log().contains("archive refused"));
}

#[test]
fn archives_over_max_object_size_fail_with_efbig() {
    let (daemon, src) = start();
    let big = make_zip(&src, "big.zip", 3 << 20);
    let out = cp(&big, &daemon.path("projects/b/big.zip"));
    assert_fails(&out, "File too large");
    assert!(stored(&daemon).is_empty());
}

#[test]
fn read_only_stores_answer_erofs() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "a.zip", 100);
    fs::copy(&zip, daemon.dir.path().join("frozen/ro/kept.zip")).unwrap();
    let out = cp(&zip, &daemon.path("projects/ro/new.zip"));
    assert_fails(&out, "Read-only file system");
    let kept = daemon.path("projects/ro/kept.zip");
    assert_eq!(open_errno(&kept, "os.O_WRONLY | os.O_TRUNC"), libc::EROFS);
    assert_fails(
        &run("rm", &["-f", &kept.to_string_lossy()]),
        "Read-only file system",
    );
    let renamed = daemon.path("projects/ro/moved.zip");
    assert_fails(
        &run("mv", &[&kept.to_string_lossy(), &renamed.to_string_lossy()]),
        "Read-only file system",
    );
    assert_eq!(sha256(&kept), sha256(&zip), "still readable, unchanged");
}

/// Every common way of writing a file, each through its own open/seek/rename
/// pattern.
#[test]
fn every_common_writer_works() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "w.zip", 400_000);
    let (z, b) = (zip.to_string_lossy().to_string(), daemon.path("projects/b"));
    let dst = |name: &str| b.join(name).to_string_lossy().to_string();
    let writers: Vec<(&str, String)> = vec![
        ("cp.zip", format!("cp {z} {}", dst("cp.zip"))),
        ("cp-p.zip", format!("cp -p {z} {}", dst("cp-p.zip"))),
        ("cat.zip", format!("cat {z} > {}", dst("cat.zip"))),
        (
            "dd.zip",
            format!("dd if={z} of={} bs=1M status=none", dst("dd.zip")),
        ),
        (
            "shutil-copy.zip",
            format!(
                "python3 -c 'import shutil; shutil.copy(\"{z}\", \"{}\")'",
                dst("shutil-copy.zip")
            ),
        ),
        (
            "shutil-copyfile.zip",
            format!(
                "python3 -c 'import shutil; shutil.copyfile(\"{z}\", \"{}\")'",
                dst("shutil-copyfile.zip")
            ),
        ),
        (
            "install.zip",
            format!("install -m 0644 {z} {}", dst("install.zip")),
        ),
        ("rsync.zip", format!("rsync {z} {}", dst("rsync.zip"))),
    ];
    for (name, script) in &writers {
        let out = sh(script);
        assert!(out.status.success(), "{script}: {}", stderr(&out));
        assert_eq!(sha256(&b.join(name)), sha256(&zip), "{script}");
    }
    // Overwriting an existing archive with each tool works too.
    for (name, script) in &writers {
        let out = sh(script);
        assert!(out.status.success(), "again: {script}: {}", stderr(&out));
        assert_eq!(sha256(&b.join(name)), sha256(&zip), "again: {script}");
    }
    let mut expected: Vec<String> = writers.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(
        stored(&daemon),
        expected,
        "no staging or temporary files left"
    );
}

#[test]
fn zip_writing_in_place_through_a_temporary_name_works() {
    let (daemon, src) = start();
    let tree = src.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("a.txt"), "alpha").unwrap();
    fs::write(tree.join("sub/b.bin"), vec![7u8; 200_000]).unwrap();
    let target = daemon.path("projects/b/x.zip");
    let out = sh(&format!(
        "cd {} && zip -qr {} tree",
        src.display(),
        target.display()
    ));
    assert!(out.status.success(), "zip: {}", stderr(&out));
    let listing = run("unzip", &["-l", &target.to_string_lossy()]);
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(
        listing.contains("tree/sub/b.bin") && listing.contains("tree/a.txt"),
        "{listing}"
    );
    // zip updates an existing archive the same way.
    fs::write(tree.join("c.txt"), "gamma").unwrap();
    let out = sh(&format!(
        "cd {} && zip -qr {} tree",
        src.display(),
        target.display()
    ));
    assert!(out.status.success(), "zip update: {}", stderr(&out));
    let listing = run("unzip", &["-l", &target.to_string_lossy()]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains("tree/c.txt"));
    assert_eq!(stored(&daemon), ["x.zip"]);
}

#[test]
fn staging_files_commit_only_by_rename_to_a_checked_archive() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "s.zip", 10_000);
    let staging = daemon.path("projects/b/upload.tmp");
    assert!(cp(&zip, &staging).status.success());
    assert!(
        stored(&daemon)
            .iter()
            .all(|n| n.starts_with(".credfs-upload-")),
        "staged, not stored"
    );
    assert_eq!(
        fs::metadata(&staging).unwrap().len(),
        fs::metadata(&zip).unwrap().len()
    );
    assert_eq!(sha256(&staging), sha256(&zip), "a staging file reads back");
    let target = daemon.path("projects/b/final.zip");
    fs::rename(&staging, &target).unwrap();
    assert_eq!(stored(&daemon), ["final.zip"]);
    assert_eq!(sha256(&target), sha256(&zip));

    let bad = daemon.path("projects/b/bad.tmp");
    fs::write(src.join("junk"), vec![1u8; 5000]).unwrap();
    assert!(cp(&src.join("junk"), &bad).status.success());
    let err = fs::rename(&bad, daemon.path("projects/b/bad.zip")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(fs::metadata(&bad).is_ok(), "a refused rename loses nothing");
    assert!(fs::metadata(daemon.path("projects/b/bad.zip")).is_err());
    fs::remove_file(&bad).unwrap();
    assert_eq!(stored(&daemon), ["final.zip"]);

    // Renaming an archive moves it; across buckets is EXDEV (mv copies).
    let moved = daemon.path("projects/b/moved.zip");
    fs::rename(&target, &moved).unwrap();
    assert_eq!(stored(&daemon), ["moved.zip"]);
    let err = fs::rename(&moved, daemon.path("projects/other/m.zip")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    let out = run(
        "mv",
        &[
            &moved.to_string_lossy(),
            &daemon.path("projects/other/m.zip").to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&daemon.store().join("other/m.zip")), sha256(&zip));
    let err = fs::rename(
        daemon.path("projects/other/m.zip"),
        daemon.path("projects/other/m.txt"),
    )
    .unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EINVAL),
        "an archive keeps a .zip name"
    );
}

#[test]
fn concurrent_readers_and_writers_see_no_error_and_intact_archives() {
    let (daemon, src) = start();
    let bucket = daemon.path("projects/b");
    let mut archives = Vec::new();
    for i in 0..4 {
        let zip = make_zip(&src, &format!("c{i}.zip"), 300_000 + i * 1000);
        archives.push((zip.clone(), sha256(&zip)));
        fs::copy(&zip, bucket.join(format!("read{i}.zip"))).unwrap();
    }
    let token_dir = daemon.path("status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    std::thread::scope(|scope| {
        for reader in 0..32 {
            let (bucket, archives, token_dir) = (&bucket, &archives, &token_dir);
            scope.spawn(move || {
                let mut rounds = 0;
                while std::time::Instant::now() < deadline || rounds == 0 {
                    let i = (reader + rounds) % archives.len();
                    let bytes = fs::read(bucket.join(format!("read{i}.zip"))).expect("read");
                    assert_eq!(bytes, fs::read(&archives[i].0).unwrap(), "reader {reader}");
                    fs::read(token_dir).expect("status");
                    rounds += 1;
                }
            });
        }
        for writer in 0..4 {
            let (bucket, archives) = (&bucket, &archives);
            scope.spawn(move || {
                let mut rounds = 0;
                while std::time::Instant::now() < deadline || rounds == 0 {
                    let (zip, _) = &archives[(writer + rounds) % archives.len()];
                    let target = bucket.join(format!("w{writer}.zip"));
                    let out = cp(zip, &target);
                    assert!(out.status.success(), "writer {writer}: {}", stderr(&out));
                    rounds += 1;
                }
            });
        }
    });
    for writer in 0..4 {
        let sum = sha256(&bucket.join(format!("w{writer}.zip")));
        assert!(
            archives.iter().any(|(_, s)| *s == sum),
            "w{writer}.zip is one whole archive"
        );
        let unzip = run(
            "unzip",
            &[
                "-tq",
                &bucket.join(format!("w{writer}.zip")).to_string_lossy(),
            ],
        );
        assert!(unzip.status.success());
    }
    assert!(
        stored(&daemon).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        stored(&daemon)
    );
}

#[test]
fn leftover_uploads_of_a_crashed_daemon_are_removed_at_start() {
    let mut daemon = Daemon::prepare(CONFIG);
    fs::create_dir_all(daemon.store().join("b")).unwrap();
    // A loose file of an older version, and a dead daemon's directory.
    fs::write(daemon.store().join("b/.credfs-upload-123-0"), "partial").unwrap();
    let dead = daemon.store().join("b/.credfs-instance-1-dead");
    fs::create_dir_all(&dead).unwrap();
    fs::write(dead.join("lock"), "").unwrap();
    fs::write(dead.join(".credfs-upload-0"), "partial").unwrap();
    daemon.spawn();
    wait_for(
        "the leftovers to go",
        std::time::Duration::from_secs(10),
        || stored(&daemon).is_empty() && !dead.exists(),
    );
    let _: &Path = daemon.mnt.as_path();
}

/// A forked child closing its copy of the descriptor commits nothing; the
/// writer's own close commits the whole archive once.
#[test]
fn closes_by_other_processes_do_not_commit_early() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "fork.zip", 200_000);
    let target = daemon.path("projects/b/forked.zip");
    let script = format!(
        "import os\n\
         data = open({zip:?}, 'rb').read()\n\
         fd = os.open({target:?}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
         os.write(fd, data[:1000])\n\
         pid = os.fork()\n\
         if pid == 0:\n    os.close(fd)\n    os._exit(0)\n\
         os.waitpid(pid, 0)\n\
         assert not os.path.exists({stored:?}), 'committed by the child close'\n\
         os.write(fd, data[1000:])\n\
         os.close(fd)\n",
        zip = zip.to_string_lossy(),
        target = target.to_string_lossy(),
        stored = daemon.store().join("b/forked.zip").to_string_lossy(),
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&daemon.store().join("b/forked.zip")), sha256(&zip));
}

/// Rewriting part of an archive in place (no O_TRUNC) keeps the rest.
#[test]
fn an_archive_opened_for_update_keeps_its_other_bytes() {
    let (daemon, src) = start();
    let zip = make_zip(&src, "upd.zip", 50_000);
    let target = daemon.path("projects/b/upd.zip");
    fs::copy(&zip, &target).unwrap();
    let script = format!(
        "f = open({:?}, 'r+b')\nf.seek(0)\nf.write(b'PK\\x03\\x04')\nf.close()\n",
        target.to_string_lossy()
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&target), sha256(&zip), "same bytes written back");
    assert_eq!(stored(&daemon), ["upd.zip"]);
    let bad = format!(
        "f = open({:?}, 'r+b')\nf.seek(0)\nf.write(b'JUNK')\nf.close()\n",
        target.to_string_lossy()
    );
    let out = run("python3", &["-c", &bad]);
    assert!(!out.status.success(), "a broken header is refused at close");
    assert!(
        stderr(&out).contains("Invalid argument"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sha256(&target), sha256(&zip), "the archive is intact");
}

/// Overwriting an archive with another of the same size: readers right
/// after the commit get the new bytes, never cached old ones.
#[test]
fn a_replaced_archive_is_never_read_stale() {
    let (daemon, src) = start();
    let first = make_zip(&src, "one.zip", 100_000);
    let second = make_zip(&src, "two.zip", 100_000);
    assert_eq!(
        fs::metadata(&first).unwrap().len(),
        fs::metadata(&second).unwrap().len()
    );
    let target = daemon.path("projects/b/same-size.zip");
    for round in 0..20 {
        let source = if round % 2 == 0 { &first } else { &second };
        let out = cp(source, &target);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            fs::read(&target).unwrap(),
            fs::read(source).unwrap(),
            "round {round}"
        );
    }
}

/// An upload in flight outlives `check --probe`, a reload that reopens its
/// store, and a second daemon on the same store: each daemon removes only
/// what it owns or what a dead daemon left.
#[test]
fn an_upload_in_flight_survives_a_probe_a_reload_and_a_second_daemon() {
    let (mut daemon, src) = start();
    let zip = make_zip(&src, "live.zip", 1 << 20);
    let body = format!("f.write(open({:?}, 'rb').read())", zip.to_string_lossy());
    let writer = PausedWriter::start(
        &daemon.path("projects/b/live.zip"),
        &src.join("go"),
        &body,
        "",
    );
    let bucket = daemon.store().join("b");
    let live = spool_files(&bucket);
    assert_eq!(live.len(), 1, "the upload's spool file");

    let out = probe(&daemon.config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(spool_files(&bucket), live, "after check --probe");

    let config = fs::read_to_string(&daemon.config).unwrap();
    let edited = config
        .replace("max_object_size = \"2MiB\"", "max_object_size = \"3MiB\"")
        .replace(
            "buckets = [\"b\", \"other\"]",
            "buckets = [\"b\", \"other\", \"added\"]",
        );
    assert_ne!(edited, config);
    fs::write(&daemon.config, &edited).unwrap();
    wait_for("the reload", std::time::Duration::from_secs(10), || {
        daemon.path("projects/added").exists()
    });
    assert_eq!(
        spool_files(&bucket),
        live,
        "after a reload reopened the store"
    );

    // The second daemon sweeps a dead daemon's directory, not the live one.
    let dead = bucket.join(".credfs-instance-1-dead");
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("lock"), "").unwrap();
    fs::write(dead.join(".credfs-upload-0"), "partial").unwrap();
    let mut second = Daemon::prepare(&edited);
    second.spawn();
    wait_for(
        "the second daemon's sweep",
        std::time::Duration::from_secs(10),
        || !dead.exists(),
    );
    assert_eq!(spool_files(&bucket), live, "after a second daemon started");

    assert_eq!(writer.finish(), "closed");
    assert_eq!(sha256(&bucket.join("live.zip")), sha256(&zip));
    assert_eq!(sha256(&second.path("projects/b/live.zip")), sha256(&zip));
    assert!(spool_files(&bucket).is_empty());
    // A clean stop takes its own empty directory with it.
    assert_eq!(instance_dirs(&bucket).len(), 1);
    assert!(daemon.stop().success());
    assert!(second.stop().success());
    assert!(
        instance_dirs(&bucket).is_empty(),
        "{:?}",
        instance_dirs(&bucket)
    );
}

/// A daemon killed mid-upload leaves its spool file; the next start
/// removes it (its lock died with it).
#[test]
fn a_killed_daemons_spool_is_removed_at_the_next_start() {
    let (mut daemon, src) = start();
    let zip = make_zip(&src, "k.zip", 1 << 20);
    let body = format!("f.write(open({:?}, 'rb').read())", zip.to_string_lossy());
    let writer = PausedWriter::start(&daemon.path("projects/b/k.zip"), &src.join("go"), &body, "");
    let bucket = daemon.store().join("b");
    assert_eq!(spool_files(&bucket).len(), 1);
    daemon.crash();
    drop(writer);
    assert_eq!(spool_files(&bucket).len(), 1, "left by the killed daemon");
    daemon.spawn();
    wait_for(
        "the dead daemon's directory to go",
        std::time::Duration::from_secs(10),
        || instance_dirs(&bucket).is_empty(),
    );
    assert!(stored(&daemon).is_empty(), "{:?}", stored(&daemon));
}
