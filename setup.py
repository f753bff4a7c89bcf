"""Build of the compiled core ``nmengine._core`` (Cython wrapper + the C GEMM in csrc/).

Flags: -O3 -std=c11 -ffp-contract=off (no implicit FMA contraction: the PWL epilogue must match numpy
bit for bit; the GEMM microkernel uses explicit FMA intrinsics) -fno-math-errno, -pthread (the core's
own thread pool, csrc/nm_threads.c), and -fopenmp when a test compile shows the compiler supports it
(kept only for C code that still uses OpenMP pragmas; the GEMM and row kernels use the pool, whose
idle workers sleep after a short spin instead of libgomp's long one).  No -march=native: the AVX2 and
AVX-512 code is compiled through function target attributes and chosen at run time by cpuid.
Set NMENGINE_NO_OPENMP=1 to build without OpenMP.

Sanitizers: NMENGINE_SANITIZE=address,undefined (any list of -fsanitize= names) builds the core with
them, -O1 -g and frame pointers, UBSan set to abort on the first report.  The extension then needs the
runtime preloaded into Python (LD_PRELOAD=$(cc -print-file-name=libasan.so)); tools/sanitize.sh does
the whole build-and-test run.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler() -> str:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()[0]


def _openmp_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags for OpenMP, or ([], []) when a test compile+link fails."""
    if os.environ.get("NMENGINE_NO_OPENMP") or sys.platform == "win32":
        return [], []
    cc = _compiler()
    if not shutil.which(cc):
        return [], []
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel\n{n=omp_get_num_threads();}\nreturn n<1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        c = os.path.join(tmp, "t.c")
        with open(c, "w") as f:
            f.write(src)
        try:
            r = subprocess.run([cc, "-fopenmp", c, "-o", os.path.join(tmp, "t")],
                               capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return [], []
    return (["-fopenmp"], ["-fopenmp"]) if r.returncode == 0 else ([], [])


def _sanitizer_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags for NMENGINE_SANITIZE, e.g. ``address,undefined``; ([], []) when unset."""
    names = os.environ.get("NMENGINE_SANITIZE", "").strip()
    if not names:
        return [], []
    flag = f"-fsanitize={names}"
    extra = ["-fno-sanitize-recover=all"] if "undefined" in names else []
    return [flag, *extra, "-fno-omit-frame-pointer", "-g", "-O1"], [flag]


omp_compile, omp_link = _openmp_flags()
san_compile, san_link = _sanitizer_flags()
thr = [] if sys.platform == "win32" else ["-pthread"]
csrc = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.c")))

ext = Extension(
    "nmengine._core",
    ["nmengine/_core.pyx", *csrc],
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", *thr, *omp_compile,
                        *san_compile],
    extra_link_args=[*thr, *omp_link, *san_link],
    depends=sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "*.h"))),
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    ),
)
