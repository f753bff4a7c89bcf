#!/usr/bin/env bash
# Build the C core with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of the tree and
# a scratch virtual environment, then run the tests that reach the C core under the sanitizers.
#
#   tools/sanitize.sh                 # kernel, runtime and bundle tests
#   tools/sanitize.sh tests/test_gemm.py -k pwl     # any pytest arguments instead
#
# Leak detection is off (CPython itself keeps memory alive at exit); every other ASan check and every
# UBSan check aborts the run at the first report, so a clean exit means no report.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/nmengine-sanitize.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
cc="${CC:-cc}"
asan="$("$cc" -print-file-name=libasan.so)"
ubsan="$("$cc" -print-file-name=libubsan.so)"
[ -f "$asan" ] || { echo "sanitize: $cc has no libasan.so ($asan)"; exit 2; }

echo "sanitize: scratch tree and venv in $scratch"
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | (cd "$root" && xargs -0 cp --parents -t "$scratch" 2>/dev/null || true)
mkdir -p "$scratch/tree" && (cd "$scratch" && find . -maxdepth 1 -mindepth 1 ! -name tree -exec mv {} tree/ \;)
python3 -m venv --system-site-packages "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check "setuptools>=77" "Cython>=3.0" >"$scratch/pip.log" 2>&1 \
  || { tail -20 "$scratch/pip.log"; echo "sanitize: could not install the build requirements"; exit 3; }
cd "$scratch/tree"
rm -f nmengine/_core*.so
NMENGINE_SANITIZE=address,undefined "$py" setup.py build_ext --inplace -q >"$scratch/build.log" 2>&1 \
  || { tail -30 "$scratch/build.log"; echo "sanitize: build failed"; exit 3; }

if [ $# -eq 0 ]; then
  set -- tests/test_gemm.py tests/test_gemm_row_tails.py tests/test_pwl_kernel.py tests/test_rowops.py \
         tests/test_fused_layernorm.py tests/test_bundle.py tests/test_compile.py
  for t in tests/test_session*.py tests/test_qgemm*.py tests/test_int8*.py tests/test_gemm_prop*.py; do
    [ -f "$t" ] && set -- "$@" "$t"
  done
fi
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
echo "sanitize: ASan+UBSan build ok; running: pytest $*"
"$py" -m pytest -q -p no:cacheprovider -p no:randomly "$@"
echo "sanitize: clean (no ASan or UBSan report)"
