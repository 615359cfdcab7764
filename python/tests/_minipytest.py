"""The few pieces of pytest that test_gpu.py uses, for running it as a plain script on a
machine without pytest (the GPU machine has torch and numpy, nothing can be installed).

Supports ``importorskip``, ``mark.skipif``, ``mark.parametrize`` (one argument), other
``mark.NAME`` as no-ops, ``raises(..., match=...)``, and ``run_module``, which runs a
module's ``test_*`` functions in order and ends with
"NAME: N passed, N failed, N skipped: OK|FAILED". Not a test module itself.
"""
from __future__ import annotations

import importlib
import re
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, Optional


class _Skipped(Exception):
    pass


def importorskip(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        print(f"skipped: cannot import {name}: {e}")
        print("0 passed, 0 failed, 1 skipped: SKIPPED")
        sys.exit(77)


def skip(reason: str = "") -> None:
    raise _Skipped(reason)


class _Marker:
    """pytest.mark.NAME without arguments, or called with any: a no-op."""

    def __call__(self, *a: Any, **k: Any) -> Any:
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]
        return self


class _Mark:
    @staticmethod
    def skipif(cond: bool, reason: str = "") -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            if cond:
                fn._mini_skip = reason  # type: ignore[attr-defined]
            return fn
        return deco

    @staticmethod
    def parametrize(name: str, values: Iterable[Any], ids: Optional[Callable] = None) -> Callable:
        def deco(fn: Callable) -> Callable:
            fn._mini_params = (name, list(values), ids)  # type: ignore[attr-defined]
            return fn
        return deco

    def __getattr__(self, name: str) -> _Marker:
        return _Marker()


mark = _Mark()


class raises:
    def __init__(self, exc: type, match: Optional[str] = None) -> None:
        self.exc, self.match = exc, match

    def __enter__(self) -> "raises":
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        if et is None:
            raise AssertionError(f"DID NOT RAISE {self.exc.__name__}")
        if not issubclass(et, self.exc):
            return False
        if self.match and not re.search(self.match, str(ev)):
            raise AssertionError(f"{self.exc.__name__} raised, but {str(ev)!r} does not match "
                                 f"{self.match!r}")
        return True


def run_module(ns: Dict[str, Any], name: str, skip_all: Optional[str] = None) -> int:
    """Run the test_* functions of a module namespace; 0 when none failed."""
    passed = failed = skipped = 0
    for fname, fn in list(ns.items()):
        if not fname.startswith("test_") or not callable(fn):
            continue
        params = getattr(fn, "_mini_params", None)
        cases = [(fname, None)]
        if params:
            _, values, ids = params
            cases = [(f"{fname}[{ids(v) if ids else i}]", v) for i, v in enumerate(values)]
        for label, value in cases:
            reason = skip_all or getattr(fn, "_mini_skip", None)
            if reason:
                skipped += 1
                print(f"SKIP {label}: {reason}", flush=True)
                continue
            t = time.perf_counter()
            try:
                fn() if params is None else fn(value)
            except _Skipped as e:
                skipped += 1
                print(f"SKIP {label}: {e}", flush=True)
                continue
            except Exception:  # a failing test is reported, the others still run
                failed += 1
                print(f"FAIL {label}", flush=True)
                traceback.print_exc(file=sys.stdout)
                continue
            passed += 1
            print(f"PASS {label} ({time.perf_counter() - t:.2f} s)", flush=True)
    verdict = "FAILED" if failed else "OK"
    print(f"{name}: {passed} passed, {failed} failed, {skipped} skipped: {verdict}", flush=True)
    return 1 if failed else 0
