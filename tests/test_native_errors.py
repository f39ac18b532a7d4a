"""Native errors reach Python as exceptions whatever else the process has loaded.

On a GPU machine every native error used to kill the process with a segmentation fault (a malformed
frame from a peer, a NaN under min_max, a tampered sealed frame). These tests raise every native
error type, through the test hook and through the real code paths, in a fresh interpreter that
imported torch (and, where there is a GPU, initialised CUDA) before splitlink, and in one that
imported splitlink first; and they check the build properties that keep a throw inside splitlink's
own code: a private pybind11 internals id, a hidden C++ runtime, one exported symbol.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from splitlink import _core

# Runs in a fresh interpreter: the import order is the point of the test.
_SCRIPT = textwrap.dedent(
    """
    import faulthandler, sys
    faulthandler.enable()
    order = sys.argv[1]
    if order == "torch-first":
        import torch
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda").sum().item()   # CUDA initialised: driver, cuBLAS, NCCL loaded
    import numpy as np
    import splitlink
    from splitlink import _core, codec, secure, wire
    from splitlink.errors import CodecError, CryptoError, SplitlinkError, WireError
    if order == "splitlink-first":
        import torch
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda").sum().item()

    hooks = {"wire": WireError, "codec": CodecError, "crypto": CryptoError, "value": ValueError,
             "base": SplitlinkError, "std": RuntimeError, "bad_alloc": MemoryError}
    raised = []
    for kind, exc in hooks.items():
        for release_gil in (False, True):
            try:
                _core._raise_native_error(kind, release_gil)
            except Exception as e:
                assert type(e) is exc, (kind, release_gil, type(e), e)
                raised.append(type(e).__name__)
            else:
                raise AssertionError(f"{kind}: nothing raised")

    def expect(exc, fn):
        try:
            fn()
        except exc as e:
            raised.append(type(e).__name__)
        else:
            raise AssertionError(f"{fn}: {exc.__name__} not raised")

    x = torch.randn(64, 8)
    frame = bytes(wire.pack({"x": x}, sender="a", step=1))
    expect(WireError, lambda: wire.unpack(frame[:-3]))                      # truncated
    expect(WireError, lambda: wire.unpack(b"\\x0f" + frame[1:]))             # bad field tag
    nan = x.clone(); nan[3, 3] = float("nan")
    expect(CodecError, lambda: wire.pack({"x": nan}, compress={"x": splitlink.CompressConfig("min_max", bit_num=8)}))
    me, peer = secure.KeyPair.generate(), secure.KeyPair.generate()
    sid = secure.new_session_id()
    keys = secure.derive_session_keys(me, peer.public_bytes, me="a", peer="b", session_id=sid)
    sealed = bytearray(wire.pack({"x": x}, sender="a", seq=1, sealer=secure.Sealer(keys.send, "a")))
    sealed[-1] ^= 1
    theirs = secure.derive_session_keys(peer, me.public_bytes, me="b", peer="a", session_id=sid)
    expect((CryptoError, WireError), lambda: wire.unpack(bytes(sealed), opener=secure.Opener(theirs.recv, "a")))
    expect(CryptoError, lambda: secure.derive_session_keys(me, bytes(32), me="a", peer="b", session_id=sid))
    print("OK", len(raised), " ".join(sorted(set(raised))))
    """
)


@pytest.mark.parametrize("order", ["torch-first", "splitlink-first"])
def test_every_native_error_is_a_python_exception_in_a_fresh_process(order: str, tmp_path) -> None:
    script = tmp_path / "raise_all.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), order], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("OK 19 "), last
    assert set(last.split()[2:]) == {
        "CodecError",
        "CryptoError",
        "MemoryError",
        "RuntimeError",
        "SplitlinkError",
        "ValueError",
        "WireError",
    }, last


def test_the_hook_names_what_it_accepts() -> None:
    with pytest.raises(ValueError, match="unknown kind 'nope'; use wire, codec"):
        _core._raise_native_error("nope")


def test_pybind11_internals_are_private_to_splitlink() -> None:
    # Shared internals (the same id as torch._C or another module) would put splitlink's exception
    # translation in a structure other modules, built by other compilers, also walk.
    info = _core.build_info()
    assert "_splitlink" in info["pybind11_internals_id"], info


def _sanitized() -> bool:
    return bool(_core.build_info()["sanitizers"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF symbol checks are Linux-only")
def test_module_exports_only_its_init_and_owns_its_cpp_runtime() -> None:
    info = _core.build_info()
    if _sanitized():
        pytest.skip("sanitizer builds link the shared C++ runtime on purpose (their runtimes intercept it)")
    assert info["static_cxx_runtime"], (
        f"{_core.__file__} was built with the shared C++ runtime ({info}); install the compiler's static "
        "libstdc++ (Debian: libstdc++-<version>-dev) and rebuild"
    )
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils' nm is not installed (apt-get install binutils)")
    dynsym = subprocess.run([nm, "-D", "--defined-only", _core.__file__], capture_output=True, text=True, check=True).stdout
    assert [line.split()[-1] for line in dynsym.splitlines() if line.strip()] == ["PyInit__core"], dynsym
    undefined = subprocess.run([nm, "-D", "--undefined-only", _core.__file__], capture_output=True, text=True, check=True).stdout
    for sym in (
        "__cxa_throw",
        "__cxa_begin_catch",
        "_Unwind_RaiseException",
        "_Unwind_Resume",
        "__gxx_personality_v0",
        "_ZTISt9exception",
    ):
        assert sym not in undefined, f"{sym} resolved outside the module:\n{undefined}"
    assert "GLIBCXX" not in undefined and "CXXABI" not in undefined, undefined


def test_native_errors_carry_file_and_line() -> None:
    with pytest.raises(Exception, match=r"test WireError \[register_errors\.cc:\d+\]"):
        _core._raise_native_error("wire")


if os.environ.get("SPLITLINK_EXPECT_CORE"):

    def test_core_is_the_build_under_test() -> None:
        # Set by tests/native/test_alt_builds.py, which runs this file against other builds.
        assert os.path.realpath(_core.__file__).startswith(os.path.realpath(os.environ["SPLITLINK_EXPECT_CORE"]))
