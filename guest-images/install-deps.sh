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
	# tests/vm_hostile.rs: a TAP flood from a network namespace
	python3
)

# From Debian's bookworm-backports suite (newer than bookworm's, installed
# with -t bookworm-backports); the suite is added to apt's sources if
# missing, on the same mirror as the host's bookworm entry. The test host's
# kernel also comes from there (testhost/build.sh downloads it).
backports_suite=bookworm-backports
backports_packages=()

if [ "${1:-}" = --list ]; then
	printf '%s\n' "${packages[@]}"
	for p in "${backports_packages[@]}"; do echo "$p/$backports_suite"; done
	exit 0
fi

log() { echo "install-deps: $*" >&2; }

# The mirror the host gets bookworm from: the first URI of a deb822 stanza
# or a one-line entry whose suites include plain "bookworm".
debian_mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk '
			/^[[:space:]]*$/ { if (uri != "" && suite) found = uri; uri = ""; suite = 0; next }
			/^URIs:/ { uri = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
			END { if (found == "" && uri != "" && suite) found = uri; if (found != "") print found }
		' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		awk '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; s = ($2 ~ /^\[/) ? $4 : $3; if (s == "bookworm") print u }' "$f"
	done
}

have_backports() {
	grep -rqs "$backports_suite" /etc/apt/sources.list /etc/apt/sources.list.d/
}

# Adds bookworm-backports (main) to apt's sources; returns 1 if it cannot.
add_backports() {
	have_backports && return 0
	local mirror
	mirror=$(debian_mirror | head -n 1)
	if [ -z "$mirror" ]; then
		log "error: no bookworm entry in /etc/apt/sources.list{,.d} to take the mirror from; add $backports_suite (main) to apt's sources"
		return 1
	fi
	if [ "$(id -u)" != 0 ]; then
		log "error: $backports_suite is not in apt's sources; run as root (sudo $0) to add it"
		return 1
	fi
	log "adding $backports_suite from $mirror to apt's sources"
	cat >/etc/apt/sources.list.d/herd-backports.sources <<-SRC
		# Added by herd's guest-images/install-deps.sh (the test host's kernel).
		Types: deb
		URIs: $mirror
		Suites: $backports_suite
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	SRC
	apt-get -o DPkg::Lock::Timeout=600 -qq update >&2
}

add_backports || exit 1
# Backports packages: installed unless already at the suite's version.
for p in "${backports_packages[@]}"; do
	want=$(apt-cache madison "$p" | awk -v s="$backports_suite" '$0 ~ s"/" { print $3; exit }')
	have=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
	[ -n "$want" ] || { log "error: $p not in $backports_suite (apt-get update?)"; exit 1; }
	[ "$have" = "$want" ] && continue
	[ "$(id -u)" = 0 ] || { log "error: $p $want from $backports_suite missing; run as root"; exit 1; }
	log "installing $p $want from $backports_suite"
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq install -y \
		--no-install-recommends -t "$backports_suite" "$p" >&2
done

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
