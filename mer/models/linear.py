"""``linear``: per-modality logistic regression with late fusion, the floor every report shows.

On a small labeled set a linear probe on good features is hard to beat, so
every quality table prints it beside AGT. Each role gets a multinomial logistic
regression on its standardised pooled ``vector`` (the :class:`Standardized`
wrapper is sklearn's ``StandardScaler``); the fused prediction is the mean of
the present roles' probabilities (late fusion by summed probabilities).

The weights are solved, not trained by epochs: :meth:`LinearLateFusion.solve`
fits sklearn's ``LogisticRegression`` (L2, lbfgs, ``C = train.linear_c``,
``class_weight="balanced"`` with ``train.class_weighted``) per role and copies
the coefficients into plain ``nn.Linear`` layers, so the model checkpoints,
loads and predicts like every other model, and is deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Logit given to a class a role never saw in training (its probability ~ 0).
UNSEEN_LOGIT = -30.0


class LinearLateFusion(nn.Module):
    """One linear layer per role; mean of the present roles' softmax.

    Args:
        dims: role -> pooled feature width.
        num_classes: size of the label set.
        c: inverse L2 strength of the logistic regressions (sklearn's ``C``).
        class_weighted: balance classes in the loss (sklearn ``class_weight="balanced"``).
    """

    def __init__(self, dims: dict[str, int], num_classes: int, c: float = 0.1, class_weighted: bool = True):
        super().__init__()
        self.roles = sorted(dims)
        self.num_classes = num_classes
        self.c = c
        self.class_weighted = class_weighted
        self.heads = nn.ModuleDict({r: nn.Linear(dims[r], num_classes) for r in self.roles})

    def role_probs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-role probabilities (B, M, C) and presence (B, M)."""
        probs = torch.stack([torch.softmax(self.heads[r](batch[r]["vector"].float()), -1) for r in self.roles], 1)
        present = torch.stack([batch[r]["present"].bool() for r in self.roles], 1)
        return probs, present

    def forward(self, batch: dict) -> torch.Tensor:
        probs, present = self.role_probs(batch)
        weight = present.float().unsqueeze(-1)
        # A sample with no modality at all gets the uniform distribution.
        mean = (probs * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        mean = torch.where(present.any(1, keepdim=True), mean, torch.full_like(mean, 1.0 / self.num_classes))
        return torch.log(mean.clamp(min=1e-12))

    @torch.no_grad()
    def solve(self, batch: dict, targets: np.ndarray, seed: int) -> None:
        """Fit every role's logistic regression on the (standardised) ``batch`` rows.

        Args:
            batch: model input of the training rows, already standardised.
            targets: (N,) int label per row.
            seed: ``random_state`` of the solver (lbfgs is deterministic anyway).
        """
        from sklearn.linear_model import LogisticRegression

        for role in self.roles:
            present = batch[role]["present"].bool().numpy()
            x = batch[role]["vector"].double().numpy()[present]
            y = np.asarray(targets)[present]
            head = self.heads[role]
            head.weight.zero_()
            head.bias.fill_(UNSEEN_LOGIT)
            classes = np.unique(y)
            if len(classes) == 0:
                continue
            if len(classes) == 1:
                head.bias[int(classes[0])] = 0.0
                continue
            clf = LogisticRegression(C=self.c, class_weight="balanced" if self.class_weighted else None,
                                     max_iter=5000, random_state=seed)
            clf.fit(x, y)
            coef, bias = clf.coef_, clf.intercept_
            if len(classes) == 2:  # sklearn keeps one row for two classes: logit(p1) = w.x + b
                coef, bias = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
            index = torch.as_tensor(classes, dtype=torch.long)
            head.weight[index] = torch.as_tensor(coef, dtype=head.weight.dtype)
            head.bias[index] = torch.as_tensor(bias, dtype=head.bias.dtype)
