#!/usr/bin/env bash
# Build herd's minimal read-only base image from Debian's busybox-static:
#   ${HERD_CACHE:-$HOME/.cache/herd}/base/<key>/{base.erofs,initrd.cpio.gz}
# <key> = sha256 of this script, init, herd-power, herd-outb.c and the
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
key=$({
	for f in build.sh init herd-power herd-outb.c; do
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
mkdir -p "$root"
for d in bin sbin usr/bin usr/sbin etc root proc sys dev tmp run mnt var var/tmp; do
	mkdir -p "$root/$d"
done
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
install -m 0755 "$busybox" "$root/bin/busybox"
# One symlink per applet, at the path busybox itself reports.
while read -r applet; do
	case "$applet" in
	bin/busybox | sbin/init | linuxrc) continue ;;
	esac
	mkdir -p "$root/$(dirname "$applet")"
	ln -sfn /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)
install -m 0755 "$here/init" "$root/sbin/init"
ln -sfn /sbin/init "$root/init" # initramfs entry point (rdinit=/init)
install -m 0755 "$here/herd-power" "$root/sbin/herd-power"
for p in poweroff halt reboot; do
	rm -f "$root/sbin/$p" "$root/bin/$p" "$root/usr/sbin/$p"
	ln -s herd-power "$root/sbin/$p"
done
gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector \
	-fno-asynchronous-unwind-tables -fno-pie -no-pie -Wall \
	-Wl,--build-id=none -s -o "$root/sbin/herd-outb" "$here/herd-outb.c" ||
	die "compiling herd-outb.c failed (needs gcc; run: apt-get install -y gcc)"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat >"$root/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 0600 "$root/etc/shadow"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	herd
EOF
echo herd >"$root/etc/hostname"
printf 'Herd base (busybox %s)\n' "$bb_version" >"$root/etc/issue"
: >"$root/etc/fstab"

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
