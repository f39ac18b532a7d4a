"""FLModel, the facade (see :mod:`splitlink.model` for the semantics)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from splitlink.codec import CompressConfig
from splitlink.config import FLYamlData
from splitlink.errors import CheckpointError
from splitlink.model import checkpoint_io
from splitlink.model.device import module_device, to_device
from splitlink.model.engine import (
    EngineOutputHooks,
    ObjectiveGrad,
    hooked_tensors,
    in_engine,
    initialize_engine,
    vjp_past_engine_hooks,
)
from splitlink.model.graph import (
    Consumer,
    Term,
    WithLoss,
    as_tensor,
    forward_arity,
    reachable,
    weighted_roots,
)
from splitlink.optim import build_optimizer, optimizer_kwargs, resolve_optimizer
from splitlink.privacy import GaussianEmbeddingDP, GradientNormDefence, LabelDP, MarvellNoise, SignEmbeddingDP

__all__ = ["FLModel", "CheckpointError"]

log = logging.getLogger("splitlink.model")


class FLModel:
    """One party's sub-network (see the module docstring for the semantics).

    Args:
        yaml_data: the sub-network's :class:`FLYamlData` (or a path to its YAML file).
        network: a ``torch.nn.Module`` whose ``forward`` takes the train_net inputs in YAML order.
        loss_fn: optional; the train network becomes ``loss_fn(*network(*inputs[:-1]), inputs[-1])`` and
            its outputs the network's outputs followed by the loss (or only the loss when the YAML lists
            one output).
        optimizers: optional ``torch.optim`` instances, one per YAML ``opts`` entry (same order);
            by default they are built from the YAML.
        metrics: optional object with ``update(*eval_outputs, ground_truth)``, fed by ``eval_one_step``.
        eval_network: the network ``eval_one_step`` runs (default: ``network``).
        deepspeed_config: a DeepSpeed config (mapping or JSON path); overrides the YAML's ``deepspeed``.
    """

    def __init__(
        self,
        yaml_data: FLYamlData | str | os.PathLike[str],
        network: nn.Module,
        loss_fn: Any = None,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        metrics: Any = None,
        eval_network: nn.Module | None = None,
        deepspeed_config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ) -> None:
        self.yaml = yaml_data if isinstance(yaml_data, FLYamlData) else FLYamlData(yaml_data)
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        y = self.yaml
        self.name = y.train_net.name
        self._in_names = [i.name for i in y.train_net_ins]
        self._out_names = [o.name for o in y.train_net_outs]
        self._remote_outs = {o.name for o in y.train_net_outs if o.destination == "remote"}
        self._remote_ins = {i.name for i in y.train_net_ins if i.source == "remote"}
        self._eval_remote_ins = {i.name for i in y.eval_net_ins if i.source == "remote"}
        self._remote_sig: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._remote_at = [(k, n) for k, n in enumerate(self._in_names) if n in self._remote_ins]
        float_dtypes = {p.dtype for p in network.parameters() if p.is_floating_point()}
        self._compute_dtype: torch.dtype | None = float_dtypes.pop() if len(float_dtypes) == 1 else None
        self.network = network
        self.metrics = metrics
        if loss_fn is not None:
            self.train_network: nn.Module = WithLoss(
                network, loss_fn, len(self._in_names) - 1, keep_outputs=len(self._out_names) > 1
            )
            arity, expected, what = forward_arity(network), len(self._in_names) - 1, "network (loss_fn takes the last input)"
        else:
            self.train_network = network
            arity, expected, what = forward_arity(network), len(self._in_names), "network"
        if arity is not None and arity != expected:
            raise ValueError(
                f"{self.yaml.source}: model.train_net {self.name!r} lists {expected} input(s) for the "
                f"{what} ({', '.join(self._in_names)}) but {type(network).__name__}.forward takes {arity}"
            )
        self.eval_network = eval_network if eval_network is not None else network

        self._consumers: list[Consumer] = []
        self.step = 0
        self._pending: dict[str, Any] | None = None
        self._accumulated = 0  # micro-batch backwards accumulated since the last optimizer step
        self._one_pass: bool | None = None
        self.recheck_graph = False

        ds_cfg: Any = deepspeed_config
        if ds_cfg is None:
            ds_cfg = y.deepspeed_config()
        elif not isinstance(ds_cfg, Mapping):
            import json

            ds_cfg = json.loads(Path(ds_cfg).read_text())
        self.engine: Any = None
        self._engine_dtype: torch.dtype | None = None
        self.optimizers = self._build_optimizers(optimizers)
        self._scaler_inputs = {i.name for s in y.grad_scalers for i in s.inputs}
        for k, sc in enumerate(y.grad_scalers):
            self._consumers.append(Consumer("scaler", k, [(sc.output.name, sc.sens)], inputs=tuple(i.name for i in sc.inputs)))
        self._terms: list[Term] = list(OrderedDict.fromkeys(t for c in self._consumers for t in c.terms))
        self._same_terms = len({tuple(sorted(map(str, c.terms))) for c in self._consumers}) <= 1
        # Every parameter has an optimizer (frozen ones too: they may be unfrozen later): a one-pass
        # backward may then accumulate into all the leaves it reaches, as loss.backward() does, without
        # naming them (cheaper in the engine).
        owned = {id(p) for ps in self._opt_params for p in ps}
        self._all_owned = all(id(p) in owned for p in self.train_network.parameters())
        if ds_cfg is not None:
            self._init_deepspeed(dict(ds_cfg))

        # Privacy from the YAML.
        priv = y.privacy
        self.label_dp: LabelDP | None = None
        self.embedding_dp: SignEmbeddingDP | GaussianEmbeddingDP | None = None
        if priv and priv.label_dp:
            self.label_dp = LabelDP(priv.label_dp.eps, seed=priv.label_dp.seed, num_classes=priv.label_dp.num_classes)
            self._label_name = y.eval_net_gt
            self._id_key = priv.label_dp.id_key
            log.info(
                "%s: label DP on %r, eps=%g (flip probability %.4f)",
                self.name,
                self._label_name,
                priv.label_dp.eps,
                self.label_dp.flip_probability(),
            )
        if priv and priv.embedding_dp:
            e = priv.embedding_dp
            if e.mechanism == "sign_rr":
                assert e.eps is not None
                self.embedding_dp = SignEmbeddingDP(e.eps, seed=e.seed)
            else:
                assert e.clip_norm is not None and e.delta is not None
                num = e.num_samples or (y.dataset.num_samples if y.dataset else None)
                self.embedding_dp = GaussianEmbeddingDP(
                    clip_norm=e.clip_norm,
                    delta=e.delta,
                    noise_multiplier=e.noise_multiplier,
                    eps=e.eps,
                    releases=e.releases or y.epochs,
                    num_samples=num,
                    seed=e.seed,
                )
            log.info("%s: embedding DP (%s) on %s", self.name, e.mechanism, ", ".join(sorted(self._remote_outs)))
        # Gradient defences on what is sent back for remote inputs (privacy.grad_norm, then privacy.marvell).
        self.grad_norm: GradientNormDefence | None = None
        self.marvell: MarvellNoise | None = None
        if priv and priv.grad_norm:
            self.grad_norm = GradientNormDefence(priv.grad_norm.mode, norm=priv.grad_norm.norm, quantile=priv.grad_norm.quantile)
        if priv and priv.marvell:
            self.marvell = MarvellNoise(priv.marvell.scale, seed=priv.marvell.seed)
            assert y.eval_net_gt is not None  # (checked with the YAML)
            self._marvell_label: str = y.eval_net_gt

    # Construction -------------------------------------------------------------------------------
    def _build_optimizers(self, given: Any) -> list[torch.optim.Optimizer]:
        y = self.yaml
        specs = y.opts
        if given is not None:
            opts = [given] if isinstance(given, torch.optim.Optimizer) else list(given)
            if len(opts) != len(specs):
                raise ValueError(
                    f"{y.source}: {len(opts)} optimizer(s) given but the YAML's opts lists {len(specs)}; "
                    "give one per opts entry, in order"
                )
            for j, (opt, spec) in enumerate(zip(opts, specs)):
                _, ls = optimizer_kwargs(type(opt), {k: v for k, v in spec.hyper_parameters.items() if k == "loss_scale"})
                self._consumers.append(Consumer("opt", j, [(g.output.name, g.sens) for g in spec.grads], ls))
            self._opt_params = [[p for g in o.param_groups for p in g["params"]] for o in opts]
            return opts
        named = [(n, p) for n, p in self.train_network.named_parameters() if p.requires_grad]
        owner: dict[int, int] = {}
        opts = []
        self._opt_params = []
        for j, spec in enumerate(specs):
            if spec.params:
                chosen = []
                unmatched = []
                for sel in spec.params:
                    hits = [(n, p) for n, p in named if sel.name in n]
                    if not hits:
                        unmatched.append(sel.name)
                    chosen.extend(hits)
                sample = ", ".join(n for n, _ in named[:12]) + (", ..." if len(named) > 12 else "")
                if not chosen:
                    raise ValueError(
                        f"{y.source}: opts[{j}].params selectors {', '.join(map(repr, unmatched))} match "
                        f"no trainable parameter of {type(self.network).__name__} (parameters: {sample})"
                    )
                if unmatched:
                    log.warning(
                        "%s: opts[%d].params selector(s) %s match no parameter of %s (parameters: %s)",
                        y.source,
                        j,
                        ", ".join(map(repr, unmatched)),
                        type(self.network).__name__,
                        sample,
                    )
            else:
                chosen = list(named)
            params: list[torch.nn.Parameter] = []
            for n, p in chosen:
                if id(p) in owner and owner[id(p)] != j:
                    raise ValueError(
                        f"{y.source}: parameter {n!r} is selected by opts[{owner[id(p)]}] and opts[{j}]; "
                        "a parameter has one optimizer"
                    )
                if id(p) not in owner:
                    owner[id(p)] = j
                    params.append(p)
            cls = resolve_optimizer(spec.type)
            kwargs, ls = optimizer_kwargs(cls, spec.hyper_parameters)
            opts.append(build_optimizer(cls, params, kwargs))
            self._opt_params.append(params)
            self._consumers.append(Consumer("opt", j, [(g.output.name, g.sens) for g in spec.grads], ls))
        return opts

    def _init_deepspeed(self, cfg: dict[str, Any]) -> None:
        if len(self.optimizers) != 1:
            raise ValueError(
                f"{self.yaml.source}: a DeepSpeed engine takes one optimizer; the YAML's opts lists {len(self.optimizers)}"
            )
        selected = {id(p) for p in self._opt_params[0]}
        for p in self.train_network.parameters():
            if id(p) not in selected:
                p.requires_grad_(False)  # not the optimizer's: DeepSpeed must not own or update it
        e = initialize_engine(self.train_network, self.optimizers[0], cfg, micro_batch_size=self.yaml.batch_size)
        self.engine = e.engine
        self.optimizers = [e.optimizer]
        self._gas = e.gradient_accumulation_steps
        self._prescale_fp16 = e.prescale_fp16
        self._engine_dtype = e.dtype

    # Inputs and outputs -------------------------------------------------------------------------
    @staticmethod
    def _merge(local: Mapping[str, Any] | None, remote: Mapping[str, Any] | None) -> Mapping[str, Any]:
        for part in (local, remote):
            if part is not None and not isinstance(part, Mapping):
                raise TypeError(f"data batches are mappings of name -> tensor, got {type(part).__name__}")
        if remote is None:
            return local if local is not None else {}
        if local is None:
            return remote
        return {**local, **remote}

    def _gather(self, batch: Mapping[str, Any], names: list[str], net: str) -> list[Any]:
        try:
            return [batch[n] for n in names]
        except KeyError:
            missing = [n for n in names if n not in batch]
            raise KeyError(
                f"{self.yaml.source}: model.{net} input(s) {', '.join(map(repr, missing))} missing from the "
                f"data batches (they hold: {', '.join(map(str, batch)) or 'nothing'})"
            ) from None

    @property
    def device(self) -> torch.device:
        """Where this party computes: its DeepSpeed engine's device, else its network's (first
        parameter's). Batches and a peer's tensors are moved here; outputs and grad scales are here."""
        if self.engine is not None:
            return torch.device(self.engine.device)
        return module_device(self.train_network)

    def _prepare(self, name: str, value: Any, device: torch.device | None = None) -> torch.Tensor:
        t = value if type(value) is torch.Tensor else as_tensor(name, value)
        t = cast(torch.Tensor, to_device(t, self.device if device is None else device))
        wants_grad = name in self._scaler_inputs
        if t.requires_grad or wants_grad:
            t = t.detach()  # this sub-network's graph starts here
        if t.is_floating_point():
            if self._engine_dtype is not None:
                t = t.to(self._engine_dtype)
            elif self._compute_dtype is not None and t.dtype != self._compute_dtype and name in self._remote_ins:
                # A peer's activations in its own precision (a bf16 backbone's hidden states): computed
                # here in this network's; the gradient goes back in the peer's (_scale_results).
                t = t.to(self._compute_dtype)
            if wants_grad:
                t.requires_grad_(True)
        return t

    def _check_remote(self, inputs: list[Any]) -> None:
        """A peer's tensor must keep the dtype and the non-batch shape it had at the first step (checked
        as received, before any cast)."""
        for i, name in self._remote_at:
            x = inputs[i]
            first = self._remote_sig.get(name)
            if first is None:
                self._remote_sig[name] = (x.dtype, tuple(x.shape[1:]))
            elif x.dtype != first[0] or x.shape[1:] != first[1]:
                raise ValueError(
                    f"{self.yaml.source}: remote input {name!r} from the peer has dtype {x.dtype} and shape "
                    f"{tuple(x.shape)}, but it had dtype {first[0]} and shape (batch, {', '.join(map(str, first[1]))}) "
                    "at the first step: the peer sent a tensor of the wrong shape or dtype (is it running the same "
                    "model configuration?)"
                )

    def _outputs(self, result: Any, names: list[str], net: str) -> list[torch.Tensor]:
        if isinstance(result, Mapping):
            if list(result) != names and set(result) != set(names):
                raise ValueError(f"{self.yaml.source}: model.{net} outputs are {names} but the network returned {list(result)}")
            return [result[n] for n in names]
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(outs) != len(names):
            raise ValueError(
                f"{self.yaml.source}: model.{net} lists {len(names)} output(s) ({', '.join(names)}) but "
                f"the network returned {len(outs)}"
            )
        return outs

    # Steps --------------------------------------------------------------------------------------
    def forward_one_step(
        self, local_data_batch: Mapping[str, Any] | None = None, remote_data_batch: Mapping[str, Any] | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Runs the train network on one batch, keeping the graph for ``backward_one_step``."""
        batch = self._merge(local_data_batch, remote_data_batch)
        originals = self._gather(batch, self._in_names, "train_net")
        self._check_remote(originals)
        device = self.device
        inputs = [self._prepare(n, v, device) for n, v in zip(self._in_names, originals)]
        if self.label_dp is not None and self._label_name in self._in_names:
            if self._id_key not in batch:
                raise KeyError(
                    f"{self.yaml.source}: label DP randomises each label once per sample id, and the batch "
                    f"has no {self._id_key!r} (privacy.label_dp.id_key); add the sample ids to the batch"
                )
            i = self._in_names.index(self._label_name)
            inputs[i] = self.label_dp(inputs[i], batch[self._id_key])
        module = self.engine if self.engine is not None else self.train_network
        if not module.training:  # train() walks every submodule: not on each step
            module.train()
        if self.engine is not None:
            with in_engine():
                result = module(*inputs)
        else:
            result = module(*inputs)
        outs = self._outputs(result, self._out_names, "train_net")
        if self.embedding_dp is not None:
            outs = [
                self.embedding_dp(o) if n in self._remote_outs and o.is_floating_point() else o
                for n, o in zip(self._out_names, outs)
            ]
        self._pending = {
            "originals": originals,
            "inputs": inputs,
            "outputs": outs,
            "hooked": hooked_tensors(result) if self.engine is not None else [],
        }
        return OrderedDict(zip(self._out_names, outs))

    def _same_batch(self, local: Mapping[str, Any] | None, remote: Mapping[str, Any] | None) -> bool:
        if self._pending is None:
            return False
        if local is None and remote is None:
            return True
        batch = self._merge(local, remote)
        return all(batch.get(n, o) is o for n, o in zip(self._in_names, self._pending["originals"]))

    def _sens(self, term: Term, out: torch.Tensor, sens: Mapping[str, Any] | None, weight: float = 1.0) -> torch.Tensor:
        name, s = term
        if not isinstance(s, str):
            return torch.full_like(out, float(s) * weight if weight != 1.0 else float(s), memory_format=torch.contiguous_format)
        if sens is None or s not in sens:
            raise KeyError(
                f"{self.yaml.source}: the gradient of output {name!r} is weighted by sens {s!r}, so "
                f"backward_one_step needs sens={{{s!r}: {{{name!r}: tensor}}}}; "
                f"got {'no sens' if sens is None else 'keys ' + ', '.join(map(repr, sens))}"
            )
        inner = sens[s]
        if not isinstance(inner, Mapping) or name not in inner:
            keys = ", ".join(map(repr, inner)) if isinstance(inner, Mapping) else type(inner).__name__
            raise KeyError(f"{self.yaml.source}: sens[{s!r}] has no tensor for output {name!r} (it holds {keys})")
        g = as_tensor(f"sens[{s!r}][{name!r}]", inner[name])
        if tuple(g.shape) != tuple(out.shape):
            raise ValueError(f"sens[{s!r}][{name!r}] has shape {tuple(g.shape)} but output {name!r} has shape {tuple(out.shape)}")
        if not g.is_floating_point():
            raise TypeError(f"sens[{s!r}][{name!r}] has dtype {g.dtype}; gradients are floating point")
        return g.to(device=out.device, dtype=out.dtype)

    def backward_one_step(
        self,
        local_data_batch: Mapping[str, Any] | None = None,
        remote_data_batch: Mapping[str, Any] | None = None,
        sens: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        step: bool = True,
        loss_weight: float = 1.0,
    ) -> dict[str, OrderedDict[str, torch.Tensor]]:
        """One backward pass, optimizer steps, and the grad scale ``{scaler_output: {input: grad}}``.

        Micro-batches (gradient accumulation): ``step=False`` adds this batch's parameter gradients to
        those accumulated since the last optimizer step and does not step (nor count a step);
        :meth:`optimizer_step` (or a last ``backward_one_step`` with ``step=True``) steps on the sum.
        ``loss_weight`` multiplies the gradients of this network's own losses (outputs whose ``sens`` is
        a number): for mean-reduced losses, micro-batch rows / batch rows makes the accumulated gradient
        the full batch's. Gradients that come as ``sens`` tensors are the peer's, already weighted.
        """
        if not math.isfinite(loss_weight) or loss_weight <= 0.0:
            raise ValueError(f"loss_weight must be a positive finite number, got {loss_weight!r}")
        if not self._same_batch(local_data_batch, remote_data_batch):
            self.forward_one_step(local_data_batch, remote_data_batch)
        assert self._pending is not None
        pending, self._pending = self._pending, None
        outs = dict(zip(self._out_names, pending["outputs"]))
        inputs = dict(zip(self._in_names, pending["inputs"]))
        originals = dict(zip(self._in_names, pending["originals"]))
        grads_out = {t: self._sens(t, outs[t[0]], sens, loss_weight) for t in self._terms}
        if self.engine is not None:
            input_grads = self._backward_deepspeed(outs, inputs, grads_out, pending["hooked"], boundary=step)
        elif step and not self._accumulated:
            input_grads = self._backward_plain(outs, inputs, grads_out)
        else:
            # accumulation: this micro-batch's gradients computed as a lone batch's (loss_scale
            # division included), then added to the sum so far, in micro-batch order
            prior = self._take_grads()
            input_grads = self._backward_plain(outs, inputs, grads_out, step=False)
            self._add_grads(prior)
            if step:
                self._step_plain()
        if step:
            self._accumulated = 0
        else:
            self._accumulated += 1
        scaled = self._scale_results(inputs, input_grads, originals)
        if self.grad_norm is not None or self.marvell is not None:
            scaled = self._defend_sent_grads(scaled, inputs)
        if step:
            self.step += 1
        return scaled

    def optimizer_step(self) -> None:
        """Steps the optimizers on the gradients accumulated by ``backward_one_step(step=False)`` and
        counts a step (plain torch; under DeepSpeed pass ``step=True`` to the last micro-batch's backward)."""
        if not self._accumulated:
            raise RuntimeError(
                f"{self.name}: optimizer_step() without accumulated gradients; call "
                "backward_one_step(..., step=False) for each micro-batch first"
            )
        if self.engine is not None:
            # ZeRO reduces the accumulated gradients during the boundary's backward, not in step()
            raise RuntimeError(
                f"{self.name}: under DeepSpeed the last micro-batch's backward_one_step(step=True) "
                "is the accumulation boundary (the engine reduces the gradients in that backward); "
                "optimizer_step() cannot stand in for it"
            )
        self._step_plain()
        self._accumulated = 0
        self.step += 1

    def take_pending(self) -> Any:
        """The graph of the last ``forward_one_step`` (not yet backpropagated), detached from this model so
        that other micro-batches can run forward; :meth:`put_pending` puts it back before its backward."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError(f"{self.name}: take_pending() with no forward_one_step pending")
        return pending

    def put_pending(self, pending: Any) -> None:
        self._pending = pending

    def discard_accumulation(self) -> None:
        """Drops the gradients of micro-batches accumulated without a step (a step interrupted by a peer's
        restart: the party reloads a checkpoint and redoes the step from its first micro-batch)."""
        if not self._accumulated:
            return
        self._accumulated = 0
        self._pending = None
        if self.engine is not None:
            self.engine.set_gradient_accumulation_boundary(True)
            self.engine.zero_grad()
        else:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)

    def _take_grads(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        prior = {}
        for ps in self._opt_params:
            for p in ps:
                if p.grad is not None:
                    prior[id(p)] = (p, p.grad)
                    p.grad = None
        return prior

    @staticmethod
    def _add_grads(prior: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for p, g in prior.values():
            p.grad = g if p.grad is None else g.add_(p.grad)

    def _step_plain(self) -> None:
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def _defend_sent_grads(
        self, scaled: dict[str, OrderedDict[str, torch.Tensor]], inputs: dict[str, torch.Tensor]
    ) -> dict[str, OrderedDict[str, torch.Tensor]]:
        """privacy.grad_norm then privacy.marvell on the gradients of the remote inputs (what the peers get);
        the gradients of local inputs stay exact."""
        for entry in scaled.values():
            names = [n for n in entry if n in self._remote_ins]
            if not names:
                continue
            grads = [entry[n] for n in names]
            if self.grad_norm is not None:
                grads = self.grad_norm(grads)
            if self.marvell is not None:
                grads = self.marvell(grads, inputs[self._marvell_label])
            entry.update(zip(names, grads))
        return scaled

    def _wrt(self, c: Consumer, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if c.kind == "opt":
            return [p for p in self._opt_params[c.index] if p.requires_grad]
        return [x for x in map(inputs.__getitem__, c.inputs) if x.requires_grad]

    def _check_one_pass(self, outs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> bool:
        reach = {t: reachable(outs[t[0]]) for t in self._terms}
        for c in self._consumers:
            mine = {id(x) for x in self._wrt(c, inputs)}
            for t in self._terms:
                if t not in c.terms and reach[t] & mine:
                    log.info(
                        "%s: gradient terms differ between optimizers/grad scalers and overlap on the graph; "
                        "using one backward pass per distinct term set",
                        self.name,
                    )
                    return False
        return True

    def _groups(self, outs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> list[tuple[list[Term], list[Consumer]]]:
        if self._same_terms:
            return [(self._terms, self._consumers)]
        if self._one_pass is None or self.recheck_graph:
            self._one_pass = self._check_one_pass(outs, inputs)
        if self._one_pass:
            return [(self._terms, self._consumers)]
        groups: dict[tuple[Term, ...], list[Consumer]] = OrderedDict()
        for c in self._consumers:
            groups.setdefault(tuple(c.terms), []).append(c)
        return [(list(k), v) for k, v in groups.items()]

    def _scale_results(
        self, inputs: dict[str, torch.Tensor], grads: dict[int, torch.Tensor | None], originals: dict[str, Any]
    ) -> dict[str, OrderedDict[str, torch.Tensor]]:
        out: dict[str, OrderedDict[str, torch.Tensor]] = {}
        for c in self._consumers:
            if c.kind != "scaler":
                continue
            entry: OrderedDict[str, torch.Tensor] = OrderedDict()
            for name in c.inputs:
                x = inputs[name]
                g = grads.get(id(x))
                orig = originals[name]
                want = (
                    orig.dtype
                    if isinstance(orig, torch.Tensor) and orig.is_floating_point()
                    else (x.dtype if x.is_floating_point() else torch.float32)
                )
                if g is None:
                    g = torch.zeros(x.shape, dtype=want, device=x.device)
                elif g.dtype != want:
                    g = g.to(want)
                entry[name] = g
            out[c.terms[0][0]] = entry
        return out

    def _backward_plain(
        self,
        outs: dict[str, torch.Tensor],
        inputs: dict[str, torch.Tensor],
        grads_out: dict[Term, torch.Tensor],
        step: bool = True,
    ) -> dict[int, torch.Tensor | None]:
        groups = self._groups(outs, inputs)
        input_grads: dict[int, torch.Tensor | None] = {}
        for gi, (terms, consumers) in enumerate(groups):
            live = [t for t in terms if outs[t[0]].requires_grad]
            wrt: list[torch.Tensor] = list({id(x): x for c in consumers for x in self._wrt(c, inputs)}.values())
            if not live or not wrt:
                continue
            if len(groups) == 1:
                # One pass: let the engine accumulate into .grad as loss.backward() does (it hands its
                # buffers over instead of capturing copies); the optimizers' gradients stay where they are.
                for x in wrt:
                    if x.grad is not None:
                        x.grad = None
                torch.autograd.backward(
                    [outs[t[0]] for t in live], [grads_out[t] for t in live], inputs=None if self._all_owned else wrt
                )
                by_id = {id(x): x.grad for x in wrt}
                for c in consumers:
                    if c.kind == "opt" and c.loss_scale != 1.0:
                        for p in self._opt_params[c.index]:
                            if p.grad is not None:
                                p.grad.div_(c.loss_scale)
            else:
                res = torch.autograd.grad(
                    [outs[t[0]] for t in live],
                    wrt,
                    [grads_out[t] for t in live],
                    retain_graph=gi < len(groups) - 1,
                    allow_unused=True,
                )
                by_id = {id(x): g for x, g in zip(wrt, res)}
                for c in consumers:
                    if c.kind == "opt":
                        for p in self._opt_params[c.index]:
                            g = by_id.get(id(p))
                            p.grad = g if g is None or c.loss_scale == 1.0 else g / c.loss_scale
            for c in consumers:
                if c.kind == "scaler":
                    for x in self._wrt(c, inputs):
                        input_grads[id(x)] = by_id.get(id(x))
                        x.grad = None
        if step:
            self._step_plain()
        return input_grads

    def _backward_deepspeed(
        self,
        outs: dict[str, torch.Tensor],
        inputs: dict[str, torch.Tensor],
        grads_out: dict[Term, torch.Tensor],
        hooked: list[torch.Tensor],
        boundary: bool = True,
    ) -> dict[int, torch.Tensor | None]:
        engine = self.engine
        if not boundary or self._accumulated:
            if self._gas != 1:
                raise ValueError(
                    f"{self.name}: micro-batches accumulate through the engine's accumulation boundary; "
                    f"set the DeepSpeed config's gradient_accumulation_steps to 1 (it is {self._gas})"
                )
            engine.set_gradient_accumulation_boundary(boundary)
        opt_c = next(c for c in self._consumers if c.kind == "opt")
        scalers = [c for c in self._consumers if c.kind == "scaler"]
        input_grads: dict[int, torch.Tensor | None] = {}
        same = all(set(c.terms) == set(opt_c.terms) for c in scalers)
        live = [t for t in opt_c.terms if outs[t[0]].requires_grad]
        ls = opt_c.loss_scale
        fp16 = bool(engine.fp16_enabled())
        amp_scale = self._fp16_scale() if fp16 else 1.0
        differentiable = bool(live)
        objective: Any = sum((outs[t[0]] * grads_out[t]).sum() for t in live)
        # The input gradients of the one pass come out of engine.backward multiplied by whatever the
        # engine did (1/gradient_accumulation_steps, the fp16 loss scale, its per-output hooks): measured
        # during the backward, divided out after it.
        measure = scalers and same and differentiable
        seen_obj = ObjectiveGrad(objective) if measure else None
        seen_hooks = EngineOutputHooks(engine, hooked, undo=False) if measure else None
        if ls != 1.0:
            objective = objective / ls
        prescaled = fp16 and differentiable and self._prescale_fp16 and amp_scale != 1.0
        if prescaled:
            # DeepSpeed 0.19's engine.backward leaves the loss unscaled for its non-ZeRO fp16 optimizers,
            # whose step divides by the loss scale all the same (deepspeedai/DeepSpeed#8393): scaled
            # here, in fp32 as their own backward does.
            objective = objective.float() * amp_scale
        # Under fp16 the graph is kept until the input gradients are known to be finite (freeing it
        # during backward lowers no peak: the activations are all alive when backward starts); scalers
        # with terms of their own differentiate it after the engine's backward.
        keep_graph = differentiable and bool(scalers) and (fp16 or not same)
        try:
            with in_engine():
                if differentiable:
                    engine.backward(objective, retain_graph=keep_graph)
                if scalers and not same:
                    # After engine.backward, whose output hooks begin the engine's backward bookkeeping once
                    # per forward (ZeRO refuses or breaks a backward before it); before the step changes
                    # the weights the graph saved.
                    for c in scalers:
                        wrt = self._wrt(c, inputs)
                        c_live = [t for t in c.terms if outs[t[0]].requires_grad]
                        if wrt and c_live:
                            res = vjp_past_engine_hooks(
                                engine, hooked, weighted_roots(outs, c_live, grads_out), wrt, retain_graph=True
                            )
                            input_grads.update({id(x): g for x, g in zip(wrt, res)})
                engine.step()
        finally:
            for seen in (seen_obj, seen_hooks):
                if seen is not None:
                    seen.remove()
        if seen_obj is not None and seen_hooks is not None:
            wrt = [x for c in scalers for x in self._wrt(c, inputs)]
            grads = [x.grad for x in wrt]
            for x in wrt:
                x.grad = None
            g_obj = seen_obj.value()
            m = math.nan if g_obj is None else g_obj * seen_hooks.ratio
            factor = 1.0 / m if math.isfinite(m) and m != 0.0 else math.nan
            if fp16:
                self._check_fp16_scaling(g_obj, amp_scale / (ls * self._gas), prescaled)
            if keep_graph and not (math.isfinite(factor) and all(g is None or bool(torch.isfinite(g).all()) for g in grads)):
                grads, factor = self._input_grads_after_overflow(hooked, weighted_roots(outs, live, grads_out), wrt)
            if not math.isfinite(factor):
                raise RuntimeError(
                    f"{self.name}: could not measure how DeepSpeed scaled the backward (objective gradient "
                    f"{g_obj!r}, per-output ratio {seen_hooks.ratio!r}), so the gradients for the peers cannot be "
                    "unscaled; this happens when the engine's backward does not pass through the objective "
                    "(a DeepSpeed version splitlink does not know?). Nothing was sent."
                )
            for x, g in zip(wrt, grads):
                if g is not None and factor != 1.0:
                    # unscaled in fp32: an fp16 gradient divided by the loss scale in fp16 would
                    # underflow, the very thing loss scaling is there to prevent
                    g = (g.float() if g.dtype in (torch.float16, torch.bfloat16) else g) * factor
                input_grads[id(x)] = g
        return input_grads

    def _check_fp16_scaling(self, got: float | None, expected: float, prescaled: bool) -> None:
        """The engine's backward should have multiplied the objective (before the optimizer's loss_scale
        divides it) by its fp16 loss scale / accumulation steps / loss_scale (``expected``); it multiplied
        it by ``got``. Where it did not scale, or did so on top of FLModel's own scaling, this step's
        parameter gradients were off by the loss scale: FLModel switches its scaling for the next steps
        (the input gradients sent upstream are right either way)."""
        if got is None or not math.isfinite(got) or got == 0.0 or expected <= 0.0:
            return
        off = math.log2(got / expected)
        if abs(off) < 0.5:
            return
        if off < 0 and not prescaled:
            self._prescale_fp16 = True
        elif off > 0 and prescaled:
            self._prescale_fp16 = False
        else:
            return
        log.warning(
            "%s: the DeepSpeed engine's backward multiplied the loss by %g, not by its fp16 loss scale "
            "/ gradient_accumulation_steps (%g): this step's parameter gradients were off by that "
            "ratio; FLModel %s the loss scale itself from now on",
            self.name,
            got,
            expected,
            "applies" if self._prescale_fp16 else "no longer applies",
        )

    def _fp16_scale(self) -> float:
        opt = self.engine.optimizer
        return float(getattr(opt, "cur_scale", getattr(opt, "loss_scale", 1.0)))

    def _input_grads_after_overflow(
        self, hooked: list[torch.Tensor], roots: list[tuple[torch.Tensor, torch.Tensor]], wrt: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor | None], float]:
        """The fp16 backward overflowed: the engine skipped its step (or will at the accumulation boundary)
        and lowered its loss scale, as DeepSpeed does, but the peers still need this batch's input
        gradients, and the scaled ones are inf/NaN. Differentiates the kept graph again, for the inputs
        only, at the engine's loss scale (halved further while it still overflows), its per-output hooks
        undone; returns (gradients, factor that unscales them)."""
        scale = max(self._fp16_scale(), 1.0)
        while True:
            grads = vjp_past_engine_hooks(
                self.engine, hooked, [(out, g * scale) for out, g in roots], wrt, retain_graph=scale > 1.0
            )
            if scale <= 1.0 or all(g is None or bool(torch.isfinite(g).all()) for g in grads):
                log.info(
                    "%s: fp16 overflow; the engine skips its step, input gradients recomputed at loss scale %g", self.name, scale
                )
                return grads, 1.0 / scale
            scale = max(scale / 2, 1.0)

    @torch.no_grad()
    def eval_one_step(
        self, local_data_batch: Mapping[str, Any] | None = None, remote_data_batch: Mapping[str, Any] | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Runs the eval network (no graph); feeds ``metrics`` with the outputs and the YAML's ``gt``."""
        batch = self._merge(local_data_batch, remote_data_batch)
        names = [i.name for i in self.yaml.eval_net_ins]
        out_names = [o.name for o in self.yaml.eval_net_outs]
        net = "eval_net" if self.yaml.eval_net else "train_net"
        device = module_device(self.eval_network) if self.engine is None else self.device
        inputs = [to_device(as_tensor(n, v).detach(), device) for n, v in zip(names, self._gather(batch, names, net))]
        if self.engine is not None and self._engine_dtype is not None:
            inputs = [x.to(self._engine_dtype) if x.is_floating_point() else x for x in inputs]
        elif self._compute_dtype is not None:  # a peer's activations in this network's precision, as in training
            inputs = [
                x.to(self._compute_dtype) if n in self._eval_remote_ins and x.is_floating_point() else x
                for n, x in zip(names, inputs)
            ]
        module: Any = self.eval_network
        with contextlib.ExitStack() as stack:
            if self.engine is not None:
                stack.enter_context(in_engine())
                if module is self.train_network:
                    module = self.engine  # ZeRO-3 gathers its partitioned parameters in its forward
                elif self.engine.zero_optimization_stage() == 3:
                    import deepspeed

                    stack.enter_context(deepspeed.zero.GatheredParameters(list(module.parameters())))
            was_training = module.training
            module.eval()
            try:
                outs = self._outputs(module(*inputs), out_names, net)
            finally:
                module.train(was_training)
        gt = self.yaml.eval_net_gt
        if self.metrics is not None:
            if gt is None or gt not in batch:
                raise KeyError(f"{self.yaml.source}: metrics need the ground truth model.eval_net.gt ({gt!r}) in the data batch")
            self.metrics.update(*outs, batch[gt])
        return OrderedDict(zip(out_names, outs))

    # Everything else ----------------------------------------------------------------------------
    def get_compress_configs(self) -> dict[str, CompressConfig]:
        """Codec settings by tensor name for the communicator (remote inputs' gradients, remote outputs)."""
        return self.yaml.compress_configs()

    def privacy_spent(self) -> tuple[float, float] | None:
        """(eps, delta) spent by the Gaussian embedding mechanism so far, or None."""
        return self.embedding_dp.spent() if isinstance(self.embedding_dp, GaussianEmbeddingDP) else None

    def _ckpt_dir(self, path: str | os.PathLike[str] | None) -> Path:
        return Path(path) if path is not None else self.yaml.ckpt_path / self.name

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": checkpoint_io.CKPT_FORMAT,
            "net": self.name,
            "role": self.yaml.role,
            "step": self.step,
            "model": self.train_network.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "rng": {"torch": torch.get_rng_state()},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.eval_network is not self.network and any(True for _ in self.eval_network.parameters()):
            shared = {id(p) for p in self.train_network.parameters()}
            if any(id(p) not in shared for p in self.eval_network.parameters()):
                state["eval_model"] = self.eval_network.state_dict()
        if self.embedding_dp is not None:
            state["embedding_dp"] = self.embedding_dp.state_dict()
        if self.marvell is not None:
            state["marvell"] = self.marvell.state_dict()
        return state

    def save_ckpt(self, path: str | os.PathLike[str] | None = None, *, keep: int | None = None) -> Path:
        """Writes a checkpoint atomically and returns its path.

        ``path``: a directory (default ``<ckpt_path>/<train_net name>``) that receives
        ``step-<step>.pt``, or a file path ending in ``.pt``. The file is written to a temporary name,
        fsynced and renamed, so a crash never leaves a corrupt newest checkpoint. ``keep`` removes all but
        the newest ``keep`` checkpoints of the directory. Under DeepSpeed the checkpoint is its
        directory ``step-<step>/`` (sharded by the engine's ranks).
        """
        if self.engine is not None:
            client: dict[str, Any] = {"splitlink_step": self.step, "rng_torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                client["rng_cuda"] = torch.cuda.get_rng_state_all()
            if self.embedding_dp is not None:
                client["embedding_dp"] = self.embedding_dp.state_dict()
            if self.marvell is not None:
                client["marvell"] = self.marvell.state_dict()
            return checkpoint_io.save_deepspeed(self.engine, self._ckpt_dir(path), self.step, client)
        if path is not None and str(path).endswith(".pt"):
            target = Path(path)
        else:
            target = self._ckpt_dir(path) / f"{checkpoint_io.step_name(self.step)}.pt"
        checkpoint_io.write_state(target, self._state(), keep=keep)
        log.info("%s: checkpoint step %d -> %s", self.name, self.step, target)
        return target

    def checkpoint_steps(self, path: str | os.PathLike[str] | None = None) -> list[int]:
        """Steps of the complete checkpoints in ``path`` (default ``<ckpt_path>/<train_net name>``), ascending."""
        d = self._ckpt_dir(path)
        if not d.is_dir():
            return []
        found = checkpoint_io.list_step_files(d) if self.engine is None else checkpoint_io.list_step_dirs(d)
        return [checkpoint_io.step_of(p) for p in found]

    def load_ckpt(self, path: str | os.PathLike[str] | None = None, phase: str = "train", *, step: int | None = None) -> Path:
        """Loads a checkpoint; ``phase="train"`` restores everything to resume, ``"eval"`` the eval network.

        ``path``: a checkpoint file, or a directory whose newest ``step-*.pt`` is taken (default
        ``<ckpt_path>/<train_net name>``); ``step`` picks that step's checkpoint in the directory.
        """
        if phase not in ("train", "eval"):
            raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
        if step is not None:
            name = checkpoint_io.step_name(step)
            path = self._ckpt_dir(path) / (name if self.engine is not None else f"{name}.pt")
            if not path.exists():
                raise CheckpointError(f"no checkpoint of step {step} ({path})")
        if self.engine is not None:
            tag_dir, client = checkpoint_io.load_deepspeed(self.engine, self._ckpt_dir(path), phase)
            if phase == "train" and client:
                self.step = int(client.get("splitlink_step", self.step))
                self._restore_rng(client.get("rng_torch"), client.get("rng_cuda"))
                if self.embedding_dp is not None and "embedding_dp" in client:
                    self.embedding_dp.load_state_dict(client["embedding_dp"])
                if self.marvell is not None and "marvell" in client:
                    self.marvell.load_state_dict(client["marvell"])
            self._pending = None
            return tag_dir
        state = checkpoint_io.read_state(Path(path) if path is not None else self._ckpt_dir(None))
        p: Path = state["_path"]
        if phase == "eval":
            module = self.eval_network if "eval_model" in state else self.train_network
            checkpoint_io.load_module(module, state.get("eval_model", state["model"]), p)
            return p
        checkpoint_io.load_module(self.train_network, state["model"], p)
        if "eval_model" in state:
            checkpoint_io.load_module(self.eval_network, state["eval_model"], p)
        if len(state["optimizers"]) != len(self.optimizers):
            raise CheckpointError(
                f"{p} holds {len(state['optimizers'])} optimizer state(s); this model has {len(self.optimizers)}"
            )
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        self.step = int(state["step"])
        self._restore_rng(state["rng"]["torch"], state["rng"].get("cuda"))
        if self.embedding_dp is not None and "embedding_dp" in state:
            self.embedding_dp.load_state_dict(state["embedding_dp"])
        if self.marvell is not None and "marvell" in state:
            self.marvell.load_state_dict(state["marvell"])
        self._pending = None
        log.info("%s: resumed from %s (step %d)", self.name, p, self.step)
        return p

    @staticmethod
    def _restore_rng(cpu: torch.Tensor | None, cuda: Any) -> None:
        if cpu is not None:
            torch.set_rng_state(cpu)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
