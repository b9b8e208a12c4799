#!/usr/bin/env bash
# Compares `cove devcontainer config` with the reference CLI's `read-configuration` on
# corpus cases. Not part of CI (it needs npm and the reference package); run by hand:
#   crates/devcontainer/tests/compare-with-reference.sh [CASE...]
# Installs @devcontainers/cli into a temporary folder, copies each case to a temporary
# project folder (so both tools see the same real paths) and diffs the JSON, keys sorted,
# without the reference's `ociAuthDiagnostics`. A case whose config uses
# ${devcontainerId} differs by design: Cove substitutes it, the reference leaves it for `up`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
CORPUS=$ROOT/crates/devcontainer/tests/corpus
COVE=${COVE:-$ROOT/target/debug/cove}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm install --silent @devcontainers/cli >/dev/null)
if (($# == 0)); then
  # Cases the reference accepts as they are (no errors, no Cove-only policy).
  set -- $(cd "$CORPUS" && grep -L '^== error' */expected.snap | xargs -n1 dirname)
fi
match=0 differ=0
for c in "$@"; do
  cp -a "$CORPUS/$c" "$WORK/$c"
  rm -f "$WORK/$c/expected.snap" "$WORK/$c/case.json"
  (cd "$WORK" && npx devcontainer read-configuration --workspace-folder "$WORK/$c" 2>/dev/null) |
    jq -S 'del(.ociAuthDiagnostics)' >"$WORK/$c.ref.json" || true
  "$COVE" devcontainer config "$WORK/$c" 2>/dev/null | jq -S . >"$WORK/$c.cove.json" || true
  if diff -u "$WORK/$c.ref.json" "$WORK/$c.cove.json" >"$WORK/$c.diff"; then
    echo "match   $c"; match=$((match + 1))
  else
    echo "DIFFER  $c"; sed 's/^/    /' "$WORK/$c.diff" | head -20; differ=$((differ + 1))
  fi
done
echo "$match match, $differ differ"
