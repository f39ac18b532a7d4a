"""Attacks a curious party can run on what it legitimately receives across the cut, to measure leakage.

By the follower, on the gradients the leader sends back for its embeddings (label inference,
:mod:`splitlink.attacks.gradients`):

* :func:`norm_attack`: score = per-sample gradient L2 norm (with BCE and imbalanced classes the positives'
  gradients are larger);
* :func:`direction_attack`: score = cosine similarity to a known positive's gradient in the batch, or
  (no label knowledge) the negated cosine to the majority direction (Li et al., ICLR 2022).

By the leader, on the follower's embeddings (:mod:`splitlink.attacks.embeddings`):

* :func:`model_completion`: a logistic head trained on the embeddings of a few samples with known labels,
  scored on the rest (accuracy and AUC);
* :func:`feature_inversion`: ridge regression of the follower's raw features (one-hot indicators of
  each field's frequent values) from its embeddings, fitted on a small auxiliary set; R^2 on the rest
  vs the predict-the-mean baseline.

:class:`CutTap` records what crosses the cut without changing it; :mod:`splitlink.attacks.audit` trains a
registered scenario with each defence and tabulates the attacks (``splitlink audit``).
"""

from __future__ import annotations

from splitlink.attacks.embeddings import (
    feature_inversion,
    model_completion,
    onehot_targets,
)
from splitlink.attacks.gradients import (
    attack_auc,
    direction_attack,
    direction_scores,
    norm_attack,
    norm_scores,
)
from splitlink.attacks.tap import CutTap

__all__ = [
    "CutTap",
    "attack_auc",
    "direction_attack",
    "direction_scores",
    "feature_inversion",
    "model_completion",
    "norm_attack",
    "norm_scores",
    "onehot_targets",
]
