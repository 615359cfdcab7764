"""pytest setup of the Python adapter's tests.

The package is imported from this checkout (python/), so ``python3 -m pytest -q
python/tests`` works from the repository root without installing it. The library is
found as the package documents (HASHATTN_LIBRARY, installed prefixes, then the
repo's build*/ folders); a missing library is an error, never a skip.
"""
from __future__ import annotations

import os
import sys
from typing import Any, List

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(_HERE), _HERE):  # the checkout's package, then cases/reference
    if _p not in sys.path:
        sys.path.insert(0, _p)

import hashattn  # noqa: E402


def pytest_report_header(config: Any) -> List[str]:
    try:
        return [f"hashattn: package {os.path.dirname(hashattn.__file__)}, library "
                f"{hashattn.library_path()} ({hashattn.version()})"]
    except Exception as e:  # the autouse fixture below turns this into errors
        return [f"hashattn library: NOT FOUND ({e})"]


@pytest.fixture(scope="session", autouse=True)
def _library_loaded() -> None:
    hashattn.load_library()
