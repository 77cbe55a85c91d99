# Shared by the scripts in this directory: install what the platform needs.
# Sourced, not run.

set -euo pipefail

FAAS_CACHE=${FAAS_CACHE:-/var/cache/faas}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FAAS_CACHE/target}
export FAAS_IMAGES_DIR=${FAAS_IMAGES_DIR:-$FAAS_CACHE/images}

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root: sandboxes need namespaces, cgroups and runc"
}

# Debian packages the platform, its build and its tests use. Installed only
# when missing, each named explicitly: a package that only comes as another's
# recommendation (libprotobuf-dev, for protobuf-compiler) or that a machine
# happens to have must still be on this list. `./scripts/fresh-check` proves
# the list complete on a pristine Debian root.
install_packages() {
    # The sandboxes and their images; the test suite's Docker engine.
    local want=(runc mmdebstrap ca-certificates curl docker.io git)
    # mke2fs and mount's loop devices: code views and per-instance /tmp disks.
    want+=(e2fsprogs mount)
    # Egress policies: veth links (iproute2) and their rules (nftables).
    want+=(iproute2 nftables)
    # Building: a C toolchain for -sys crates (SQLite, zstd, lz4); the
    # Blueprint crates run tonic-build (protoc and the well-known .proto files)
    # and build RocksDB with bindgen (clang).
    want+=(build-essential pkg-config protobuf-compiler libprotobuf-dev cmake g++ libclang-dev)
    local missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing Debian packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# Rust >= 1.89 (rustup's, or Debian's when it is new enough).
check_rust() {
    if ! command -v cargo >/dev/null; then
        step "installing Debian's Rust toolchain"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q cargo rustc || true
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.89 (https://rustup.rs)"
    local v
    v=$(rustc --version | awk '{print $2}')
    [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | head -1)" = "1.89.0" ] \
        || die "Rust $v is too old: this workspace needs >= 1.89"
}

# Build images for every language (cached; rebuilt only when their recipe changes).
build_images() {
    local bin=$1
    shift
    step "runtime images in $FAAS_IMAGES_DIR (first build takes a minute or two)"
    "$bin/faas" images build --images-dir "$FAAS_IMAGES_DIR" --agent-path "$bin/faas-guest-agent" "$@"
}

# A dockerd of our own on its own socket, data and exec roots: the tests use it
# through FAAS_DOCKER_HOST, and stop_dockerd ends it.
DOCKER_SOCK=/run/faas-docker.sock
DOCKER_PID=/run/faas-docker.pid
start_dockerd() {
    stop_dockerd
    step "starting dockerd on $DOCKER_SOCK (log $FAAS_CACHE/dockerd.log)"
    mkdir -p "$FAAS_CACHE/docker"
    dockerd --host "unix://$DOCKER_SOCK" --data-root "$FAAS_CACHE/docker" \
        --exec-root /run/faas-docker --pidfile "$DOCKER_PID" \
        --iptables=false --ip6tables=false --bridge=none \
        >"$FAAS_CACHE/dockerd.log" 2>&1 &
    for _ in $(seq 1 150); do
        curl -fsS --unix-socket "$DOCKER_SOCK" http://docker/_ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS --unix-socket "$DOCKER_SOCK" http://docker/_ping >/dev/null \
        || { tail -20 "$FAAS_CACHE/dockerd.log" >&2; die "dockerd did not start"; }
    export FAAS_DOCKER_HOST=unix://$DOCKER_SOCK
}

stop_dockerd() {
    if [ -f "$DOCKER_PID" ] && kill -0 "$(cat "$DOCKER_PID")" 2>/dev/null; then
        local pid
        pid=$(cat "$DOCKER_PID")
        kill -TERM "$pid"
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$DOCKER_PID"
}

# QEMU (microvm machine) and vhost-device-vsock for the microVM sandbox. The
# latter comes from crates.io (~1.5 min to build) into a cached root, reused
# while present; the directory is added to PATH.
FAAS_CARGO_ROOT=${FAAS_CARGO_ROOT:-$FAAS_CACHE/cargo-root}
install_microvm_tools() {
    local missing=()
    for p in qemu-system-x86 e2fsprogs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing Debian packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [ ! -x "$FAAS_CARGO_ROOT/bin/vhost-device-vsock" ]; then
        step "installing vhost-device-vsock into $FAAS_CARGO_ROOT"
        CARGO_TARGET_DIR="$FAAS_CACHE/vhost-target" \
            cargo install vhost-device-vsock --locked --root "$FAAS_CARGO_ROOT"
    fi
    export PATH="$FAAS_CARGO_ROOT/bin:$PATH"
}

# cargo-fuzz (crates.io) for scripts/fuzz, into the same cached root.
install_cargo_fuzz() {
    if [ ! -x "$FAAS_CARGO_ROOT/bin/cargo-fuzz" ]; then
        step "installing cargo-fuzz into $FAAS_CARGO_ROOT"
        CARGO_TARGET_DIR="$FAAS_CACHE/cargo-fuzz-target" \
            cargo install cargo-fuzz --locked --root "$FAAS_CARGO_ROOT"
    fi
    export PATH="$FAAS_CARGO_ROOT/bin:$PATH"
}

# cargo-deny (crates.io), for the dependency policy in deny.toml.
install_cargo_deny() {
    if [ ! -x "$FAAS_CARGO_ROOT/bin/cargo-deny" ]; then
        step "installing cargo-deny into $FAAS_CARGO_ROOT"
        CARGO_TARGET_DIR="$FAAS_CACHE/cargo-deny-target" \
            cargo install cargo-deny --locked --root "$FAAS_CARGO_ROOT"
    fi
    export PATH="$FAAS_CARGO_ROOT/bin:$PATH"
}
