"""The cross-field checks of a sub-network YAML: what pydantic's per-field schema cannot see (names that
must refer to each other, sizes that must agree, files that must exist)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from splitlink.codec import COMPRESS_TYPES, CompressConfig
from splitlink.config.yaml_errors import Loc, YamlLines, path_str
from splitlink.errors import Problem


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


def cross_problems(raw: Mapping[str, Any], lines: YamlLines, base_dir: Path) -> list[Problem]:
    """Checks that need more than one key: names that must exist, duplicates, optimizer arguments."""
    out: list[Problem] = []

    def add(loc: Loc, msg: str) -> None:
        out.append(Problem(lines.line(loc), path_str(loc), msg))

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
                add(loc + ("inputs", j, "name"), f"{name!r} is not an input of model.train_net (inputs: {', '.join(train_ins)})")
        out_name = _get(grad, "output", "name")
        if isinstance(out_name, str) and out_name not in train_outs:
            add(loc + ("output", "name"), f"{out_name!r} is not an output of model.train_net (outputs: {', '.join(train_outs)})")

    opts = raw.get("opts")
    claimed: dict[str, int] = {}
    for i, opt in enumerate(opts if isinstance(opts, list) else []):
        if not isinstance(opt, Mapping):
            continue
        for j, grad in enumerate(opt.get("grads") or [] if isinstance(opt.get("grads"), list) else []):
            check_grad(("opts", i, "grads", j), grad)
        for j, name in _names(opt.get("params")):
            if name in claimed and claimed[name] != i:
                add(
                    ("opts", i, "params", j, "name"),
                    f"parameter selector {name!r} is also used by opts[{claimed[name]}]; a parameter has one optimizer",
                )
            claimed.setdefault(name, i)
        opt_type = opt.get("type")
        if isinstance(opt_type, str):
            from splitlink.optim import optimizer_kwargs, resolve_optimizer

            try:
                cls = resolve_optimizer(opt_type)
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
                add(
                    ("grad_scalers", i, "output", "name"),
                    f"two grad_scalers return {name!r} (also grad_scalers[{seen_out[name]}]); their results would collide",
                )
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
                add(
                    ("model", "eval_net", "gt"),
                    f"label DP randomises {gt!r}, which is not an input of model.train_net (inputs: {', '.join(train_ins)})",
                )
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
                    add(
                        ("privacy", "embedding_dp", "clip_norm"),
                        "missing: the Gaussian mechanism clips each sample to this L2 norm",
                    )
                if edp.get("delta") is None:
                    add(("privacy", "embedding_dp", "delta"), "missing: the Gaussian mechanism needs delta (e.g. 1.e-5)")
                if (edp.get("eps") is None) == (edp.get("noise_multiplier") is None):
                    add(
                        ("privacy", "embedding_dp"),
                        "give exactly one of eps (noise derived by the RDP accountant) or noise_multiplier",
                    )
            if train_outs is not None and not any(
                isinstance(o, Mapping) and o.get("destination") == "remote"
                for o in _get(raw, "model", "train_net", "outputs") or []
            ):
                add(
                    ("privacy", "embedding_dp"),
                    "embedding DP applies to outputs with destination: remote, and train_net has none",
                )

    if isinstance(privacy, Mapping):
        _gradient_defence_problems(raw, privacy, train_ins, add)
    _party_problems(raw, add)

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


def _gradient_defence_problems(raw: Mapping[str, Any], privacy: Mapping[str, Any], train_ins: list[str] | None, add: Any) -> None:
    """privacy.grad_norm and privacy.marvell act on the gradients this party sends for remote inputs."""
    gn, mv = privacy.get("grad_norm"), privacy.get("marvell")
    if isinstance(gn, Mapping):
        mode = gn.get("mode")
        if mode == "clip" and (gn.get("norm") is None) == (gn.get("quantile") is None):
            add(
                ("privacy", "grad_norm"),
                "mode: clip needs exactly one of norm (an absolute L2 norm) or quantile "
                "(of the batch's per-sample norms, e.g. 0.5)",
            )
        if mode == "normalize" and gn.get("quantile") is not None:
            add(
                ("privacy", "grad_norm", "quantile"),
                "applies to mode: clip only (normalize takes an optional norm; without one, the batch's mean per-sample norm)",
            )
    if mv is not None and raw.get("role") != "leader":
        add(("privacy", "marvell"), "Marvell noise protects the labels the leader holds; only role: leader may set it")
    if isinstance(mv, Mapping) and raw.get("role") == "leader":
        gt = _get(raw, "model", "eval_net", "gt")
        if not isinstance(gt, str):
            add(("privacy", "marvell"), "Marvell noise needs model.eval_net.gt to name the (binary) label input")
        elif train_ins is not None and gt not in train_ins:
            add(
                ("model", "eval_net", "gt"),
                f"Marvell noise reads the labels from {gt!r}, which is not an input of model.train_net "
                f"(inputs: {', '.join(train_ins)})",
            )
    if gn is None and (mv is None or raw.get("role") != "leader"):
        return
    remote = [
        i.get("name")
        for i in _get(raw, "model", "train_net", "inputs") or []
        if isinstance(i, Mapping) and i.get("source") == "remote"
    ]
    scaled = {n for sc in raw.get("grad_scalers") or [] if isinstance(sc, Mapping) for _, n in _names(sc.get("inputs"))}
    if train_ins is not None and not any(n in scaled for n in remote):
        key = "grad_norm" if gn is not None else "marvell"
        add(
            ("privacy", key),
            "gradient defences act on the gradients sent back for inputs with source: remote, and "
            "no grad_scalers entry returns the gradient of one "
            f"(remote inputs: {', '.join(map(str, remote)) or 'none'})",
        )


_PARTY_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def _party_problems(raw: Mapping[str, Any], add: Any) -> None:
    """N parties: ``followers`` and the ``party``/``aggregate``/``secure`` keys of remote inputs."""
    followers = raw.get("followers")
    names: list[str] = []
    if followers is not None:
        if raw.get("role") != "leader":
            add(("followers",), "only the leader lists followers (a follower's YAML names no other party)")
        first: dict[str, int] = {}
        for i, f in enumerate(followers if isinstance(followers, list) else []):
            if not isinstance(f, str):
                continue  # reported by the schema
            if not re.match(_PARTY_NAME, f) or f == "leader":
                add(("followers", i), f"{f!r} is not a usable party name: 1-64 of A-Z a-z 0-9 _ . - and not 'leader'")
            if f in first:
                add(("followers", i), f"follower {f!r} is listed twice (also followers[{first[f]}])")
            first.setdefault(f, i)
        names = list(first)
    used: set[str] = set()
    train_specs: dict[str, tuple[Any, Any, Any]] = {}
    for net in ("train_net", "eval_net"):
        ins = _get(raw, "model", net, "inputs")
        for i, item in enumerate(ins if isinstance(ins, list) else []):
            if not isinstance(item, Mapping):
                continue
            loc: Loc = ("model", net, "inputs", i)
            party, agg, secure = item.get("party"), item.get("aggregate"), item.get("secure", False)
            remote = item.get("source") == "remote"
            n_keys = [k for k in ("party", "aggregate", "secure", "frac_bits") if k in item]
            if not remote:
                for k in n_keys:
                    add(loc + (k,), f"applies to inputs with source: remote only ({item.get('name')!r} is local)")
                continue
            if party is None:
                if followers is not None:
                    add(loc, f"missing: party, the follower that sends {item.get('name')!r} (one of: {', '.join(names)})")
                for k in n_keys:
                    add(loc + (k,), "applies to an input that names its party (or parties) only")
                continue
            plist = [party] if isinstance(party, str) else party if isinstance(party, list) else []
            if followers is None:
                add(
                    loc + ("party",),
                    "names a follower, but the YAML lists no followers: add 'followers: [...]' with every follower's name",
                )
            seen: dict[str, int] = {}
            for j, p in enumerate(plist):
                if not isinstance(p, str):
                    continue
                at = loc + (("party", j) if isinstance(party, list) else ("party",))
                if p in seen:
                    add(at, f"follower {p!r} is listed twice (also party[{seen[p]}])")
                seen.setdefault(p, j)
                if followers is not None and p not in names:
                    add(at, f"{p!r} is not a follower (followers: {', '.join(names)})")
                used.add(p)
            several = isinstance(party, list) and len(plist) > 1
            if several and agg is None:
                add(loc, f"missing: aggregate (concat, sum or mean) for {item.get('name')!r}, sent by {len(plist)} followers")
            if agg is not None and not several:
                add(loc + ("aggregate",), "combines the tensors of several followers: list them in party")
            if secure is True:
                if agg not in ("sum", "mean"):
                    add(loc + ("secure",), "secure aggregation masks a sum: aggregate must be sum or mean")
                elif len(plist) < 2:
                    add(
                        loc + ("secure",),
                        "secure aggregation needs at least 2 followers (one follower's sum is its own embedding)",
                    )
            elif "frac_bits" in item:
                add(loc + ("frac_bits",), "applies with secure: true only (the fixed-point precision of the masks)")
            key = (tuple(plist), agg, bool(secure))
            name = item.get("name")
            if net == "train_net" and isinstance(name, str):
                train_specs[name] = key
            elif net == "eval_net" and isinstance(name, str) and name in train_specs and train_specs[name] != key:
                add(
                    loc,
                    f"{name!r} has party/aggregate/secure {key} here but {train_specs[name]} in model.train_net; "
                    "the eval network receives it the same way",
                )
    for i, f in enumerate(names):
        if f not in used:
            add(("followers", i), f"follower {f!r} sends nothing: no remote input names it in party")
