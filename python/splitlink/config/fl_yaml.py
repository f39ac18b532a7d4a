"""FLYamlData, the facade over the schema and checks (see :mod:`splitlink.config`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from splitlink.codec import CompressConfig
from splitlink.config.checks import cross_problems
from splitlink.config.schema import (
    DatasetSpec,
    GradSpec,
    HyperParameters,
    InputSpec,
    NetSpec,
    OptSpec,
    OutputSpec,
    PrivacySpec,
    RootSpec,
    TensorSpec,
)
from splitlink.config.yaml_errors import (
    parse_yaml_document,
    pydantic_problems,
    read_yaml_text,
)
from splitlink.errors import Problem, YamlConfigError

__all__ = ["FLYamlData"]


class FLYamlData:
    """One party's sub-network, parsed from a YAML file (or a YAML string / mapping) and validated.

    >>> data = FLYamlData("leader_top.yaml")
    >>> data.train_net_ins, data.train_net_outs, data.opts[0].type
    """

    def __init__(self, yaml_path: str | os.PathLike[str] | Mapping[str, Any], *, text: str | None = None) -> None:
        if isinstance(yaml_path, Mapping):
            source, raw_text = "<mapping>", yaml.safe_dump(dict(yaml_path), sort_keys=False)
            base = Path.cwd()
        elif text is not None:
            source, raw_text, base = str(yaml_path), text, Path.cwd()
        else:
            p = Path(yaml_path)
            raw_text = read_yaml_text(p, "splitlink config")
            source, base = str(p), p.resolve().parent
        self.source = source
        self.base_dir = base
        raw, lines = parse_yaml_document(raw_text, source)
        problems = list(lines.problems)
        if not isinstance(raw, Mapping):
            problems.append(
                Problem(
                    lines.line(()),
                    "",
                    f"the document must be a mapping with keys {', '.join(RootSpec.model_fields)}; got {type(raw).__name__}",
                )
            )
            raise YamlConfigError(source, problems)
        spec: RootSpec | None = None
        try:
            spec = RootSpec.model_validate(raw)
        except ValidationError as e:
            problems.extend(pydantic_problems(e, lines, RootSpec))
        problems.extend(cross_problems(raw, lines, base))
        if problems:
            raise YamlConfigError(source, problems)
        assert spec is not None
        self.spec = spec
        self.raw = raw

    # MindSpore-style accessors -------------------------------------------------------------------
    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def train_net(self) -> NetSpec:
        return self.spec.model.train_net

    @property
    def eval_net(self) -> NetSpec | None:
        return self.spec.model.eval_net

    @property
    def train_net_ins(self) -> list[InputSpec]:
        return list(self.train_net.inputs)

    @property
    def train_net_outs(self) -> list[OutputSpec]:
        return list(self.train_net.outputs)

    @property
    def eval_net_ins(self) -> list[InputSpec]:
        return list((self.eval_net or self.train_net).inputs)

    @property
    def eval_net_outs(self) -> list[OutputSpec]:
        return list((self.eval_net or self.train_net).outputs)

    @property
    def eval_net_gt(self) -> str | None:
        return self.eval_net.gt if self.eval_net else None

    @property
    def opts(self) -> list[OptSpec]:
        return list(self.spec.opts)

    @property
    def grad_scalers(self) -> list[GradSpec]:
        return list(self.spec.grad_scalers)

    @property
    def hyper_parameters(self) -> HyperParameters:
        return self.spec.hyper_parameters

    @property
    def epochs(self) -> int:
        return self.spec.hyper_parameters.epochs

    @property
    def batch_size(self) -> int:
        return self.spec.hyper_parameters.batch_size

    @property
    def is_eval(self) -> bool:
        return self.spec.hyper_parameters.is_eval

    @property
    def privacy(self) -> PrivacySpec | None:
        return self.spec.privacy

    @property
    def label_dp_eps(self) -> float | None:
        p = self.spec.privacy
        return p.label_dp.eps if p and p.label_dp else None

    @property
    def embedding_dp_eps(self) -> float | None:
        p = self.spec.privacy
        return p.embedding_dp.eps if p and p.embedding_dp else None

    @property
    def dataset(self) -> DatasetSpec | None:
        return self.spec.dataset

    @property
    def ckpt_path(self) -> Path:
        p = Path(self.spec.ckpt_path)
        return p if p.is_absolute() else (self.base_dir / p if self.source != "<mapping>" else p)

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The ``deepspeed`` section as a mapping (a JSON path is read), or None."""
        ds = self.spec.deepspeed
        if ds is None:
            return None
        if isinstance(ds, str):
            p = Path(ds) if os.path.isabs(ds) else self.base_dir / ds
            return dict(json.loads(p.read_text()))
        return dict(ds)

    def compress_configs(self) -> dict[str, CompressConfig]:
        """Codec settings by tensor name: remote inputs (for the gradients sent back) and remote outputs."""
        out: dict[str, CompressConfig] = {}
        for net in filter(None, (self.train_net, self.eval_net)):
            items: Iterator[TensorSpec] = iter(
                [*(i for i in net.inputs if i.source == "remote"), *(o for o in net.outputs if o.destination == "remote")]
            )
            for t in items:
                if t.compress_type is not None and t.name not in out:
                    out[t.name] = CompressConfig(t.compress_type, bit_num=t.bit_num, **(t.compress_params or {}))
        return out

    def __repr__(self) -> str:
        t = self.train_net
        return (
            f"FLYamlData({self.source!r}, role={self.role!r}, train_net={t.name!r}, "
            f"inputs={[i.name for i in t.inputs]}, outputs={[o.name for o in t.outputs]})"
        )
