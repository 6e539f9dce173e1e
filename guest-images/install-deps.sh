#!/usr/bin/env bash
# Installs every Debian package herd's build, tests and demo need, quietly
# and idempotently (only what is missing; nothing at all when everything is
# there). Needs root when something is missing. Used by guest-images/demo.sh
# and .ci/run. Rust itself (cargo) is not a Debian package here: Debian 12's
# is older than herd's minimum; install it with rustup.
#
#   guest-images/install-deps.sh          # install what is missing
#   guest-images/install-deps.sh --list   # print the package list
set -euo pipefail

packages=(
	# herd and the probe guests (gcc, make, as, objcopy, strip, ldd)
	build-essential binutils libc-bin
	# the guest kernel (guest-images/kernel/build.sh)
	linux-source-6.1 bc bison flex libelf-dev libssl-dev xz-utils
	# the base image and appliance disks (base/build.sh, herd disk create)
	busybox-static erofs-utils e2fsprogs cpio gzip
	# appliance images (herd image build: mmdebstrap from the host's apt sources)
	mmdebstrap
	# the emulated test host (testhost/build.sh: QEMU, cpio, module unpacking)
	qemu-system-x86 zstd
	# networks (herd net create, the network tests and the demo)
	iproute2 nftables
	# scripts (flock, sha256sum, ...)
	util-linux coreutils
)

if [ "${1:-}" = --list ]; then
	printf '%s\n' "${packages[@]}"
	exit 0
fi

log() { echo "install-deps: $*" >&2; }

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	log "all ${#packages[@]} Debian packages present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	log "error: missing ${missing[*]}; run as root (sudo $0) or: sudo apt-get install -y ${missing[*]}"
	exit 1
fi
command -v apt-get >/dev/null || {
	log "error: missing ${missing[*]} and no apt-get: this needs Debian 12 (or a derivative)"
	exit 1
}

log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Lock timeout: another apt (or a parallel build script) may be running.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 -qq "$@"; }
quiet() {
	local out
	if ! out=$("$@" 2>&1); then
		printf '%s\n' "$out" | tail -20 >&2
		return 1
	fi
}
# Stale or absent package lists: install straight away first, update only
# when that fails.
if ! quiet apt_get install -y --no-install-recommends "${missing[@]}"; then
	log "apt-get install failed; running apt-get update and retrying"
	quiet apt_get update
	quiet apt_get install -y --no-install-recommends "${missing[@]}" || {
		log "error: apt-get install ${missing[*]} failed (messages above)"
		exit 1
	}
fi
log "done"
