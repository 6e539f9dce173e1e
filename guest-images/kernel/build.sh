#!/usr/bin/env bash
# Build herd's guest kernel (Linux 6.1 from Debian's linux-source-6.1) with
# the checked-in config-6.1-x86_64:
#   ${HERD_CACHE:-$HOME/.cache/herd}/kernel/<key>/{vmlinux,bzImage,config}
# <key> = sha256 of config-6.1-x86_64, herd.fragment, this script and the
# linux-source-6.1 package version. A cache hit returns at once.
# The cache directory is printed as the LAST line of stdout; everything else
# goes to stderr:   dir=$(guest-images/kernel/build.sh | tail -1)
#
#   build.sh                 build (or reuse) the kernel
#   build.sh --regen-config  rewrite config-6.1-x86_64 from herd.fragment
#                            (allnoconfig + fragment), then exit
#
# Env: HERD_CACHE (cache root), HERD_KEEP_KERNEL_BUILD=1 (keep the build tree
# for debugging; its path is logged), KCFLAGS (passed to make).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config=$here/config-6.1-x86_64
fragment=$here/herd.fragment
tarball=/usr/src/linux-source-6.1.tar.xz
cache_root=${HERD_CACHE:-$HOME/.cache/herd}/kernel

log() { echo "kernel/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

mode=build
case "${1:-}" in
"") ;;
--regen-config) mode=regen ;;
*) die "unknown argument '$1' (usage: build.sh [--regen-config])" ;;
esac

[ -r "$config" ] || die "missing $config"
[ -r "$fragment" ] || die "missing $fragment"

# --- build dependencies (installed only when missing) -----------------------
need_pkgs=()
command -v gcc >/dev/null && command -v make >/dev/null || need_pkgs+=(build-essential)
command -v bc >/dev/null || need_pkgs+=(bc)
command -v bison >/dev/null || need_pkgs+=(bison)
command -v flex >/dev/null || need_pkgs+=(flex)
[ -e /usr/include/gelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/openssl/opensslv.h ] || need_pkgs+=(libssl-dev)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v perl >/dev/null || need_pkgs+=(perl)
command -v readelf >/dev/null || need_pkgs+=(binutils)
command -v flock >/dev/null || need_pkgs+=(util-linux)
[ -r "$tarball" ] || need_pkgs+=(linux-source-6.1)
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
[ -r "$tarball" ] || die "$tarball not found after installing linux-source-6.1"
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) ||
	die "cannot read the linux-source-6.1 package version (dpkg-query)"

# check_config FILE: every option the fragment asks for must be in FILE
# exactly (Kconfig silently drops options whose dependencies are missing).
check_config() {
	local line bad=0
	while IFS= read -r line; do
		case "$line" in '' | '#'*) continue ;; esac
		if ! grep -qxF -- "$line" "$1"; then
			log "config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$1" || echo unset)'"
			bad=1
		fi
	done <"$fragment"
	# "is not set" lines in the fragment must not come back as =y.
	while IFS= read -r line; do
		local opt=${line#\# }
		opt=${opt%% is not set}
		if grep -q "^$opt=" "$1"; then
			log "config: wanted '$line', got '$(grep "^$opt=" "$1")'"
			bad=1
		fi
	done < <(grep -E '^# CONFIG_[A-Z0-9_]+ is not set$' "$fragment")
	return $bad
}

# extract_source DIR: unpack the kernel source tree into DIR.
extract_source() {
	log "extracting $tarball ($src_version)"
	mkdir -p "$1"
	tar -xJf "$tarball" -C "$1" --strip-components=1 ||
		die "extracting $tarball failed"
}

mkdir -p "$cache_root"

if [ "$mode" = regen ]; then
	work=$(mktemp -d "$cache_root/.regen-XXXXXX")
	trap 'rm -rf "$work"' EXIT
	extract_source "$work/src"
	(cd "$work/src" &&
		ARCH=x86_64 scripts/kconfig/merge_config.sh -n "$fragment" >&2) ||
		die "merge_config.sh failed"
	check_config "$work/src/.config" ||
		die "Kconfig dropped options (see above): fix their dependencies in $fragment"
	cp "$work/src/.config" "$config"
	log "wrote $config"
	exit 0
fi

# --- cache key ---------------------------------------------------------------
key=$({
	for f in "$config" "$fragment" "$here/build.sh"; do
		printf '== %s\n' "${f##*/}"
		cat "$f"
	done
	printf '== linux-source-6.1 %s\n' "$src_version"
} | sha256sum | cut -d' ' -f1)
out=$cache_root/$key

have() { [ -s "$out/vmlinux" ] && [ -s "$out/bzImage" ]; }
if have; then
	echo "$out"
	exit 0
fi

exec 9>"$cache_root/.lock-$key"
flock 9 # another build of the same key may be running: wait for it
if have; then
	echo "$out"
	exit 0
fi

work=$(mktemp -d "$cache_root/.work-XXXXXX")
if [ "${HERD_KEEP_KERNEL_BUILD:-0}" = 1 ]; then
	log "keeping build tree $work"
else
	trap 'rm -rf "$work"' EXIT
fi
src=$work/src
extract_source "$src"
cp "$config" "$src/.config"

jobs=$(nproc 2>/dev/null || echo 2)
buildlog=$work/build.log
# Reproducible build metadata: the source tree's own date, fixed user/host.
stamp=$(date -u -d "@$(stat -c %Y "$src/Makefile")")
mk() {
	make -C "$src" ARCH=x86_64 -j"$jobs" \
		KBUILD_BUILD_USER=herd KBUILD_BUILD_HOST=herd \
		KBUILD_BUILD_TIMESTAMP="$stamp" "$@" >>"$buildlog" 2>&1
}
mk olddefconfig || { tail -n 50 "$buildlog" >&2; die "make olddefconfig failed"; }
check_config "$src/.config" ||
	die "the kernel config lost options (see above); regenerate it: $0 --regen-config"

log "building vmlinux + bzImage with $jobs jobs (log: $buildlog)"
start=$(date +%s)
if ! mk vmlinux bzImage; then
	tail -n 60 "$buildlog" >&2
	trap - EXIT
	die "kernel build failed; full log and tree kept in $work"
fi
log "built in $(($(date +%s) - start))s"

readelf -n "$src/vmlinux" 2>/dev/null | grep -q 'Xen' ||
	die "vmlinux has no Xen PVH ELF note (is CONFIG_PVH=y?)"

stage=$work/out
mkdir "$stage"
cp "$src/vmlinux" "$stage/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$src/.config" "$stage/config"
rm -rf "$out"
mv -T "$stage" "$out"
log "vmlinux $(($(stat -c %s "$out/vmlinux") / 1024)) KiB, bzImage $(($(stat -c %s "$out/bzImage") / 1024)) KiB"
echo "$out"
