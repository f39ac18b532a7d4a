"""FLYamlData: one party's sub-network described in YAML, validated strictly.

The schema is MindSpore Federated's vertical YAML (their files load unchanged, apart from ``opts[].type``,
which names a ``torch.optim`` class or an optimizer registered with
:func:`splitlink.optim.register_optimizer`), plus what splitlink adds:

* ``deepspeed``: an inline DeepSpeed config mapping, or the path of a DeepSpeed JSON file (relative
  paths are relative to the YAML file);
* ``privacy.label_dp`` / ``privacy.embedding_dp`` options beyond ``eps`` (``seed``, ``id_key``,
  ``num_classes``; the Gaussian mechanism's ``clip_norm``, ``noise_multiplier``, ``delta``,
  ``num_samples``);
* ``compress_params`` next to ``compress_type``/``bit_num`` for the codec parameters MindSpore does not
  have (``block_size``, ``ratio``, ``stochastic``, ...).

Every problem in a file is reported at once, in one :class:`YamlConfigError` naming the file, the line,
the key path and what is allowed::

    invalid splitlink config leader_top.yaml (2 problems):
      line 12: model.train_net.inputs[2].bit_num: 9 is out of range; allowed: an integer 1..8
      line 40: opts[0].grads[0].output.name: 'los' is not an output of model.train_net (outputs: out, loss)
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitlink.codec import COMPRESS_TYPES, CompressConfig
from splitlink.errors import Problem, YamlConfigError

__all__ = ["FLYamlData", "YamlConfigError", "Problem"]

Loc = tuple[Union[str, int], ...]


_CompressType = Literal.__getitem__(tuple(COMPRESS_TYPES))  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    compress_type: _CompressType | None = None
    bit_num: int | None = Field(default=None, ge=1, le=8)
    compress_params: dict[str, Any] | None = None


class InputSpec(TensorSpec):
    source: Literal["local", "remote"] = "local"


class OutputSpec(TensorSpec):
    destination: Literal["local", "remote"] = "local"


class NetSpec(_Strict):
    name: str = Field(min_length=1)
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    gt: str | None = None


class ModelSpec(_Strict):
    train_net: NetSpec
    eval_net: NetSpec | None = None


class NameRef(_Strict):
    name: str = Field(min_length=1)


class GradSpec(_Strict):
    inputs: list[NameRef] = Field(min_length=1)
    output: NameRef
    sens: float | str = 1.0


class OptSpec(_Strict):
    type: str = Field(min_length=1)
    grads: list[GradSpec] = Field(min_length=1)
    params: list[NameRef] | None = None
    hyper_parameters: dict[str, Any] = Field(default_factory=dict)


class DatasetSpec(_Strict):
    name: str | None = None
    path: str | None = None
    features: list[str] | None = None
    labels: list[str] | None = None
    num_samples: int | None = Field(default=None, ge=1)


class HyperParameters(_Strict):
    """The training loop's settings. As in MindSpore Federated, the section and each key in it are optional
    (defaults: epochs 1, batch_size 1, is_eval False); many scripts take epochs and batch size from their own
    configuration. What is given must still be valid: unknown keys, wrong types and values < 1 are refused."""

    # strict: YAML gives real integers and booleans; ``epochs: true`` or ``batch_size: 2.5`` is a mistake.
    epochs: int = Field(default=1, ge=1, strict=True)
    batch_size: int = Field(default=1, ge=1, strict=True)
    is_eval: bool = Field(default=False, strict=True)


class LabelDPSpec(_Strict):
    eps: float = Field(ge=0)
    seed: int | None = Field(default=None, ge=0)
    id_key: str = "sample_id"
    num_classes: int | None = Field(default=None, ge=2)


class EmbeddingDPSpec(_Strict):
    mechanism: Literal["sign_rr", "gaussian"] = "sign_rr"
    eps: float | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0)
    clip_norm: float | None = Field(default=None, gt=0)
    noise_multiplier: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    num_samples: int | None = Field(default=None, ge=1)
    releases: int | None = Field(default=None, ge=1)


class PrivacySpec(_Strict):
    label_dp: LabelDPSpec | None = None
    embedding_dp: EmbeddingDPSpec | None = None


class RootSpec(_Strict):
    role: Literal["leader", "follower"]
    model: ModelSpec
    opts: list[OptSpec] = Field(default_factory=list)
    grad_scalers: list[GradSpec] = Field(default_factory=list)
    dataset: DatasetSpec | None = None
    hyper_parameters: HyperParameters = Field(default_factory=HyperParameters)
    privacy: PrivacySpec | None = None
    ckpt_path: str = "./checkpoints"
    deepspeed: dict[str, Any] | str | None = None


def _path_str(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class YamlLines:
    """Line numbers of every key path in a YAML document, and the problems the parser alone sees."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        if node is not None:
            self.lines[()] = node.start_mark.line + 1
            self._walk(node, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                sub = loc + (key,)
                if key in seen:
                    self.problems.append(Problem(key_node.start_mark.line + 1, _path_str(sub),
                                                 "duplicate key (YAML would silently keep only the last one)"))
                seen.add(key)
                self.lines.setdefault(sub, key_node.start_mark.line + 1)
                self._walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[loc + (i,)] = item.start_mark.line + 1
                self._walk(item, loc + (i,))

    def line(self, loc: Loc) -> int | None:
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return None


def _field_model(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``list[X] | None``."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _field_model(arg)
            if found is not None:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _model_at(loc: Loc, root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    model: Any = root or RootSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _field_model(model.model_fields[part].annotation)
    return model


def _describe_allowed(loc: Loc, root: type[BaseModel] | None = None) -> str:
    model = _model_at(loc, root)
    if model is None:
        return ""
    return "allowed keys: " + ", ".join(model.model_fields)


def _range_text(loc: Loc, fallback: str, root: type[BaseModel] | None = None) -> str:
    model = _model_at(loc[:-1], root)
    field = model.model_fields.get(str(loc[-1])) if model else None
    if field is None:
        return fallback.replace("Input should be ", "a number ")
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    kind = "an integer" if "int" in str(field.annotation) and "float" not in str(field.annotation) else "a number"
    if lo is not None and hi is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo} and {'<' if hi_open else '<='} {hi}" if (lo_open or hi_open) \
            else f"{kind} {lo}..{hi}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo}"
    return f"{kind} {'<' if hi_open else '<='} {hi}"


def pydantic_problems(err: ValidationError, lines: YamlLines, root: type[BaseModel] | None = None) -> list[Problem]:
    """Problems (line, key path, what is allowed) from a pydantic error on a YAML document."""
    problems: list[Problem] = []
    seen: set[tuple[Loc, str]] = set()
    for e in err.errors(include_url=False):
        loc: Loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "float"))))
        # Unions report each branch; keep one message per location.
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key; {_describe_allowed(loc[:-1], root)}"
        elif kind == "missing":
            sub = _model_at(loc, root)
            if sub is not None:
                req = [n for n, f in sub.model_fields.items() if f.is_required()]
                opt = [n for n, f in sub.model_fields.items() if not f.is_required()]
                msg = f"missing; required: a mapping with {', '.join(req)}" + (f" (optional: {', '.join(opt)})" if opt else "")
            else:
                msg = "missing (required)"
        elif loc and loc[-1] == "sens":
            msg = (f"wrong type ({type(e['input']).__name__} {e['input']!r}); expected a number (a constant sens) or "
                   "a string (the name of a sens tensor a peer sends)")
        elif kind == "literal_error":
            msg = f"{e['input']!r} is not allowed; {e['msg'].replace('Input should be', 'allowed:')}"
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            msg = f"{e['input']!r} is out of range; allowed: {_range_text(loc, e['msg'], root)}"
        elif kind in ("model_type", "model_attributes_type", "dict_type") and _model_at(loc, root) is not None:
            sub = _model_at(loc, root)
            assert sub is not None
            req = [n for n, f in sub.model_fields.items() if f.is_required()]
            opt = [n for n in sub.model_fields if n not in req]
            keys = (f"keys {', '.join(req)}" + (f" (optional: {', '.join(opt)})" if opt else "") if req
                    else f"the optional keys {', '.join(opt)}")
            msg = f"wrong type ({type(e['input']).__name__} {e['input']!r}); expected a mapping with {keys}"
            if not req:
                msg += "; leave the section out for the defaults"
        elif kind.endswith("_type") or kind.endswith("_parsing") or kind == "model_type":
            msg = f"wrong type ({type(e['input']).__name__} {e['input']!r}); {e['msg'].replace('Input should be', 'expected')}"
        elif kind == "too_short":
            msg = f"must not be empty ({e['msg']})"
        else:
            msg = e["msg"]
        if (loc, "x") in seen:
            continue
        seen.add((loc, "x"))
        problems.append(Problem(lines.line(loc), _path_str(loc), msg))
    return problems


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(d, Mapping):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and 0 <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _names(items: Any) -> list[tuple[int, str]]:
    if not isinstance(items, list):
        return []
    return [(i, it["name"]) for i, it in enumerate(items) if isinstance(it, Mapping) and isinstance(it.get("name"), str)]


# MindSpore hyper-parameter names accepted for torch optimizers.
HYPER_ALIASES = {"learning_rate": "lr"}
BETA_KEYS = ("beta1", "beta2")


def _cross_problems(raw: Mapping[str, Any], lines: YamlLines, base_dir: Path) -> list[Problem]:
    """Checks that need more than one key: names that must exist, duplicates, optimizer arguments."""
    out: list[Problem] = []

    def add(loc: Loc, msg: str) -> None:
        out.append(Problem(lines.line(loc), _path_str(loc), msg))

    nets: dict[str, tuple[list[str], list[str]]] = {}
    for net in ("train_net", "eval_net"):
        spec = _get(raw, "model", net)
        if not isinstance(spec, Mapping):
            continue
        ins, outs = _names(spec.get("inputs")), _names(spec.get("outputs"))
        for kind, items in (("inputs", ins), ("outputs", outs)):
            first: dict[str, int] = {}
            for i, name in items:
                if name in first:
                    add(("model", net, kind, i, "name"), f"duplicate {kind[:-1]} name {name!r} (also {kind}[{first[name]}])")
                first.setdefault(name, i)
            for i, item in enumerate(spec.get(kind) or []):
                if not isinstance(item, Mapping) or item.get("compress_type") is None:
                    continue
                params = item.get("compress_params") or {}
                try:
                    if isinstance(params, Mapping) and item.get("compress_type") in COMPRESS_TYPES:
                        bits = item.get("bit_num")
                        if isinstance(bits, int) and not 1 <= bits <= 8:
                            continue  # reported by the schema
                        CompressConfig(item["compress_type"], bit_num=bits, **params)
                except (TypeError, ValueError) as e:
                    add(("model", net, kind, i), f"compression settings rejected: {e}")
        nets[net] = ([n for _, n in ins], [n for _, n in outs])

    train_ins, train_outs = nets.get("train_net", (None, None))

    def check_grad(loc: Loc, grad: Any) -> None:
        if not isinstance(grad, Mapping) or train_ins is None or train_outs is None:
            return
        for j, name in _names(grad.get("inputs")):
            if name not in train_ins:
                add(loc + ("inputs", j, "name"),
                    f"{name!r} is not an input of model.train_net (inputs: {', '.join(train_ins)})")
        out_name = _get(grad, "output", "name")
        if isinstance(out_name, str) and out_name not in train_outs:
            add(loc + ("output", "name"),
                f"{out_name!r} is not an output of model.train_net (outputs: {', '.join(train_outs)})")

    opts = raw.get("opts")
    claimed: dict[str, int] = {}
    for i, opt in enumerate(opts if isinstance(opts, list) else []):
        if not isinstance(opt, Mapping):
            continue
        for j, grad in enumerate(opt.get("grads") or [] if isinstance(opt.get("grads"), list) else []):
            check_grad(("opts", i, "grads", j), grad)
        for j, name in _names(opt.get("params")):
            if name in claimed and claimed[name] != i:
                add(("opts", i, "params", j, "name"),
                    f"parameter selector {name!r} is also used by opts[{claimed[name]}]; a parameter has one optimizer")
            claimed.setdefault(name, i)
        kind = opt.get("type")
        if isinstance(kind, str):
            from splitlink.optim import resolve_optimizer, optimizer_kwargs

            try:
                cls = resolve_optimizer(kind)
            except ValueError as e:
                add(("opts", i, "type"), str(e))
                continue
            hp = opt.get("hyper_parameters")
            if isinstance(hp, Mapping):
                try:
                    optimizer_kwargs(cls, hp)
                except (TypeError, ValueError) as e:
                    bad = getattr(e, "key", None)
                    add(("opts", i, "hyper_parameters") + ((bad,) if bad else ()), str(e))
    if isinstance(opts, list) and len(opts) > 1:
        for i, opt in enumerate(opts):
            if isinstance(opt, Mapping) and not opt.get("params"):
                add(("opts", i), "with several optimizers each must select its parameters with 'params'")

    scalers = raw.get("grad_scalers")
    seen_out: dict[str, int] = {}
    for i, sc in enumerate(scalers if isinstance(scalers, list) else []):
        check_grad(("grad_scalers", i), sc)
        name = _get(sc, "output", "name")
        if isinstance(name, str):
            if name in seen_out:
                add(("grad_scalers", i, "output", "name"),
                    f"two grad_scalers return {name!r} (also grad_scalers[{seen_out[name]}]); their results would collide")
            seen_out.setdefault(name, i)

    privacy = raw.get("privacy")
    if isinstance(privacy, Mapping):
        if privacy.get("label_dp") is not None and raw.get("role") == "follower":
            add(("privacy", "label_dp"), "label DP protects the labels the leader holds; only role: leader may set it")
        if privacy.get("label_dp") is not None:
            gt = _get(raw, "model", "eval_net", "gt")
            if not isinstance(gt, str):
                add(("privacy", "label_dp"), "label DP needs model.eval_net.gt to name the label input it randomises")
            elif train_ins is not None and gt not in train_ins:
                add(("model", "eval_net", "gt"),
                    f"label DP randomises {gt!r}, which is not an input of model.train_net (inputs: {', '.join(train_ins)})")
        edp = privacy.get("embedding_dp")
        if isinstance(edp, Mapping):
            mech = edp.get("mechanism", "sign_rr")
            if mech == "sign_rr" and edp.get("eps") is None:
                add(("privacy", "embedding_dp", "eps"), "missing: the sign randomized-response mechanism needs eps >= 0")
            if mech == "sign_rr":
                for k in ("clip_norm", "noise_multiplier", "delta", "num_samples", "releases"):
                    if edp.get(k) is not None:
                        add(("privacy", "embedding_dp", k), "applies to mechanism: gaussian only")
            if mech == "gaussian":
                if edp.get("clip_norm") is None:
                    add(("privacy", "embedding_dp", "clip_norm"), "missing: the Gaussian mechanism clips each sample to this L2 norm")
                if edp.get("delta") is None:
                    add(("privacy", "embedding_dp", "delta"), "missing: the Gaussian mechanism needs delta (e.g. 1.e-5)")
                if (edp.get("eps") is None) == (edp.get("noise_multiplier") is None):
                    add(("privacy", "embedding_dp"), "give exactly one of eps (noise derived by the RDP accountant) or noise_multiplier")
            if train_outs is not None and not any(
                isinstance(o, Mapping) and o.get("destination") == "remote" for o in _get(raw, "model", "train_net", "outputs") or []
            ):
                add(("privacy", "embedding_dp"), "embedding DP applies to outputs with destination: remote, and train_net has none")

    ds = raw.get("deepspeed")
    if isinstance(ds, str):
        p = Path(ds) if os.path.isabs(ds) else base_dir / ds
        if not p.is_file():
            add(("deepspeed",), f"DeepSpeed config file {str(p)!r} does not exist; give a JSON file or an inline mapping")
        else:
            try:
                cfg = json.loads(p.read_text())
                if not isinstance(cfg, dict):
                    raise ValueError("the top level must be an object")
            except ValueError as e:
                add(("deepspeed",), f"DeepSpeed config file {str(p)!r} is not a JSON object: {e}")
    if isinstance(ds, (str, Mapping)) and isinstance(opts, list) and len(opts) > 1:
        add(("deepspeed",), "a DeepSpeed engine has one optimizer; opts lists several")
    return out


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file; a missing file or one that is not UTF-8 is named as ``what``."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise YamlConfigError(str(path), [Problem(None, "", f"not UTF-8 text ({e})")]) from None


def parse_yaml_document(text: str, source: str) -> tuple[Any, YamlLines]:
    """``yaml.safe_load`` of ``text`` plus its node tree for line numbers; invalid YAML is one
    ``YamlConfigError`` naming ``source`` and the line. The one reader of FLYamlData and run files."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = f"not valid YAML: {getattr(e, 'problem', None) or e}"
        raise YamlConfigError(source, [Problem(line, "", msg)]) from None
    return raw, YamlLines(node)


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
            problems.append(Problem(lines.line(()), "", f"the document must be a mapping with keys {', '.join(RootSpec.model_fields)}; got {type(raw).__name__}"))
            raise YamlConfigError(source, problems)
        spec: RootSpec | None = None
        try:
            spec = RootSpec.model_validate(raw)
        except ValidationError as e:
            problems.extend(pydantic_problems(e, lines))
        problems.extend(_cross_problems(raw, lines, base))
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
            items: Iterator[TensorSpec] = iter([*(i for i in net.inputs if i.source == "remote"),
                                                 *(o for o in net.outputs if o.destination == "remote")])
            for t in items:
                if t.compress_type is not None and t.name not in out:
                    out[t.name] = CompressConfig(t.compress_type, bit_num=t.bit_num, **(t.compress_params or {}))
        return out

    def __repr__(self) -> str:
        t = self.train_net
        return (f"FLYamlData({self.source!r}, role={self.role!r}, train_net={t.name!r}, "
                f"inputs={[i.name for i in t.inputs]}, outputs={[o.name for o in t.outputs]})")

