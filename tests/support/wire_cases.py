"""Tensor mappings used by the wire tests and by the golden frames (deterministic)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from splitlink.wire import SUPPORTED_DTYPES


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def every_dtype() -> dict[str, Any]:
    return {str(d).removeprefix("torch."): sample(d, (3, 5), i) for i, d in enumerate(SUPPORTED_DTYPES)}


def grad_scale() -> dict[str, Any]:
    """MindSpore Federated's grad-scale form {scaler_output: {input_name: grad}}."""
    return {
        "loss": {
            "follower_wide_embedding": sample(torch.float32, (16, 1), 1),
            "follower_deep_embedding": sample(torch.float32, (16, 8), 2),
        },
        "aux": {"mask": sample(torch.bool, (16,), 3)},
    }


def edge_shapes() -> dict[str, Any]:
    return {
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 7),
        "zero_dim_middle": torch.empty(3, 0, 2, dtype=torch.int32),
        "one": torch.ones(1, dtype=torch.int8),
        "odd": sample(torch.float16, (1, 3, 1, 7), 4),
        "numpy": np.arange(12, dtype=np.int16).reshape(3, 4),
    }


def deep_nesting() -> dict[str, Any]:
    return {"a": {"b": {"c": {"d": sample(torch.float32, (2,), 5)}}}, "z": sample(torch.uint8, (4,), 6)}


def compressed() -> dict[str, Any]:
    return {
        "mm8": sample(torch.float32, (64,), 7),
        "mm3_blocked": sample(torch.float32, (10, 7), 8),
        "ids": torch.tensor([-3, -1, 0, 2, 5], dtype=torch.int32),
        "mask": sample(torch.bool, (13,), 9),
        "half": sample(torch.float32, (9,), 10),
        "brain": sample(torch.float64, (4,), 11),
        "sparse": sample(torch.float32, (50,), 12),
        "sparse_q": sample(torch.float32, (40,), 13),
    }


def compressed_configs() -> dict[str, Any]:
    from splitlink import CompressConfig

    return {
        "mm8": CompressConfig("min_max", bit_num=8),
        "mm3_blocked": CompressConfig("min_max", bit_num=3, block_size=16),
        "ids": CompressConfig("bit_pack", bit_num=4),
        "mask": CompressConfig("bit_pack", bit_num=1),
        "half": CompressConfig("fp16"),
        "brain": CompressConfig("bf16"),
        "sparse": CompressConfig("topk", ratio=0.1),
        "sparse_q": CompressConfig("topk", k=6, value_bit_num=5),
    }


GOLDEN: dict[str, tuple[Any, dict[str, Any]]] = {
    "every_dtype": (every_dtype, {"sender": "leader", "step": 3, "kind": "forward", "seq": 1}),
    "grad_scale": (grad_scale, {"sender": "follower", "step": 12345, "kind": "backward", "seq": 99}),
    "edge_shapes": (edge_shapes, {"sender": "", "step": -1, "kind": "", "seq": 0}),
    "deep_nesting": (deep_nesting, {"sender": "参与方-b", "step": 2**40, "kind": "eval", "seq": 2**63}),
    "empty_frame": (lambda: {}, {"sender": "leader", "step": 0, "kind": "heartbeat", "seq": 7}),
}
# Golden frames written with compression: the decoded values are what the codec produced, so these
# are checked against the tensors stored next to them (name.pt), not against the inputs.
GOLDEN_COMPRESSED: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "compressed": (compressed, compressed_configs, {"sender": "follower", "step": 5, "kind": "forward", "seq": 3}),
}


def assert_same_tree(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same keys in the same order, and equal tensors (dtype, shape and values)."""
    assert list(got) == list(want), "keys or their order differ"
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same_tree(got[key], value)
            continue
        expected = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        assert got[key].dtype == expected.dtype, key
        assert got[key].shape == expected.shape, key
        assert torch.equal(got[key], expected), key
