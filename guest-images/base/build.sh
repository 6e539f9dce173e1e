#!/usr/bin/env bash
# Build herd's minimal read-only base image from Debian's busybox-static:
#   ${HERD_CACHE:-$HOME/.cache/herd}/base/<key>/{base.erofs,initrd.cpio.gz}
# <key> = sha256 of this script, every image file listed in $image_files and the
# busybox-static / erofs-utils package versions. A cache hit returns at once.
# The cache directory is printed as the LAST line of stdout; everything else
# goes to stderr:   dir=$(guest-images/base/build.sh | tail -1)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${HERD_CACHE:-$HOME/.cache/herd}/base

log() { echo "base/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- build dependencies (installed only when missing) -----------------------
need_pkgs=()
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
	need_pkgs+=(busybox-static)
command -v mkfs.erofs >/dev/null || need_pkgs+=(erofs-utils)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v gzip >/dev/null || need_pkgs+=(gzip)
command -v gcc >/dev/null || need_pkgs+=(gcc)
command -v sha256sum >/dev/null || need_pkgs+=(coreutils)
command -v flock >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
	command -v apt-get >/dev/null ||
		die "missing ${need_pkgs[*]} and no apt-get; install them by hand"
	[ "$(id -u)" = 0 ] ||
		die "missing ${need_pkgs[*]}; run: sudo apt-get install -y ${need_pkgs[*]}"
	log "installing ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${need_pkgs[@]}" >&2 ||
		{ apt-get update -qq >&2 && apt-get install -y -qq "${need_pkgs[@]}" >&2; } ||
		die "apt-get install ${need_pkgs[*]} failed"
fi
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox not found (package busybox-static); run: apt-get install -y busybox-static"
"$busybox" --list-full >/dev/null 2>&1 || die "$busybox has no --list-full; is it busybox-static?"

bb_version=$(dpkg-query -W -f='${Version}' busybox-static)
erofs_version=$(dpkg-query -W -f='${Version}' erofs-utils 2>/dev/null || mkfs.erofs --version 2>&1 | head -1)

# --- cache key ---------------------------------------------------------------
# Every file of this directory that ends up in the image; the key hashes
# them all, so a change to any of them rebuilds the image.
image_files="herd-root.sh init config.sh herd-power herd-reset-file herd-outb.c"
key=$({
	for f in build.sh $image_files; do
		printf '== %s\n' "$f"
		cat "$here/$f"
	done
	printf '== busybox-static %s\n== erofs-utils %s\n' "$bb_version" "$erofs_version"
} | sha256sum | cut -d' ' -f1)
out=$cache_root/$key

have() { [ -s "$out/base.erofs" ] && [ -s "$out/initrd.cpio.gz" ]; }
if have; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$key"
flock 9 # another build of the same key may be running: wait for it
if have; then
	echo "$out"
	exit 0
fi

work=$(mktemp -d "$cache_root/.work-XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
log "building base image $key (busybox-static $bb_version)"

# --- filesystem tree ----------------------------------------------------------
# The same script `herd image build` runs for every base (base.toml too).
mkdir -p "$root/bin"
install -m 0755 "$busybox" "$root/bin/busybox"
"$here/herd-root.sh" "$root" "$here" busybox

# Reproducible output: fixed mtimes, root ownership, sorted archive.
find "$root" -exec touch -h -d @0 {} +

# --- erofs --------------------------------------------------------------------
uuid=$(printf '%s' "$key" | cut -c1-32 |
	sed -E 's/(.{8})(.{4})(.{4})(.{4})(.{12})/\1-\2-\3-\4-\5/')
mkfs.erofs --quiet -zlz4hc -T0 -U "$uuid" --all-root \
	"$work/base.erofs" "$root" >&2 || die "mkfs.erofs failed"

# --- initramfs ----------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$work/initrd.cpio.gz"

# --- publish atomically ------------------------------------------------------
stage=$work/out
mkdir "$stage"
mv "$work/base.erofs" "$work/initrd.cpio.gz" "$stage/"
rm -rf "$out"
mv -T "$stage" "$out"
log "base.erofs $(($(stat -c %s "$out/base.erofs") / 1024)) KiB, initrd.cpio.gz $(($(stat -c %s "$out/initrd.cpio.gz") / 1024)) KiB"
echo "$out"
