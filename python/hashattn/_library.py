"""Finding and loading libhashattn.so.1 and its function table.

Lookup order (the first that exists wins):

1. the environment variable ``HASHATTN_LIBRARY``: a file, or a folder that holds
   ``libhashattn.so.1``; when it is set and names nothing, loading fails rather than
   falling through to another copy;
2. the installed prefixes' library folders: ``lib``, ``lib64`` and
   ``lib/<multiarch>`` under ``HASHATTN_PREFIX`` (if set), ``sys.prefix``,
   ``/usr/local`` and ``/usr``; then the dynamic linker's cache
   (``ctypes.util.find_library``);
3. the build folders of the source tree this package sits in
   (``<repo>/build*/libhashattn.so.1``), the most recently built first.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import sysconfig
import threading
from pathlib import Path
from typing import List, Optional, Tuple

from ._abi import ABI_MAJOR, Api
from .errors import LibraryNotFoundError

LIBRARY_NAME = "libhashattn.so.1"

_lock = threading.Lock()
_loaded: Optional[Tuple[str, ctypes.CDLL, Api]] = None


def _prefix_dirs() -> List[Path]:
    prefixes = []
    if os.environ.get("HASHATTN_PREFIX"):
        prefixes.append(os.environ["HASHATTN_PREFIX"])
    prefixes += [sys.prefix, sys.base_prefix, "/usr/local", "/usr"]
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs: List[Path] = []
    for p in prefixes:
        for sub in ("lib", "lib64", f"lib/{multiarch}" if multiarch else None):
            if sub:
                d = Path(p) / sub
                if d not in dirs:
                    dirs.append(d)
    return dirs


def _repo_candidates() -> List[Path]:
    repo = Path(__file__).resolve().parent.parent.parent  # python/hashattn/ -> repo root
    if not (repo / "abi" / "hashattn" / "hashattn.h").is_file():
        return []
    found = [Path(p) for p in glob.glob(str(repo / "build*" / LIBRARY_NAME))]
    found = [p for p in found if p.exists()]  # a dangling link from a half-made build
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def candidates() -> List[str]:
    """Every path the lookup would try, in order (for diagnostics)."""
    env = os.environ.get("HASHATTN_LIBRARY")
    if env:
        p = Path(env)
        return [str(p / LIBRARY_NAME) if p.is_dir() else str(p)]
    out = [str(d / LIBRARY_NAME) for d in _prefix_dirs()]
    linker = ctypes.util.find_library("hashattn")
    if linker:
        out.append(linker)
    out += [str(p) for p in _repo_candidates()]
    return out


def library_path() -> str:
    """The path of the library that :func:`load` uses (loaded or about to be)."""
    if _loaded is not None:
        return _loaded[0]
    tried = candidates()
    for c in tried:
        if os.path.isfile(c) or (os.sep not in c and c):  # a bare name from the linker cache
            return c
    raise LibraryNotFoundError(
        f"{LIBRARY_NAME} not found; set HASHATTN_LIBRARY to its path or build the library "
        f"(cmake -S . -B build && cmake --build build). Tried: " + ", ".join(tried))


def load(path: Optional[str] = None) -> Api:
    """Load the library (once per process) and return its ABI 1 function table.

    ``path`` overrides the lookup; it is only honoured on the first load.
    """
    global _loaded
    with _lock:
        if _loaded is None:
            p = path or library_path()
            lib = ctypes.CDLL(p)
            get_api = lib.hashattn_get_api
            get_api.restype = ctypes.POINTER(Api)
            get_api.argtypes = [ctypes.c_uint32]
            ptr = get_api(ABI_MAJOR)
            if not ptr:
                raise LibraryNotFoundError(f"{p} does not implement ABI major {ABI_MAJOR}")
            api = ptr.contents
            need = Api.comm_unique_id.offset  # the 1.0 table: all the adapter calls
            if api.struct_size < need:
                raise LibraryNotFoundError(
                    f"{p}: function table is {api.struct_size} bytes, this package needs "
                    f"{need} (ABI {api.abi_major}.{api.abi_minor} is older)")
            _loaded = (os.path.realpath(p) if os.path.exists(p) else p, lib, api)
        elif path is not None and os.path.realpath(path) != _loaded[0]:
            raise LibraryNotFoundError(f"{_loaded[0]} is already loaded; cannot switch to {path}")
        return _loaded[2]


def version() -> str:
    """The library's version string, e.g. ``"1.2.0+cpu,cuda"``."""
    return load().version().decode()


def abi_version() -> Tuple[int, int]:
    """(major, minor) of the loaded library's ABI."""
    api = load()
    return int(api.abi_major), int(api.abi_minor)


def has_cuda() -> bool:
    """Whether the loaded library was built with its CUDA backend."""
    return "cuda" in version().split("+", 1)[-1].split(",")
