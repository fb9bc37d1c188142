//! A daemon that runs for months keeps its tables bounded: the inode
//! numbers the kernel forgot, failed lookups and deleted archives cost
//! nothing afterwards.

mod common;

use common::*;
use serde_json::Value;
use std::fs;

const CONFIG: &str = r#"
[secrets.ci]
key = "bounded-secret-6f7a"
[stores.disk]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b"]
"#;

fn held(daemon: &Daemon) -> (u64, u64) {
    let status = fs::read(daemon.path("status.json")).expect("status.json");
    let status: Value = serde_json::from_slice(&status).expect("JSON");
    let inodes = &status["inodes"];
    (
        inodes["held"].as_u64().expect("held"),
        inodes["cache_tracked"].as_u64().expect("cache_tracked"),
    )
}

/// Makes the kernel drop every dentry and inode it does not need, which
/// sends the daemon a FORGET for each.
fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches (needs root)");
}

#[test]
fn failed_lookups_and_deleted_archives_leave_nothing_held() {
    let mut daemon = Daemon::prepare(CONFIG);
    daemon.secret("bounded-secret-6f7a");
    fs::create_dir_all(daemon.store().join("b")).expect("bucket");
    daemon.spawn();
    assert_eq!(
        fs::read(daemon.path("secrets/ci/key")).expect("secret"),
        b"bounded-secret-6f7a"
    );
    drop_kernel_caches();
    let (idle, _) = held(&daemon);

    let bucket = daemon.path("projects/b");
    let script = format!(
        "import os\nb = {:?}\nfor i in range(20000):\n    try:\n        os.stat(os.path.join(b, 'n%0100d.zip' % i))\n    except FileNotFoundError:\n        pass\n    else:\n        raise SystemExit('found')\n",
        bucket.to_string_lossy()
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (after_failed, _) = held(&daemon);
    assert!(
        after_failed <= idle + 2,
        "20,000 failed lookups hold numbers: {idle} -> {after_failed}"
    );

    let src = daemon.dir.path().join("a.zip");
    let zip = make_zip(daemon.dir.path(), "a.zip", 100);
    assert_eq!(zip, src);
    let script = format!(
        "import os, shutil\nb = {:?}\nfor i in range(300):\n    p = os.path.join(b, 'a%d.zip' % i)\n    shutil.copyfile({:?}, p)\n    os.stat(p)\n    os.listdir(b)\n    os.unlink(p)\n",
        bucket.to_string_lossy(),
        src.to_string_lossy()
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop_kernel_caches();
    let (after_churn, tracked) = held(&daemon);
    assert!(
        after_churn <= idle + 2,
        "300 archives created and deleted hold numbers: {idle} -> {after_churn}"
    );
    assert!(tracked <= 8, "page-cache bookkeeping for {tracked} inodes");
    // What is still there is still served, under the numbers it had.
    assert_eq!(
        fs::read(daemon.path("secrets/ci/key")).expect("secret"),
        b"bounded-secret-6f7a"
    );
}

#[test]
fn each_uid_may_hold_only_max_pending_uploads_at_once() {
    require_program("setpriv");
    let daemon = Daemon::start(
        r#"
[mount]
allow_other = true
dir_mode = "0555"
max_pending_uploads = 3
[stores.disk]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b"]
uid = 1000
"#,
    );
    let staging = |name: &str| daemon.path(&format!("projects/b/{name}"));
    for i in 0..3 {
        fs::write(staging(&format!("s{i}")), b"staged").expect("within the limit");
    }
    let refused = fs::write(staging("s3"), b"staged").expect_err("a fourth");
    assert_eq!(refused.raw_os_error(), Some(libc::EDQUOT));
    let zip = make_zip(daemon.dir.path(), "a.zip", 100);
    let out = cp(&zip, &staging("a.zip"));
    assert!(
        stderr(&out).contains("Disk quota exceeded"),
        "{}",
        stderr(&out)
    );
    // Another uid has a limit of its own.
    let other = as_user(
        "1000",
        "cp",
        &[&zip.to_string_lossy(), &staging("b.zip").to_string_lossy()],
    );
    assert!(other.status.success(), "{}", stderr(&other));
    // Opening one archive name again and again cannot hide earlier
    // uploads: each open upload holds its place until it goes.
    let open_same_name_ten_times = || {
        let script = format!(
            "import os\nfds = []\ntry:\n    for i in range(10):\n        fds.append(os.open({:?}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))\n    print('opened', len(fds))\nexcept OSError as e:\n    print('errno', e.errno, 'after', len(fds))\n",
            staging("same.zip").to_string_lossy()
        );
        let out = run("python3", &["-c", &script]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        open_same_name_ten_times(),
        format!("errno {} after 0", libc::EDQUOT)
    );
    fs::remove_file(staging("s1")).expect("rm");
    assert_eq!(
        open_same_name_ten_times(),
        format!("errno {} after 1", libc::EDQUOT),
        "one place, one open upload of the same name"
    );
    // Removing a staging file frees its place.
    fs::remove_file(staging("s0")).expect("rm");
    assert!(cp(&zip, &staging("a.zip")).status.success());
    let log = daemon.log();
    assert!(
        log.contains("max_pending_uploads") && log.contains("uid=0"),
        "the log says who and why:\n{log}"
    );
}

#[test]
fn a_bad_pending_limit_is_refused_with_its_place() {
    let daemon = Daemon::prepare("[mount]\nmax_pending_uploads = 0\n");
    let out = run(
        BIN,
        &["check", "--config", &daemon.config.to_string_lossy()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("config.toml:2:23: max_pending_uploads must be a positive number"),
        "{}",
        stderr(&out)
    );
}
