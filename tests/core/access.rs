//! Who may read what: uid, gid and mode per entry, the aggregate
//! docker/config.json per caller, and the audit lines of opens.

use super::harness::*;
use credfs::error::ErrorKind;
use credfs::vfs::{OpenFlags, SetAttr};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

#[tokio::test]
async fn the_owner_class_decides_for_each_caller() {
    let core = Core::start().await;
    // secrets/app/key: 0440, 1000:1000.
    assert_eq!(core.read_text("secrets/app/key", OWNER).await, SECRET);
    let group_member = caller(4000, 1000);
    assert_eq!(
        core.read_text("secrets/app/key", group_member).await,
        SECRET
    );
    assert_eq!(
        kind(core.read("secrets/app/key", OTHER).await),
        ErrorKind::PermissionDenied
    );
    // Root without capabilities gets the "other" bits, like anyone.
    assert_eq!(
        kind(core.read("secrets/app/key", caller(0, 0)).await),
        ErrorKind::PermissionDenied
    );

    // registries/team: 0400 2000:2000, its directory 0500: the mount's
    // owner cannot even look inside.
    let password = "registries/team/password";
    assert_eq!(core.read_text(password, TEAM).await, TEAM_PASSWORD);
    assert_eq!(
        kind(core.lookup(password, OWNER).await),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        core.read_text("registries/open/password", OTHER).await,
        OPEN_PASSWORD
    );
}

#[tokio::test]
async fn access_and_open_check_the_same_rule() {
    let core = Core::start().await;
    let key = core
        .lookup("secrets/app/key", OWNER)
        .await
        .expect("key")
        .ino;
    let (read, write) = (4, 2);
    assert!(core.fs.access(key, read, OWNER).is_ok());
    assert_eq!(
        kind(core.fs.access(key, read, OTHER)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(core.fs.access(key, write, OWNER)),
        ErrorKind::PermissionDenied
    );
    // A number looked up by one caller lets no other caller past the
    // directories above it.
    let team = core
        .lookup("registries/team/token", TEAM)
        .await
        .expect("token");
    assert_eq!(
        kind(core.fs.open(team.ino, OpenFlags::default(), OWNER).await),
        ErrorKind::PermissionDenied
    );
    let writing = OpenFlags {
        write: true,
        truncate: false,
    };
    assert_eq!(
        kind(core.fs.open(key, writing, OWNER).await),
        ErrorKind::PermissionDenied
    );
}

/// The registries docker/config.json lists for `who`.
async fn docker_auths(core: &Core, who: credfs::vfs::Caller) -> Vec<String> {
    let text = core.read_text("docker/config.json", who).await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let auths = json["auths"].as_object().expect("auths");
    auths.keys().cloned().collect()
}

#[tokio::test]
async fn docker_config_json_holds_only_what_the_caller_may_read() {
    let core = Core::start().await;
    // The file is 0440 1000:1000; each registry in it is checked for the
    // reader on its own.
    let team_in_mount_group = caller(2000, 1000);
    assert_eq!(
        docker_auths(&core, team_in_mount_group).await,
        ["open.example", "team.example:5000"]
    );
    assert_eq!(docker_auths(&core, OWNER).await, ["open.example"]);
    assert_eq!(
        kind(core.read("docker/config.json", OTHER).await),
        ErrorKind::PermissionDenied
    );
    let attr = core
        .lookup("docker/config.json", OWNER)
        .await
        .expect("attr");
    assert!(
        attr.per_caller,
        "the kernel must not cache one caller's view"
    );
    assert_eq!(attr.ttl(), std::time::Duration::ZERO);
}

#[tokio::test]
async fn opens_of_secrets_are_audited_with_caller_and_result() {
    let core = Core::start().await;
    core.read("secrets/app/key", OWNER).await.expect("read");
    let denied = core.read("secrets/app/key", OTHER).await;
    assert_eq!(kind(denied), ErrorKind::PermissionDenied);
    core.read("status.json", OTHER)
        .await
        .expect("health is readable");
    let opens = core.audited("open");
    assert_eq!(
        opens,
        [
            ("secrets/app/key".to_string(), 1000, "ok".to_string()),
            ("secrets/app/key".to_string(), 3000, "EACCES".to_string()),
        ],
        "status.json holds no secret: not audited"
    );
}

#[tokio::test]
async fn the_root_lists_its_five_entries_and_registries_their_files() {
    let core = Core::start().await;
    let root = core.list("", OTHER).await.expect("root");
    assert_eq!(
        root,
        ["registries", "docker", "secrets", "projects", "status.json"]
    );
    assert_eq!(
        core.list("registries", OTHER).await.expect("registries"),
        ["open", "team"]
    );
    let files = core.list("registries/open", OTHER).await.expect("files");
    assert!(files.iter().any(|f| f == "password") && files.iter().any(|f| f == "refresh"));
    assert_eq!(
        kind(core.list("registries/team", OTHER).await),
        ErrorKind::PermissionDenied
    );
}

#[tokio::test]
async fn metadata_changes_are_the_owners_and_the_tree_is_the_configs() {
    let core = Core::start().await;
    let key = core.lookup("secrets/app/key", OWNER).await.expect("key");
    let chmod = SetAttr {
        mode: true,
        ..SetAttr::default()
    };
    let unchanged = core.fs.setattr(key.ino, chmod, OWNER).await.expect("chmod");
    assert_eq!(
        unchanged.ownership, key.ownership,
        "modes come from the config"
    );
    assert_eq!(
        kind(core.fs.setattr(key.ino, chmod, OTHER).await),
        ErrorKind::NotPermitted
    );
    let bucket = core.lookup("projects/b", OWNER).await.expect("bucket").ino;
    assert_eq!(kind(core.fs.mkdir(bucket)), ErrorKind::NotPermitted);
    // One rule for names that are not UTF-8: never found, never made.
    let not_utf8 = OsStr::from_bytes(b"p\xff.zip");
    assert_eq!(
        kind(core.fs.lookup(bucket, not_utf8, OWNER).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(core.fs.create(bucket, not_utf8, OWNER).await),
        ErrorKind::InvalidInput
    );
    assert!(core.memory.names().is_empty());
}
