#!/usr/bin/env bash
# Builds the herd test host: Debian's cloud kernel (+ the KVM, virtio-blk,
# tun and bridge modules) and a base initramfs (static busybox + /init), for
# running herd under QEMU TCG with an emulated AMD-V CPU. Used by the tests
# (tests/support/testhost.rs) and by `herd run --emulated-host` / `herd
# emulated-host` (src/emulated_host/).
#
# Output: the cache directory, as the LAST line of stdout; everything else
# goes to stderr. The directory holds:
#   vmlinuz      the test host's kernel (also usable as a guest bzImage)
#   base.cpio    newc initramfs; per-run files are appended as a 2nd archive
#   versions     what went in (package versions), for reports
# Cached in ${HERD_CACHE:-$HOME/.cache/herd}/testhost/<key>, key = sha256 of
# these scripts + the package versions the archive serves today.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "testhost/build: $*" >&2; }
die() { log "error: $*"; exit 1; }

apt_quiet() {
	# Lock timeout: other builds on this machine may be running apt too.
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq "$@" >&2
}

# Host tools: only QEMU and cpio are installed into the host; the kernel and
# busybox are only downloaded and unpacked into the cache.
# The test host's kernel: Debian's cloud flavour, apt's candidate (bookworm
# with its security updates), or from the suite HERD_TESTHOST_KERNEL_SUITE.
kernel_suite=${HERD_TESTHOST_KERNEL_SUITE:-}

need_install=()
command -v qemu-system-x86_64 >/dev/null || need_install+=(qemu-system-x86)
command -v cpio >/dev/null || need_install+=(cpio)
command -v dpkg-deb >/dev/null || die "dpkg-deb missing: this script needs a Debian-based host"
if [ ${#need_install[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing ${need_install[*]} and not root to apt-get install them"
	log "installing ${need_install[*]}"
	apt_quiet update
	apt_quiet install -y --no-install-recommends "${need_install[@]}"
fi

# Resolve the kernel flavour's current ABI package (linux-image-cloud-amd64
# depends on linux-image-6.x.0-NN-cloud-amd64): never pinned, so the test host
# follows Debian's updates. From $kernel_suite (see the comment there).
resolve() {
	local meta
	if [ -z "$kernel_suite" ]; then
		kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
			awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
		[ -n "$kpkg" ] || return 1
		kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2 }')
		bver=$(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }')
		[ -n "$kver" ] && [ "$kver" != "(none)" ] && [ -n "$bver" ] && [ "$bver" != "(none)" ]
		return
	fi
	meta=$(apt-cache madison linux-image-cloud-amd64 2>/dev/null |
		awk -v s="$kernel_suite" '$0 ~ " "s"/" { print $3; exit }')
	[ -n "$meta" ] || return 1
	kpkg=$(apt-cache show "linux-image-cloud-amd64=$meta" 2>/dev/null |
		awk -F'[ ,]+' '/^Depends:/ { for (i = 2; i <= NF; i++) if ($i ~ /^linux-image-[0-9]/) { print $i; exit } }')
	[ -n "$kpkg" ] || return 1
	kver=$(apt-cache madison "$kpkg" 2>/dev/null | awk -v s="$kernel_suite" '$0 ~ " "s"/" { print $3; exit }')
	bver=$(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }')
	[ -n "$kver" ] && [ -n "$bver" ] && [ "$bver" != "(none)" ]
}
if ! resolve; then
	log "apt lists lack the packages; running apt-get update"
	apt_quiet update
	resolve || die "cannot resolve linux-image-cloud-amd64 (${kernel_suite:-candidate}) / busybox-static from apt;" \
		"is $kernel_suite in apt's sources? guest-images/install-deps.sh adds it"
fi

key=$(cat "$here/build.sh" "$here/init" "$here/lib.sh" "$here/kvm-hold.c" - <<<"$kpkg=$kver busybox-static=$bver" |
	sha256sum | cut -c1-16)
root=${HERD_CACHE:-$HOME/.cache/herd}/testhost
out=$root/$key
if [ -f "$out/done" ]; then
	touch "$out/done" 2>/dev/null || true
	echo "$out"
	exit 0
fi

mkdir -p "$root"
# Serialize concurrent builds (parallel test binaries); re-check under lock.
exec 9>"$root/.lock"
flock 9
if [ -f "$out/done" ]; then
	echo "$out"
	exit 0
fi

log "building $kpkg $kver + busybox-static $bver into $out"
work=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt-get download writes into the cwd; run as root, apt warns that its _apt
# sandbox user cannot write here, which is harmless.
if ! apt-get -qq -o APT::Sandbox::User=root download "$kpkg=$kver" "busybox-static=$bver" >&2; then
	# Stale apt lists name versions the archive no longer serves: refresh
	# them and start over once (the key may change with the versions).
	[ -z "${HERD_TESTHOST_RETRY:-}" ] || die "apt-get download failed after apt-get update"
	log "download failed; running apt-get update and retrying"
	apt_quiet update
	cd / && rm -rf "$work"
	HERD_TESTHOST_RETRY=1 exec bash "$here/build.sh"
fi
dpkg-deb -x "$kpkg"_*.deb pkg
dpkg-deb -x busybox-static_*.deb pkg

rfs=$work/rootfs
mkdir -p "$rfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,dev,proc,sys,tmp,run,lib/testhost-modules}
cp pkg/bin/busybox "$rfs/bin/busybox"
cp "$here/init" "$rfs/init"
cp "$here/lib.sh" "$rfs/etc/testhost-lib.sh"
chmod 755 "$rfs/init" "$rfs/bin/busybox"
# Freestanding (no libc), a few KiB: see kvm-hold.c for why it exists.
command -v gcc >/dev/null || die "needs gcc to build kvm-hold (run: apt-get install -y gcc)"
gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector \
	-fno-asynchronous-unwind-tables -fno-pie -no-pie -Wall -Werror \
	-Wl,--build-id=none -s -o "$rfs/bin/kvm-hold" "$here/kvm-hold.c" ||
	die "compiling kvm-hold.c failed"
ln -s busybox "$rfs/bin/sh"
# A console node for the kernel to open before /init mounts devtmpfs
# (possible only as root; /init copes without it).
mknod -m 600 "$rfs/dev/console" c 5 1 2>/dev/null || true

cp pkg/boot/vmlinuz-* "$work/vmlinuz"
moddir=$(echo pkg/lib/modules/*)
# KVM; virtio-pci + virtio-blk for disks QEMU attaches (`herd run
# --emulated-host` passes images as drives; Debian's cloud kernel has them as
# modules); tun + bridge for guest networks inside the test host. /init
# loads them in this order (dependencies first).
modules="virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd
	drivers/virtio/virtio_ring drivers/virtio/virtio
	drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci_modern_dev
	drivers/virtio/virtio_pci drivers/block/virtio_blk
	drivers/net/tun net/llc/llc net/802/stp net/bridge/bridge"
for m in $modules; do
	name=$(basename "$m")
	src=
	for f in "$moddir/kernel/$m".ko*; do [ -e "$f" ] && src=$f && break; done
	if [ -z "$src" ]; then
		# Built into this kernel: /init skips modules it does not find.
		grep -q "^kernel/$m.ko" "$moddir/modules.builtin" || die "module $m not in $kpkg"
		continue
	fi
	# busybox insmod loads plain ELF only: decompress here.
	case "$src" in
	*.ko.xz) xz -dc "$src" >"$rfs/lib/testhost-modules/$name.ko" ;;
	*.ko.zst) zstd -qdc "$src" >"$rfs/lib/testhost-modules/$name.ko" ;;
	*.ko.gz) gzip -dc "$src" >"$rfs/lib/testhost-modules/$name.ko" ;;
	*) cp "$src" "$rfs/lib/testhost-modules/$name.ko" ;;
	esac
done

# Uncompressed: under TCG, unpacking is faster than inflating.
(cd "$rfs" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0 --reproducible) >"$work/base.cpio"
printf '%s %s\nbusybox-static %s\n' "$kpkg" "$kver" "$bver" >"$work/versions"

mkdir -p "$out"
mv "$work/vmlinuz" "$work/base.cpio" "$work/versions" "$out/"
touch "$out/done"
# Builds for other keys unused for over a week (older scripts or packages;
# other checkouts of herd sharing this cache keep theirs while they use them:
# every use touches "done").
for d in "$root"/*/; do
	d=${d%/}
	[ "$d" != "$out" ] && [ -f "$d/done" ] || continue
	[ -n "$(find "$d/done" -mtime -7 2>/dev/null)" ] || rm -rf "$d"
done
log "done"
echo "$out"
