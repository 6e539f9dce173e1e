#!/usr/bin/env bash
# herd's demo, from a fresh Debian 12 machine to an appliance stack (`herd up`):
#
#   guest-images/demo.sh      (as root, or as a user with sudo: it asks)
#
# 1. installs the Debian packages herd needs (guest-images/install-deps.sh)
# 2. builds herd (cargo build --release; Rust itself must come from rustup)
# 3. builds the guest kernel and the images the example stack uses (herd
#    image build base and redis; all cached; the first kernel build takes
#    5-10 minutes)
# 4. runs `herd up` on the example stack (guest-images/stacks/demo/herd.toml:
#    web = busybox httpd, redis, and a client that fetches http://web/ and
#    counts a visit in redis; one bridge, one data disk each, a hosts file),
#    shows `herd ps` and the client's output, then `herd down`. If this
#    machine's KVM cannot run Linux guests (herd check-kvm), the stack runs
#    inside herd's emulated test host (QEMU software emulation: slower, but
#    it works anywhere)
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

step "1/4 Debian packages"
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

step "2/4 herd (cargo build --release)"
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

step "3/4 guest kernel and images (cached after the first build)"
say "guest kernel: guest-images/kernel/build.sh (the first build takes 5-10 minutes)"
kernel_dir=$(as_user bash "$repo/guest-images/kernel/build.sh" | tail -1)
# The example stack's images, built with `herd image build` like any
# appliance image (README, "Appliance images"), into a scratch image store:
# the user's own store is left alone.
store=$work/store
for image in base redis; do
	say "image: herd image build $image (into $store)"
	HERD_HOME=$store HERD_CACHE=${HERD_CACHE:-$user_home/.cache/herd} "$herd" image build -q "$image" ||
		die "herd image build $image failed (messages above)"
done
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	chown -R "$SUDO_USER:" "${HERD_CACHE:-$user_home/.cache/herd}/rootfs"
fi
[ -f "$kernel_dir/vmlinux" ] || die "guest kernel missing ($kernel_dir/vmlinux)"
HERD_HOME=$store "$herd" image ls | sed 's/^/demo: /'
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

step "4/4 the example stack: herd up"
# A copy of the stack and the personality it uses, so its disks and state
# (.herd/, herd.state.json) land in the scratch directory.
mkdir -p "$work/guest/stacks" "$work/guest/personalities"
cp -a "$repo/guest-images/stacks/demo" "$work/guest/stacks/"
cp -a "$repo/guest-images/personalities/web" "$work/guest/personalities/"
rm -rf "$work/guest/stacks/demo/.herd" "$work/guest/stacks/demo/herd.state.json"
expected=$(grep -o '<h1>.*</h1>' "$work/guest/personalities/web/data/www/index.html" | head -1)
[ -n "$expected" ] || expected="<h1>"

# The stack's commands, for bash on this host or busybox sh in the emulated
# host: stack.sh HERD STACK_DIR IMAGE_STORE
cat >"$work/stack.sh" <<'EOF'
set -u
herd=$1
export HERD_HOME=$3
cd "$2" || exit 1
say() { echo "demo: $*"; }
say "herd up -d   (network, disks, hosts file; web and redis healthy; the client runs)"
"$herd" up -d || { "$herd" down >/dev/null 2>&1; exit 1; }
say "herd ps"
"$herd" ps
i=0
until "$herd" ps -a | grep -q '^demo-client .*exited' || [ $i -gt 300 ]; do sleep 1; i=$((i + 1)); done
say "herd logs demo-client   (it fetched http://web/ and counted a visit in redis)"
"$herd" logs demo-client | tr -d '\r' | grep -E '<h1>|visits=' | tee client.out
say "herd down"
"$herd" down
grep -q 'visits=' client.out && grep -q '<h1>' client.out
EOF

if [ -z "$emulated" ]; then
	say "running the stack on this machine's KVM"
	bash "$work/stack.sh" "$herd" "$work/guest/stacks/demo" "$store" |
		tee "$work/stack.out" || die "the stack failed (output above)"
else
	say "running the stack inside herd's emulated test host (herd emulated-host: QEMU"
	say "software emulation with nested KVM; slower, but it works anywhere)"
	# Every file goes in at its place under /guest and /store.
	files=()
	while IFS= read -r f; do
		files+=(--file "$f:${f#"$work"}")
	done < <(find "$work/guest" "$store/images" "$store/kernels" -type f)
	"$herd" emulated-host "${files[@]}" --mem 2048 -- \
		"$work/stack.sh" herd /guest/stacks/demo /store | tee "$work/stack.out" ||
		die "the stack failed in the emulated host (output above; add --log-level debug to herd emulated-host in $0 for its console)"
fi
grep -qF "$expected" "$work/stack.out" || die "the client's page does not contain $expected"
grep -q 'visits=' "$work/stack.out" || die "the client did not reach redis"

echo
say "SUCCESS: herd up started the example stack; the client appliance fetched http://web/ and counted a visit in redis ($(($(date +%s) - t0)) s)"
