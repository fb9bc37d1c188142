#!/usr/bin/env bash
# Installs everything the tests need (idempotently: only what is missing) and
# runs the whole suite: format, lints, unit and integration tests on real
# FUSE mounts with real clients and servers. Needs root (FUSE allow_other,
# setpriv, bwrap, unshare, podman).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root: the tests mount FUSE filesystems and switch users" >&2
    exit 1
fi

# command:package pairs, from Debian.
needed=(
    fusermount3:fuse3 bwrap:bubblewrap rsync:rsync zip:zip unzip:unzip
    docker-registry:docker-registry htpasswd:apache2-utils skopeo:skopeo umoci:umoci
    setpriv:util-linux unshare:util-linux pgrep:procps python3:python3
    systemd-analyze:systemd podman:podman runc:runc openssl:openssl
)
missing=()
for pair in "${needed[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# The test image is busybox-static's /bin/busybox, with no libc beside it;
# Debian's other `busybox` package installs a dynamic one under that name.
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] ||
    missing+=(busybox-static)
# Tests run python as other uids: Debian's, not a pyenv shim under /root.
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# moto serves the ECR API in the tests, azure-storage-blob creates Azurite
# containers, kubernetes-validate checks deploy/kubernetes against the
# Kubernetes schemas it ships, cryptography checks the JWT signatures in
# tests/token_servers.py; one venv outside the clone, reused.
venv=/var/cache/credfs/venv
if ! "$venv/bin/python" -c 'import moto.server, azure.storage.blob, kubernetes_validate, cryptography' >/dev/null 2>&1; then
    echo "tests/run.sh: installing moto[server], azure-storage-blob, kubernetes-validate and cryptography into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]' azure-storage-blob kubernetes-validate cryptography
fi
export CREDFS_MOTO_PYTHON="$venv/bin/python"
export CREDFS_KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"

# s3s-fs serves S3 in the tests (0.15+ needs a newer rustc than this one).
if [ ! -x /var/cache/credfs/bin/s3s-fs ]; then
    echo "tests/run.sh: installing s3s-fs"
    cargo install --quiet --root /var/cache/credfs --locked --features binary s3s-fs@0.14.1
fi
export CREDFS_S3S_FS=/var/cache/credfs/bin/s3s-fs

# Azurite serves Azure Blob Storage in the tests.
azurite=/var/cache/credfs/azurite
if [ ! -x "$azurite/node_modules/.bin/azurite-blob" ]; then
    echo "tests/run.sh: installing azurite"
    mkdir -p "$azurite"
    (cd "$azurite" && npm install --silent --no-audit --no-fund azurite)
fi
export CREDFS_AZURITE="$azurite/node_modules/.bin/azurite-blob"

[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "tests/run.sh: /dev/fuse is missing" >&2; exit 1; }

# One warm target directory outside the clone, reused across runs and clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/credfs/target}"
mkdir -p "$CARGO_TARGET_DIR"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
log="$CARGO_TARGET_DIR/credfs-test.log"
cargo test --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
