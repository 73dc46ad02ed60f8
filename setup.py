"""Build the Cython extensions in ext/ against the system ISA-L, xxHash, LMDB and zlib.

Each library is found by, in order: an environment variable naming its install prefix
(DSBACKUP_ISAL_PREFIX, DSBACKUP_XXHASH_PREFIX, DSBACKUP_LMDB_PREFIX, DSBACKUP_ZLIB_PREFIX,
DSBACKUP_OPENSSL_PREFIX), then pkg-config. OpenSSL's libcrypto is linked only into the modules
that use it (MODULE_LIBRARIES). A library that cannot be found stops the build with the Debian package to install.
XXH3 is hashed through libxxhash's CPU-dispatched (AVX2/AVX-512) functions where the library
exports them (ext/xxh3_dispatch.h; DSBACKUP_XXH3_DISPATCH=0/1 overrides the check).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
EXT_DIR = HERE / "ext"

# name -> (env var, pkg-config name, library to link, Debian package)
LIBRARIES = {
    "isal": ("DSBACKUP_ISAL_PREFIX", "libisal", "isal", "libisal-dev"),
    "xxhash": ("DSBACKUP_XXHASH_PREFIX", "libxxhash", "xxhash", "libxxhash-dev"),
    "lmdb": ("DSBACKUP_LMDB_PREFIX", "lmdb", "lmdb", "liblmdb-dev"),
    "zlib": ("DSBACKUP_ZLIB_PREFIX", "zlib", "z", "zlib1g-dev"),
    "openssl": ("DSBACKUP_OPENSSL_PREFIX", "libcrypto", "crypto", "libssl-dev"),
    "zstd": ("DSBACKUP_ZSTD_PREFIX", "libzstd", "zstd", "libzstd-dev"),
}
# libraries linked into every module, and those linked only into the named modules
COMMON_LIBRARIES = ("isal", "xxhash", "lmdb", "zlib")
MODULE_LIBRARIES = {"seal": ("openssl",), "compress": ("zstd",)}


def _pkg_config(name: str) -> tuple[list[str], list[str], list[str]] | None:
    exe = shutil.which("pkg-config")
    if exe is None:
        return None
    try:
        cflags = subprocess.run(
            [exe, "--cflags", name], check=True, capture_output=True, text=True
        ).stdout.split()
        libs = subprocess.run(
            [exe, "--libs", name], check=True, capture_output=True, text=True
        ).stdout.split()
    except subprocess.CalledProcessError:
        return None
    incs = [f[2:] for f in cflags if f.startswith("-I")]
    libdirs = [f[2:] for f in libs if f.startswith("-L")]
    names = [f[2:] for f in libs if f.startswith("-l")]
    return incs, libdirs, names


@functools.cache
def find_library(key: str) -> tuple[list[str], list[str], list[str]]:
    env, pc_name, link_name, debian = LIBRARIES[key]
    prefix = os.environ.get(env)
    if prefix:
        root = Path(prefix)
        libdirs = [str(p) for p in (root / "lib", root / "lib64") if p.is_dir()]
        return [str(root / "include")], libdirs, [link_name]
    found = _pkg_config(pc_name)
    if found is not None:
        incs, libdirs, names = found
        return incs, libdirs, names or [link_name]
    sys.exit(
        f"dsbackup: cannot find {key} (pkg-config '{pc_name}'). Install the Debian package "
        f"'{debian}' (apt-get install {debian} pkg-config) or set {env} to its install prefix."
    )


# The dispatched XXH3 functions ext/xxh3_dispatch.h uses in place of the plain ones.
XXH3_DISPATCHED = ("XXH3_64bits_dispatch", "XXH3_64bits_withSeed_dispatch",
                   "XXH3_64bits_update_dispatch", "XXH3_128bits_dispatch",
                   "XXH3_128bits_update_dispatch")


def xxh3_dispatch(libdirs: list[str]) -> bool:
    """Whether the libxxhash found exports XXH3's runtime-dispatched (AVX2/AVX-512) functions
    (a build with DISPATCH=1, as Debian's, x86-64 only); DSBACKUP_XXH3_DISPATCH=0/1 decides
    instead when set."""
    forced = os.environ.get("DSBACKUP_XXH3_DISPATCH")
    if forced in ("0", "1"):
        return forced == "1"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import ctypes

    for name in [str(Path(d) / "libxxhash.so") for d in libdirs] + ["libxxhash.so",
                                                                   "libxxhash.so.0"]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return all(hasattr(lib, f) for f in XXH3_DISPATCHED)
    return False


def extensions() -> list[Extension]:
    pyx_files = sorted(EXT_DIR.glob("*.pyx"))
    if not pyx_files:
        return []

    def flags(keys: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
        include_dirs: list[str] = [str(EXT_DIR)]
        library_dirs: list[str] = []
        libraries: list[str] = []
        for key in keys:
            incs, libdirs, names = find_library(key)
            include_dirs += [i for i in incs if i not in include_dirs]
            library_dirs += [d for d in libdirs if d not in library_dirs]
            libraries += [n for n in names if n not in libraries]
        return include_dirs, library_dirs, libraries

    compile_args = ["-O3", "-std=c11", "-Wno-unused-function", "-Wno-unreachable-code"]
    if os.environ.get("DSBACKUP_NATIVE_ARCH", "") == "1":
        compile_args.append("-march=native")
    from Cython.Build import cythonize

    macros = [("NPY_NO_DEPRECATED_API", "0")]
    if xxh3_dispatch(find_library("xxhash")[1]):
        macros.append(("DSBACKUP_XXH3_DISPATCH", "1"))
    exts = []
    for pyx in pyx_files:
        include_dirs, library_dirs, libraries = flags(
            COMMON_LIBRARIES + MODULE_LIBRARIES.get(pyx.stem, ()))
        exts.append(Extension(
            f"dsbackup._ext.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            runtime_library_dirs=[d for d in library_dirs if not d.startswith("/usr/")],
            libraries=libraries,
            extra_compile_args=compile_args,
            define_macros=macros,
        ))
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
        include_path=[str(EXT_DIR)],
        quiet=True,
    )


setup(ext_modules=extensions())
