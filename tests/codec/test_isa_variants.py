"""The codecs give the same bits under every instruction-set variant the CPU has.

The core picks AVX2 / F16C code paths at run time; SPLITLINK_CPU_FEATURES (read once, at first
use) limits them, so one machine can run every variant it has. Each variant runs in its own
process: the golden-frame and codec suites must pass under it, and the encodings and decodings of
every codec (and of secure-aggregation masking) on inputs full of edge values must equal the
scalar variant's byte for byte. A variant needing a feature this CPU lacks is skipped, naming it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import splitlink
from splitlink import _core

REPO = Path(__file__).resolve().parents[2]
ENV = "SPLITLINK_CPU_FEATURES"
# Variant (the variable's value) -> the dispatch features it leaves on.
VARIANTS = {"scalar": set(), "f16c": {"f16c"}, "avx2": {"avx2"}, "avx2,f16c": {"avx2", "f16c"}}
DISPATCH = ("avx2", "f16c")  # the features the codecs' and masking's variants depend on
MARK = "CPU_FEATURES_IN_FORCE="
Outputs = dict[tuple[Any, ...], Any]  # case -> (frame bytes, decoded bytes) or the error message


def _require(variant: str) -> None:
    detected = _core.cpu_features()["detected"]
    missing = sorted(f for f in VARIANTS[variant] if not detected[f])
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: the {variant!r} variant cannot run here")


def _run(code: str, variant: str | None, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(ENV, None)
    if variant is not None:
        env[ENV] = variant
    # The subprocess imports the same splitlink as this process (installed or a source tree).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(splitlink.__file__).parents[1]), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _features_seen(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    assert len(lines) == 1, stdout[-2000:]
    return json.loads(lines[0][len(MARK) :])


def _check_forced(seen: dict[str, Any], variant: str) -> None:
    assert seen["forced"] is True
    assert {f for f in DISPATCH if seen[f]} == VARIANTS[variant], seen


SUITES = f"""
import json, sys
import pytest
from splitlink import _core
print({MARK!r} + json.dumps(_core.cpu_features()), flush=True)
sys.exit(pytest.main(["tests/wire/test_golden.py", "tests/codec/test_codecs.py", "-q", "-p", "no:cacheprovider"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_golden_and_codec_suites_pass_under_variant(variant: str) -> None:
    _require(variant)
    proc = _run(SUITES, variant)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _check_forced(_features_seen(proc.stdout), variant)


# Encodes fixed inputs with every codec and configuration and pickles {case: bytes or error} to
# argv[1]. The inputs are generated from fixed seeds, so every variant sees the same ones.
OUTPUTS = f"""
import json, pickle, sys
import numpy as np
import torch
from splitlink import CompressConfig, _core, wire

print({MARK!r} + json.dumps(_core.cpu_features()), flush=True)
rng = np.random.default_rng(2024)
n = 4133  # not a multiple of any SIMD width: bodies and tails both run

def f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)

finite_edges = np.concatenate([
    np.array([0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 65504.0, 65519.0, 65520.0, -65520.0, 1e30, -1e30], np.float32),
    np.array([np.finfo(np.float32).max, np.finfo(np.float32).min, np.finfo(np.float32).tiny], np.float32),
    f32([1, 0x80000001, 0x007FFFFF,  # float32 subnormals
         0x33800000, 0x33000000, 0x33C00000,  # 2^-24, 2^-25 and 1.5 * 2^-24: fp16 subnormal ties
         0x3F801000, 0x3F803000,  # 1 + 2^-11, 1 + 3 * 2^-11: fp16 ties to even
         0x3F808000, 0x3F818000]),  # bf16 ties to even
])
nonfinite = f32([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7F800001, 0x7FA00000, 0xFFBFFFFF,
                 0x7FFFFFFF, 0x7F802000])  # infinities; quiet, signaling and negative NaNs with payloads

def sprinkle(x, specials):
    x = x.copy()
    at = rng.random(n) < 0.25
    x[at] = rng.choice(specials, int(at.sum()))
    return x

normal = rng.normal(0, 3, n).astype(np.float32)
ties = (rng.integers(0, 255, n) + 0.5).astype(np.float32)
ties[0], ties[-1] = 0.0, 255.0  # pins the 8-bit grid to the integers: exact halfway values
inputs = {{
    "normal_zeros_subnormals": sprinkle(normal, finite_edges[[0, 1, 2, 3, 14, 15, 16, 17]]),
    "grid_ties": ties,
    "signed_zeros": sprinkle(np.zeros(n, np.float32), np.array([-0.0], np.float32)),
    "edges_finite": sprinkle(normal, finite_edges),
    "edges_inf": sprinkle(normal, np.concatenate([finite_edges, nonfinite[:2]])),
    "edges_all": sprinkle(normal, np.concatenate([finite_edges, nonfinite])),
    "random_bits": rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32),
}}

configs = {{f"min_max{{b}}": CompressConfig("min_max", bit_num=b) for b in range(1, 9)}}
configs.update({{f"min_max{{b}}_stochastic": CompressConfig("min_max", bit_num=b, stochastic=True, seed=77) for b in (1, 3, 8)}})
configs["min_max4_block64"] = CompressConfig("min_max", bit_num=4, block_size=64)
configs["fp16"] = CompressConfig("fp16")
configs["bf16"] = CompressConfig("bf16")
configs["topk"] = CompressConfig("topk", k=n // 10)
configs["topk_q8"] = CompressConfig("topk", k=n // 10, value_bit_num=8)
dtypes = {{"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}}

out = {{}}
def record(key, fn):
    try:
        out[key] = fn()
    except Exception as e:  # the same error under every variant is part of the outcome
        out[key] = f"{{type(e).__name__}}: {{e}}"

def roundtrip(x, config):
    frame = bytes(wire.pack({{"x": x}}, compress={{"x": config}}))
    got = wire.unpack(frame).tensors["x"]
    return frame, got.view(torch.uint8).numpy().tobytes() if got.dtype != torch.bool else got.numpy().tobytes()

for iname, a in inputs.items():
    for dname, dt in dtypes.items():
        x = torch.from_numpy(a).to(dt)
        if dname != "f32" and iname == "random_bits":  # every bit pattern of the narrow dtypes too
            width = {{"f64": np.uint64, "f16": np.uint16, "bf16": np.uint16}}[dname]
            raw = rng.integers(0, np.iinfo(width).max, n, dtype=np.uint64, endpoint=True).astype(width)
            x = torch.from_numpy(raw.view(np.float64) if dname == "f64" else raw.view(np.int16)).view(dt)
        for cname, config in configs.items():
            if cname in ("fp16", "bf16") and dname not in ("f32", "f64"):
                continue  # the half codecs downcast float32 / float64 only
            if cname.startswith("topk") and dname == "f64":
                continue  # topk ranks float32 and 16-bit floats only
            record((iname, dname, cname), lambda: roundtrip(x, config))
    for frac in (0, 16, 40):
        def mask():
            y = np.empty(n, np.int64)
            back = np.empty(n, np.float32)
            _core.secure.mask_encode(a, frac, [], 0, y, "x", 0)
            _core.secure.sum_decode([y], frac, back, 0)
            return y.tobytes(), back.tobytes()
        record((iname, "mask", frac), mask)
ints = torch.from_numpy(rng.integers(-100, 100, n)).to(torch.int32)
for b in range(1, 9):
    codes = ints % (1 << b) - (1 << (b - 1))
    record(("ints", "i32", f"bit_pack{{b}}"), lambda: roundtrip(codes, CompressConfig("bit_pack", bit_num=b)))
with open(sys.argv[1], "wb") as f:
    pickle.dump(out, f)
"""


def _outputs(variant: str, path: Path) -> Outputs:
    proc = _run(OUTPUTS, variant, str(path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _check_forced(_features_seen(proc.stdout), variant)
    with path.open("rb") as f:
        outputs: Outputs = pickle.load(f)  # written by the subprocess just above
    return outputs


@pytest.fixture(scope="module")
def scalar_outputs(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    return _outputs("scalar", tmp_path_factory.mktemp("isa") / "scalar.pkl")


def _expected_refusal(key: tuple[Any, ...], error: str) -> bool:
    inp, dtype, _ = key
    if "NaN" in error or "Inf" in error:  # min_max and topk refuse NaN, min_max Inf too
        # edges_finite's 1e30 and 65520 overflow to Inf in float16, float32's max rounds to Inf in bfloat16
        return inp in ("edges_inf", "edges_all", "random_bits") or (inp == "edges_finite" and dtype in ("f16", "bf16"))
    if "too wide" in error:  # float32's whole range does not fit 1-bit min_max's scale
        return inp == "edges_finite"
    if "fixed-point range" in error:  # masking takes |x * 2^f| < 2^51 only
        return dtype == "mask" and inp in ("edges_finite", "edges_inf", "edges_all", "random_bits")
    return False


def test_scalar_outputs_cover_every_codec_and_edge_case(scalar_outputs: Outputs) -> None:
    # The comparison below is only as good as what it compares: everything encodes except the
    # documented refusals, and the NaN / Inf / random-bit inputs do reach the codecs that keep them.
    unexpected = {k: v for k, v in scalar_outputs.items() if isinstance(v, str) and not _expected_refusal(k, v)}
    assert not unexpected
    for key in [("edges_all", d, c) for d in ("f32", "f64") for c in ("fp16", "bf16")] + [
        ("random_bits", "f32", "fp16"),
        ("random_bits", "f64", "bf16"),
        ("edges_inf", "f32", "topk"),
        ("edges_inf", "bf16", "topk"),
        ("normal_zeros_subnormals", "f16", "min_max8"),
        ("edges_finite", "f32", "min_max3"),
        ("edges_finite", "f32", "min_max8_stochastic"),
        ("grid_ties", "mask", 0),
        ("edges_finite", "f32", "topk_q8"),
        ("normal_zeros_subnormals", "bf16", "topk_q8"),
    ]:
        assert not isinstance(scalar_outputs[key], str), (key, scalar_outputs[key])
    assert any("NaN or Inf" in v for v in scalar_outputs.values() if isinstance(v, str))


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "scalar"])
def test_every_codec_gives_the_scalar_bits_under_variant(variant: str, scalar_outputs: Outputs, tmp_path: Path) -> None:
    _require(variant)
    got = _outputs(variant, tmp_path / "out.pkl")
    assert got.keys() == scalar_outputs.keys()
    differ = [k for k in scalar_outputs if got[k] != scalar_outputs[k]]
    assert not differ, f"{len(differ)} of {len(got)} cases differ from scalar under {variant}, e.g. {differ[:5]}"


PROBE = f"""
import json
from splitlink import _core
print({MARK!r} + json.dumps(_core.cpu_features()), flush=True)
"""


def test_unset_or_empty_variable_uses_everything_the_cpu_has() -> None:
    for value in (None, ""):
        proc = _run(PROBE, value)
        assert proc.returncode == 0, proc.stderr
        seen = _features_seen(proc.stdout)
        assert seen["forced"] is False
        assert {k: seen[k] for k in seen["detected"]} == seen["detected"]


def test_native_keeps_everything_and_scalar_drops_everything() -> None:
    native = _features_seen(_run(PROBE, "native").stdout)
    assert native["forced"] is True and {k: native[k] for k in native["detected"]} == native["detected"]
    scalar = _features_seen(_run(PROBE, "scalar").stdout)
    assert scalar["forced"] is True and not any(scalar[k] for k in scalar["detected"])


CODEC_CALL = """
import torch
from splitlink import CompressConfig, wire
try:
    wire.pack({"x": torch.ones(100)}, compress={"x": CompressConfig("fp16")})
except ValueError as e:
    print("ValueError:", e)
"""


@pytest.mark.parametrize("value", ["avx512", "scalar,sse9"])
def test_unknown_value_is_a_clear_error_naming_the_allowed_values(value: str) -> None:
    proc = _run(PROBE, value)
    assert proc.returncode != 0
    assert f"{ENV}='{value}'" in proc.stderr and "unknown feature" in proc.stderr, proc.stderr
    for allowed in ("avx2", "f16c", "aesni", "native", "scalar"):
        assert allowed in proc.stderr.split("allowed:")[1], proc.stderr
    # A codec call reports the same error instead of guessing a variant.
    proc = _run(CODEC_CALL, value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError:") and "unknown feature" in proc.stdout, proc.stdout
