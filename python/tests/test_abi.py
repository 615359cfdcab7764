"""The ctypes mirror against the C header, and the function table of the library."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

import hashattn
from hashattn import abi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = os.path.join(REPO, "abi", "hashattn", "hashattn.h")


def _layout_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include \"hashattn/hashattn.h\"",
             "int main(void) {",
             '  printf("ABI %d %d\\n", HASHATTN_ABI_MAJOR, HASHATTN_ABI_MINOR);']
    for cname, cls in abi.C_NAMES.items():
        lines.append(f'  printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'  printf("{cname} {field} %zu %zu\\n", offsetof({cname}, {field}), '
                         f"sizeof((({cname} *)0)->{field}));")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(shutil.which("cc") is None or not os.path.isfile(HEADER),
                    reason="needs a C compiler and the repository's header")
def test_struct_layout_matches_header(tmp_path):
    src = tmp_path / "layout.c"
    exe = tmp_path / "layout"
    src.write_text(_layout_program())
    cc = subprocess.run(["cc", "-std=c11", "-I", os.path.join(REPO, "abi"), str(src), "-o", str(exe)],
                        capture_output=True, text=True)
    if cc.returncode != 0 and "dlpack/dlpack.h" in cc.stderr:
        pytest.skip("dlpack/dlpack.h is not installed (Debian: libdlpack-dev)")
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    seen = 0
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "ABI":
            assert (abi.ABI_MAJOR, abi.ABI_MINOR) == (int(parts[1]), int(parts[2])), line
            continue
        cls = abi.C_NAMES[parts[0]]
        if parts[1] == "sizeof":
            assert ctypes.sizeof(cls) == int(parts[2]), f"sizeof({parts[0]})"
        else:
            f = getattr(cls, parts[1])
            assert (f.offset, f.size) == (int(parts[2]), int(parts[3])), f"{parts[0]}.{parts[1]}"
        seen += 1
    assert seen == sum(len(c._fields_) + 1 for c in abi.C_NAMES.values())


def test_pinned_offsets():
    # The header's static assertions, checked on the Python side too.
    assert abi.Budget.heavy_fraction.offset == 20
    assert abi.ContextConfig.budget.offset == 72
    assert abi.MlpWeights.b3.offset == 48
    assert abi.WeightsBindArgs.key.offset == 72
    assert abi.WeightsLoadArgs.path.offset == 16
    assert abi.WorkspaceArgs.max_blocks_per_seq.offset == 24
    assert abi.CacheWriteArgs.stream.offset == 80
    assert abi.DecodeArgs.stream.offset == 112
    assert abi.PrefillArgs.stream.offset == 88
    assert abi.HashArgs.stream.offset == 56
    assert abi.Api.hash.offset == 104
    # 1.1
    assert abi.ContextConfig.tp_size.offset == 100
    assert abi.Api.all_reduce.offset == 144
    # 1.2: appended after stream (the header pins only up to 1.1)
    assert (abi.CacheWriteArgs.query.offset, abi.CacheWriteArgs.query_signatures.offset) == (88, 96)
    assert abi.DecodeArgs.query_signatures.offset == 120
    assert (ctypes.sizeof(abi.CacheWriteArgs), ctypes.sizeof(abi.DecodeArgs)) == (104, 128)
    assert abi.ABI_MINOR == 2


def test_init_sets_struct_size_and_defaults():
    cfg = abi.ContextConfig.init()
    assert cfg.struct_size == ctypes.sizeof(abi.ContextConfig)
    assert (cfg.block_size, cfg.hash_bits, cfg.mlp_width) == (16, 32, 128)
    assert cfg.dtype.key() == (4, 16, 1)  # bfloat16
    assert (cfg.device.device_type, cfg.device.device_id) == (1, 0)
    assert cfg.selection == abi.Selection.GROUP
    assert cfg.signature_layout == abi.SignatureLayout.PER_QUERY_HEAD
    assert cfg.budget.struct_size == ctypes.sizeof(abi.Budget)
    assert (cfg.budget.sink_tokens, cfg.budget.recent_tokens, cfg.budget.heavy_count) == (128, 128, -1)
    assert cfg.budget.heavy_fraction == pytest.approx(1 / 16)
    bind = abi.WeightsBindArgs.init()
    assert bind.query.struct_size == ctypes.sizeof(abi.MlpWeights)
    assert bind.key.struct_size == ctypes.sizeof(abi.MlpWeights)
    for cls in (abi.WeightsLoadArgs, abi.WorkspaceArgs, abi.CacheWriteArgs, abi.DecodeArgs,
                abi.PrefillArgs, abi.HashArgs):
        assert cls.init().struct_size == ctypes.sizeof(cls)
    # the 1.2 fields default to NULL (what a 1.1 library requires of the struct's tail)
    w = abi.CacheWriteArgs.init()
    assert not w.query and not w.query_signatures
    assert not abi.DecodeArgs.init().query_signatures
    with pytest.raises(AttributeError):
        abi.DecodeArgs.init(no_such_field=1)


def test_function_table():
    api = hashattn.load_library()
    assert api.abi_major == 1
    assert api.struct_size >= ctypes.sizeof(abi.Api)
    assert hashattn.abi_version()[0] == 1
    v = hashattn.version()
    assert v.split("+")[0].count(".") == 2 and "cpu" in v.split("+")[1]
    for st in hashattn.Status:
        assert api.status_string(int(st)).decode() == st.name
    assert api.status_string(12345).decode() == "UNKNOWN_STATUS"


def test_other_major_is_refused():
    lib = ctypes.CDLL(hashattn.library_path())
    lib.hashattn_get_api.restype = ctypes.c_void_p
    lib.hashattn_get_api.argtypes = [ctypes.c_uint32]
    assert lib.hashattn_get_api(2) is None
    assert lib.hashattn_get_api(0) is None
    assert lib.hashattn_get_api(1) is not None


def test_library_lookup_env(monkeypatch, tmp_path):
    from hashattn import _library

    monkeypatch.setenv("HASHATTN_LIBRARY", str(tmp_path / "nothing.so"))
    assert _library.candidates() == [str(tmp_path / "nothing.so")]
    monkeypatch.setenv("HASHATTN_LIBRARY", str(tmp_path))
    assert _library.candidates() == [str(tmp_path / "libhashattn.so.1")]
    monkeypatch.delenv("HASHATTN_LIBRARY")
    tried = _library.candidates()
    assert any(p.startswith("/usr/local/lib") for p in tried)


def test_package_version_is_the_librarys():
    """The package is released with the library whose ABI it mirrors: its version is
    CMakeLists.txt's project version, pyproject's too, and that version's major.minor is
    the ABI the mirror declares."""
    import re
    cmake = os.path.join(REPO, "CMakeLists.txt")
    pyproject = os.path.join(REPO, "python", "pyproject.toml")
    if not (os.path.isfile(cmake) and os.path.isfile(pyproject)):
        pytest.skip("needs the repository's CMakeLists.txt and pyproject.toml")
    project = re.search(r"project\(hashattn VERSION (\d+\.\d+\.\d+)", open(cmake).read())
    packaged = re.search(r'^version = "([^"]+)"', open(pyproject).read(), re.M)
    assert project and packaged
    assert hashattn.__version__ == project.group(1), (hashattn.__version__, project.group(1))
    assert packaged.group(1) == project.group(1), (packaged.group(1), project.group(1))
    major, minor = (int(x) for x in project.group(1).split(".")[:2])
    assert (major, minor) == (abi.ABI_MAJOR, abi.ABI_MINOR)


def test_every_failure_status_has_its_exception():
    """error_for_status gives each non-OK status its own class (COMM_ERROR: CommError),
    carrying the status and message; an unknown status a plain HashAttnError."""
    classes = set()
    for st in abi.Status:
        if st == abi.Status.OK:
            continue
        e = hashattn.error_for_status(int(st), f"op: {st.name}", st.name)
        assert type(e) is not hashattn.HashAttnError, st.name
        assert e.status == st and e.message == f"op: {st.name}" and st.name in str(e), st.name
        classes.add(type(e))
    assert len(classes) == len(abi.Status) - 1
    assert isinstance(hashattn.error_for_status(int(abi.Status.COMM_ERROR), "x"), hashattn.CommError)
    assert type(hashattn.error_for_status(999, "x")) is hashattn.HashAttnError
