# Sourced by scripts/test-real-codex and scripts/test-browser: runs the #[ignore]d tests of
# one test file (they need more than the Rust toolchain), prints `N passed, M failed` last,
# and returns non-zero on any failure (a suite that did not run counts as one failure).
#
# usage: run_ignored_suite <test file name> [cargo test arguments after --]
run_ignored_suite() {
  local name="$1"
  shift
  local out status=0 summary passed failed
  out="$(mktemp)"
  # The stand-ins are example binaries; a filtered `cargo test` does not build them.
  cargo build --examples --quiet || status=$?
  cargo test --test "$name" -- --ignored "$@" 2>&1 | tee "$out" || status=$?
  summary="$(grep -E '^test result:' "$out" | tail -n 1 || true)"
  rm -f "$out"
  passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")"
  failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")"
  if [ -z "$passed" ]; then
    passed=0
    failed=1
  fi
  if [ "$status" -ne 0 ] && [ "${failed:-0}" -eq 0 ]; then
    failed=1
  fi
  echo "${passed} passed, ${failed} failed"
  [ "$failed" -eq 0 ]
}

# Installs Debian packages, saying so first.
apt_install() {
  echo "$(basename "$0"): installing $* with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null
  fi
}
