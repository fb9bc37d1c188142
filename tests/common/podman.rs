//! Real containers: rootful podman with the flags this kind of machine
//! needs (../shared/TESTING.md), each `Podman` with storage of its own, and
//! a busybox image built offline with umoci, once per process.
//!
//! Self-contained (std and tempfile only), so that benches can include it
//! with `#[path]` as well.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Tags in the image layout `image()` builds: `BUSYBOX` runs the command it
/// is given; `COPIER`'s entrypoint is `cp /src/build.zip /out/build.zip`.
pub const BUSYBOX: &str = "busybox";
pub const COPIER: &str = "copier";

/// The busybox that Debian's `busybox-static` installs.
const BUSYBOX_BIN: &str = "/bin/busybox";
/// The applets the image links to busybox.
const APPLETS: &[&str] = &["sh", "cat", "cp", "ls", "id", "true"];

fn require(program: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is not installed: run tests/run.sh, which installs what the tests need"
    );
}

fn checked(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// podman as root, confined to a scratch directory: its image and container
/// storage (vfs), its run root, its temporary directory and its locks
/// (file locks there, not the host-wide shared-memory segment), so that
/// parallel tests and other runs never see each other's images.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Podman {
        for program in ["podman", "runc"] {
            require(program);
        }
        let dir = tempfile::Builder::new()
            .prefix("credfs-podman-")
            .tempdir()
            .expect("a podman scratch directory");
        // crun and podman's default ulimits need CAP_SYS_RESOURCE, which a
        // root in a container lacks: no default ulimits, and runc.
        let conf = format!(
            "[containers]\ndefault_ulimits = []\n[engine]\nlock_type = \"file\"\nevents_logger = \"none\"\ntmp_dir = \"{}\"\n",
            dir.path().join("tmp").display()
        );
        fs::write(dir.path().join("containers.conf"), conf).expect("containers.conf");
        Podman { dir }
    }

    /// `podman ARGS` on this storage: the one place that knows podman's
    /// global flags. stdin is /dev/null.
    pub fn command(&self, args: &[&str]) -> Command {
        let scratch = self.dir.path();
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", scratch.join("containers.conf"))
            .arg("--root")
            .arg(scratch.join("root"))
            .arg("--runroot")
            .arg(scratch.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `podman ARGS` with `env` added, to completion.
    pub fn output(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args)
            .envs(env.iter().copied())
            .output()
            .expect("cannot run podman")
    }

    /// `podman run --rm --quiet --net=none ARGS`: a throwaway container
    /// with no network, its stderr free of podman's copying of the image.
    /// Its exit status is the container's, or 125-127 when podman itself
    /// failed.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_command(args).output().expect("cannot run podman")
    }

    /// What `run` runs, to spawn it.
    pub fn run_command(&self, args: &[&str]) -> Command {
        self.command(&[&["run", "--rm", "--quiet", "--net=none"], args].concat())
    }

    /// `podman pull --tls-verify=false --authfile AUTHFILE IMAGE` with `env`
    /// added (a plain-http registry on loopback).
    pub fn pull(&self, authfile: &Path, image: &str, env: &[(&str, &str)]) -> Output {
        let authfile = authfile.to_string_lossy();
        self.output(
            &["pull", "--tls-verify=false", "--authfile", &authfile, image],
            env,
        )
    }
}

/// `oci:LAYOUT:TAG` for one of the tags above, the layout built on first use
/// in this process.
pub fn image(tag: &str) -> String {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    let layout = LAYOUT.get_or_init(build_layout);
    format!("oci:{}:{tag}", layout.display())
}

/// Builds the image layout without a network: busybox-static's binary and
/// links to it in `/bin`, and a second tag whose entrypoint copies.
/// Statics are never dropped, so the layout lives in the target's tmpdir
/// under this process's id, and layouts of processes that are gone are
/// removed first.
fn build_layout() -> PathBuf {
    require("umoci");
    assert_static(Path::new(BUSYBOX_BIN));
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prefix = "credfs-image-";
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let bin = dir.join("rootfs/bin");
    fs::create_dir_all(&bin).expect("rootfs");
    fs::copy(BUSYBOX_BIN, bin.join("busybox")).expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let layout = dir.join("oci");
    let layout_s = layout.to_string_lossy();
    let busybox = format!("{layout_s}:{BUSYBOX}");
    checked("umoci", &["init", "--layout", &layout_s]);
    checked("umoci", &["new", "--image", &busybox]);
    checked(
        "umoci",
        &[
            "insert",
            "--image",
            &busybox,
            &bin.to_string_lossy(),
            "/bin",
        ],
    );
    let mut config = vec!["config", "--image", &busybox, "--tag", COPIER];
    for word in ["cp", "/src/build.zip", "/out/build.zip"] {
        config.extend(["--config.entrypoint", word]);
    }
    checked("umoci", &config);
    layout
}

/// The image has no libc: a dynamically linked busybox (Debian's `busybox`
/// rather than `busybox-static`) would not start in it. Checks that the ELF
/// file has no PT_INTERP program header.
fn assert_static(path: &Path) {
    let mut elf = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut elf))
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run tests/run.sh, which installs busybox-static",
                path.display()
            )
        });
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a little-endian 64-bit ELF file",
        path.display()
    );
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    let interpreted = (0..count).any(|i| {
        let at = phoff + i * size;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    });
    assert!(
        !interpreted,
        "{} is dynamically linked: install busybox-static (tests/run.sh does)",
        path.display()
    );
}
