#!/usr/bin/env bash
# herd's demo, from a fresh Debian 12 machine to two appliances talking:
#
#   guest-images/demo.sh      (as root, or as a user with sudo: it asks)
#
# 1. installs the Debian packages herd needs (guest-images/install-deps.sh)
# 2. builds herd (cargo build --release; Rust itself must come from rustup)
# 3. builds the guest kernel and the shared base image (herd image build
#    base; both cached; the first kernel build takes 5-10 minutes)
# 4. makes two appliance data disks: `web` (guest-images/personalities/web:
#    busybox httpd on 10.20.0.2) and `client` (10.20.0.3, knows `web` by name)
# 5. boots both on a bridge (herd net create) and has the client fetch
#    http://web/; if this machine's KVM cannot run Linux guests (herd
#    check-kvm), the same stack runs inside herd's emulated test host (QEMU
#    software emulation: slower, but it works anywhere)
#
# Ends with "demo: SUCCESS ..." and exit status 0. Scratch files go to a
# temporary directory (kept with HERD_DEMO_KEEP=1).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { echo "demo: $*"; }
die() {
	echo "demo: FAILED: $*" >&2
	exit 1
}
step() { echo; echo "demo: == $* =="; }
t0=$(date +%s)

# Root installs packages and creates a network bridge: a user with sudo gets
# it asked for here, so the same command works for root and for users.
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null ||
		die "run as root (it installs packages and creates a network bridge); sudo is not installed"
	say "not root: re-running under sudo"
	exec sudo --preserve-env=PATH,HERD_DEMO_KEEP,HERD_CACHE "$0" "$@"
fi

step "1/5 Debian packages"
"$repo/guest-images/install-deps.sh"

# Under sudo, build as the invoking user, so that target/ and the image cache
# (~/.cache/herd) are theirs and `cargo test` reuses them afterwards.
user_home=$HOME
as_user() { "$@"; }
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
	as_user() { sudo -u "$SUDO_USER" -H env "PATH=$PATH" "$@"; }
fi
export PATH="$user_home/.cargo/bin:$PATH"

step "2/5 herd (cargo build --release)"
if ! command -v cargo >/dev/null; then
	say "cargo not found; herd needs Rust 1.85 or newer from rustup (Debian's is too old)"
	if ! command -v curl >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends \
			curl ca-certificates >/dev/null 2>&1 || true
	fi
	if curl -sSfI --max-time 10 https://static.rust-lang.org >/dev/null 2>&1; then
		say "installing Rust with rustup (https://rustup.rs) for ${SUDO_USER:-root}"
		curl -sSf --max-time 300 https://sh.rustup.rs | as_user sh -s -- -y --profile minimal -q ||
			die "rustup failed"
	else
		die "no cargo and no internet to fetch rustup: install Rust (https://rustup.rs, 1.85 or newer) and run this again"
	fi
fi
say "building herd (a minute or two the first time)"
(cd "$repo" && as_user cargo build --release --quiet) || die "cargo build --release failed"
herd=$repo/target/release/herd
say "built $herd ($("$herd" --version))"

work=$(mktemp -d "${TMPDIR:-/tmp}/herd-demo.XXXXXX")
if [ -n "${HERD_DEMO_KEEP:-}" ]; then
	say "keeping $work"
else
	trap 'rm -rf "$work"' EXIT
fi

step "3/5 guest kernel and base image (cached after the first build)"
say "guest kernel: guest-images/kernel/build.sh (the first build takes 5-10 minutes)"
kernel_dir=$(as_user bash "$repo/guest-images/kernel/build.sh" | tail -1)
# The base image is the `base` example image (busybox), built with `herd
# image build` like any appliance image (README, "Appliance images"), into
# a scratch image store: the user's own store is left alone.
store=$work/store
say "base image: herd image build base (into $store)"
HERD_HOME=$store HERD_CACHE=${HERD_CACHE:-$user_home/.cache/herd} "$herd" image build -q base ||
	die "herd image build base failed (messages above)"
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	chown -R "$SUDO_USER:" "${HERD_CACHE:-$user_home/.cache/herd}/rootfs"
fi
kernel=$kernel_dir/vmlinux
base=$store/images/base/1/image.erofs
[ -f "$kernel" ] && [ -f "$base" ] || die "kernel or base image missing ($kernel, $base)"
say "kernel $kernel"
say "base   $base"
if kvm=$("$herd" check-kvm 2>&1); then
	emulated=
	say "herd check-kvm: this machine's KVM runs Linux guests"
else
	emulated=1
	say "herd check-kvm: ${kvm#herd: error: }"
	say "so the demo runs in herd's emulated test host; building it (guest-images/testhost/build.sh)"
	testhost=$(as_user bash "$repo/guest-images/testhost/build.sh" | tail -1)
	[ -f "$testhost/base.cpio" ] || die "the test host build failed (messages above)"
	export HERD_TESTHOST_DIR=$testhost
	say "test host $testhost"
fi

step "4/5 appliance disks"
web_src=$repo/guest-images/personalities/web
if [ ! -f "$web_src/config/services" ]; then
	# The example personality is missing (older checkout): a minimal one.
	web_src=$work/web-personality
	mkdir -p "$web_src/config" "$web_src/data/www"
	echo web >"$web_src/config/hostname"
	printf 'ADDRESS=10.20.0.2/24\nGATEWAY=10.20.0.1\n' >"$web_src/config/network"
	echo 'httpd busybox httpd -f -p 80 -h /data/www' >"$web_src/config/services"
	echo '<h1>Hello from a herd appliance</h1>' >"$web_src/data/www/index.html"
fi
# The client: the web personality with another name and address, no
# services, and `web` in its hosts file.
client_src=$work/client-personality
cp -a "$web_src" "$client_src"
rm -rf "$client_src/data/www" "$client_src/config/etc"
echo client >"$client_src/config/hostname"
printf 'ADDRESS=10.20.0.3/24\nGATEWAY=10.20.0.1\n' >"$client_src/config/network"
printf '10.20.0.1\tgateway\n10.20.0.2\tweb\n' >"$client_src/config/hosts"
: >"$client_src/config/services"
"$herd" disk create --from "$web_src" --size 64M "$work/web.img"
"$herd" disk create --from "$client_src" --size 16M "$work/client.img"
expected=$(grep -o '<h1>.*</h1>' "$web_src/data/www/index.html" | head -1)
[ -n "$expected" ] || expected="<h1>"

# The stack, for bash on this host or busybox sh in the emulated host:
# stack.sh HERD KERNEL BASE WEB_IMG CLIENT_IMG LOGDIR
cat >"$work/stack.sh" <<'EOF'
set -u
herd=$1 kernel=$2 base=$3 web=$4 client=$5 logs=$6
net=herd-demo
# busybox sh (the emulated host) runs its own `ip` applet, which cannot make
# TAPs, before any on PATH; the emulated host has iproute2's here.
ip=ip
[ -x /usr/local/bin/ip ] && ip=/usr/local/bin/ip
say() { echo "demo: $*"; }
cleanup() {
	[ -n "${web_pid:-}" ] && kill "$web_pid" 2>/dev/null && wait "$web_pid" 2>/dev/null
	$ip link del tap-demo-web 2>/dev/null
	$ip link del tap-demo-cli 2>/dev/null
	"$herd" net rm "$net" >/dev/null 2>&1
}
trap cleanup EXIT
cleanup
# The README's three commands: a bridge, then each appliance's TAP on it
# (herd creates the TAP, brings it up and attaches it).
"$herd" net create "$net" --subnet 10.20.0.1/24 || exit 1
say "booting web (10.20.0.2, busybox httpd), console in $logs/web.log"
"$herd" run --name web --kernel "$kernel" --root "$base" --disk "$web" \
	--net "tap=tap-demo-web,bridge=$net" --mem 128 --console "file:$logs/web.log" --log-level warn &
web_pid=$!
i=0
until grep -q 'herd-init: ready' "$logs/web.log" 2>/dev/null; do
	i=$((i + 1))
	if [ $i -gt 120 ] || ! kill -0 "$web_pid" 2>/dev/null; then
		say "web did not come up; its console:"
		tail -30 "$logs/web.log" 2>/dev/null
		exit 1
	fi
	sleep 1
done
grep -m1 'herd-init: ready' "$logs/web.log" | tr -d '\r'
say "booting client (10.20.0.3): wget -qO- http://web/"
"$herd" run --name client --kernel "$kernel" --root "$base" --disk "$client" \
	--net "tap=tap-demo-cli,bridge=$net" --mem 128 --console "file:$logs/client.log" --log-level warn \
	--cmdline "herd.run=\"for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO /tmp/page http://web/ && break; sleep 1; done; echo page-begin; cat /tmp/page; echo page-end\""
rc=$?
sed -n '/^page-begin/,/^page-end/p' "$logs/client.log" | tr -d '\r' | sed '1d;$d' >"$logs/page.html"
say "client exited $rc; web's access log:"
grep 'httpd:.*GET\|response:' "$logs/web.log" | tr -d '\r' | tail -3
say "the page the client got:"
cat "$logs/page.html"
say "stopping web (SIGTERM: herd stops the VM) and removing the network"
kill "$web_pid" && wait "$web_pid"
say "web's herd exited $?"
web_pid=
[ "$rc" = 0 ] && [ -s "$logs/page.html" ]
EOF

step "5/5 the appliance stack"
if [ -z "$emulated" ]; then
	say "booting the stack on this machine's KVM"
	bash "$work/stack.sh" "$herd" "$kernel" "$base" "$work/web.img" "$work/client.img" "$work" |
		tee "$work/stack.out" || die "the stack failed (output above)"
else
	say "booting the stack inside herd's emulated test host (herd emulated-host: QEMU"
	say "software emulation with nested KVM; slower, but it works anywhere)"
	# The kernel goes in as a file (herd loads it from a path); the images
	# are attached in place as drives.
	"$herd" emulated-host --file "$kernel" --drive "$base:ro" \
		--drive "$work/web.img" --drive "$work/client.img" --mem 1024 -- \
		"$work/stack.sh" herd "/emu/$(basename "$kernel")" "/emu/$(basename "$base")" \
		/emu/web.img /emu/client.img /tmp | tee "$work/stack.out" ||
		die "the stack failed in the emulated host (output above; add --log-level debug to herd emulated-host in $0 for its console)"
fi
grep -qF "$expected" "$work/stack.out" || die "the client's page does not contain $expected"

echo
say "SUCCESS: the client appliance fetched http://web/ from the web appliance ($(($(date +%s) - t0)) s)"
