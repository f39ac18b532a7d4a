"""FLModel: runs one party's sub-network forward and backward, as its YAML describes.

``forward_one_step`` keeps the autograd graph; ``backward_one_step`` runs ONE backward pass over it that
yields every optimizer's parameter gradients and the input gradients the grad scalers return (MindSpore
re-runs the forward pass once per gradient operation), then steps the optimizers.

Semantics (MindSpore Federated's, PyTorch-native):

* The network's ``forward`` takes the train_net inputs in YAML order and returns its outputs in YAML
  order (a tensor, a tuple/list, or a mapping by output name).
* Every input is detached from whatever graph produced it (each FLModel owns its graph; another
  FLModel in the same process gets gradients through the grad scale, as a remote party would). Inputs
  that a grad scaler differentiates are leaf tensors requiring grad.
* ``opts[i].grads``: each names an output and a sens. The optimizer's parameter gradient is the sum over
  its grads of the vector-Jacobian product of the output with the sens, divided by the optimizer's
  ``loss_scale``. A numeric sens is a constant tensor of the output's shape; a string sens ``s`` takes
  ``sens[s][output_name]`` from the ``sens`` argument (the grad scale a peer sent).
* ``grad_scalers``: each returns ``{output_name: OrderedDict{input_name: gradient}}`` with the same
  vector-Jacobian product taken with respect to its inputs (not divided by any loss scale: the peer's
  optimizer divides). Integer inputs (token ids, masks) get zero gradients, as in MindSpore.
* One pass: when every optimizer and grad scaler uses the same (output, sens) terms, or when the terms
  one uses do not reach the tensors another differentiates (checked on the autograd graph at the first
  step), one backward pass over the sum of all terms gives each its exact gradient. Otherwise each
  distinct set of terms gets its own pass over the retained graph.

The package: :mod:`~splitlink.model.flmodel` (the ``FLModel`` facade), :mod:`~splitlink.model.graph`
(gradient planning), :mod:`~splitlink.model.engine` (DeepSpeed under FLModel) and
:mod:`~splitlink.model.checkpoint_io` (checkpoint files). The collaborators never import the facade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitlink.errors import CheckpointError
    from splitlink.model.flmodel import FLModel

__all__ = ["FLModel", "CheckpointError"]


def __getattr__(name: str) -> Any:
    # Lazy: importing a collaborator (splitlink.model.engine, ...) must not load the facade and its
    # dependencies (config, optim, privacy).
    if name == "FLModel":
        from splitlink.model.flmodel import FLModel

        return FLModel
    if name == "CheckpointError":
        from splitlink.errors import CheckpointError

        return CheckpointError
    raise AttributeError(f"module 'splitlink.model' has no attribute {name!r}")
