#!/usr/bin/env bash
# herd's fuzz targets under libFuzzer, on the stable toolchain.
#
#   tests/fuzz/fuzz.sh build                      instrumented build only
#   tests/fuzz/fuzz.sh run TARGET [SECONDS] [-- libFuzzer flags]
#                                                 one target; corpus grows in
#                                                 target/fuzz/corpus/TARGET
#   tests/fuzz/fuzz.sh smoke [SECONDS]            every target SECONDS each
#                                                 (CI: `cargo test` runs this)
#   tests/fuzz/fuzz.sh list
#
# Instrumentation is the SanitizerCoverage set cargo-fuzz uses for
# `--sanitizer none`, passed as stable `-C` flags: no nightly, no
# RUSTC_BOOTSTRAP, no cargo-fuzz binary needed. Crashes land in
# target/fuzz/artifacts/TARGET/; copy one into tests/fuzz/regressions/TARGET/
# and `cargo test -p herd-fuzz` replays it from then on.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${HERD_FUZZ_DIR:-$root/target/fuzz}
cargo=${CARGO:-cargo}
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$out/$triple/release

targets() {
  sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^herd-fuzz$' || true
}

build() {
  local flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    --cfg fuzzing
    -Cdebug-assertions
    -Coverflow-checks
  )
  # --target keeps the instrumentation out of build scripts and proc macros.
  # The workspace's release profile is tuned for the shipped binary (LTO,
  # one codegen unit): far too slow to build here, and not needed.
  RUSTFLAGS="${flags[*]}" \
  CARGO_PROFILE_RELEASE_LTO=false \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=${HERD_FUZZ_OPT_LEVEL:-2} \
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    "$cargo" build --release --manifest-path "$here/Cargo.toml" \
      --features libfuzzer --bins --target "$triple" --target-dir "$out"
}

# run TARGET SECONDS [libFuzzer flags...]
run() {
  local target=$1 secs=$2
  shift 2
  local corpus=$out/corpus/$target artifacts=$out/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  local seeds=() dir
  for dir in "$here/corpus/$target" "$here/regressions/$target"; do
    [ -d "$dir" ] && seeds+=("$dir")
  done
  # The checked-in corpus is read, never written: new inputs go to $corpus.
  "$bin_dir/$target" "$corpus" "${seeds[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$@"
}

case ${1:-} in
  build) build ;;
  list) targets ;;
  run)
    [ $# -ge 2 ] || { echo "usage: $0 run TARGET [SECONDS] [-- libFuzzer flags]" >&2; exit 2; }
    target=$2
    secs=${3:-600}
    shift $(( $# >= 3 ? 3 : 2 ))
    [ "${1:-}" = "--" ] && shift
    targets | grep -qx "$target" || { echo "no fuzz target $target; targets: $(targets | tr '\n' ' ')" >&2; exit 2; }
    build
    run "$target" "$secs" "$@"
    ;;
  smoke)
    secs=${2:-${HERD_FUZZ_SECONDS:-10}}
    build
    failed=()
    for target in $(targets); do
      echo "== fuzz smoke: $target for ${secs}s"
      if ! run "$target" "$secs" 2>"$out/$target.log"; then
        tail -n 40 "$out/$target.log" >&2
        failed+=("$target")
      else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|cov: ' "$out/$target.log" | tail -n 3
      fi
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzz smoke: FAILED: ${failed[*]} (inputs in $out/artifacts/)" >&2
      exit 1
    fi
    echo "fuzz smoke: all $(targets | wc -l) targets ran ${secs}s without a crash"
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
