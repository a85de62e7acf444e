#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) each, seeding the corpora from the
# repository's own inputs. Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   bash scripts/fuzz.sh 60
# The same harnesses run on stable, bounded, in `cargo test --test fuzz_smoke`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
mkdir -p fuzz/corpus/policy_yaml fuzz/corpus/arm_body fuzz/corpus/planner
cp examples/kmsroutepolicy.yaml deploy/examples/*.yaml fuzz/corpus/policy_yaml/
python3 - <<'PY'
import json, glob, os
for f in glob.glob("tests/fixtures/arm/2024-03-01/examples/*.json"):
    body = json.load(open(f)).get("responses", {}).get("200", {}).get("body")
    if body is not None:
        open(os.path.join("fuzz/corpus/arm_body", os.path.basename(f)), "w").write(json.dumps(body))
PY
head -c 256 /dev/urandom > fuzz/corpus/planner/random-seed
cd fuzz
for target in policy_yaml arm_body planner; do
  echo "== $target: ${seconds}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -E "^(stat::|#[0-9]+ +DONE|==[0-9]+==|SUMMARY|Done )" || true
done
