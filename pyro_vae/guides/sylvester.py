"""Conditional (amortized) Householder-Sylvester flow, which Pyro lacks: z' = z + Q R tanh(S Qᵀ z +
b).

R, S are upper triangular with diagonals tanh(·) ∈ (−1, 1), Q = H_1 ⋯ H_n is a product of
Householder reflections H_i = I − 2 v_i v_iᵀ (‖v_i‖ = 1), and R, S, b, v all come from a
hypernet of the context h.  By Sylvester's determinant identity

.. math:: \\log|\\det ∂z'/∂z| = \\sum_i \\log(1 + R_{ii} S_{ii} \\tanh'((S Q^T z + b)_i)),

which is finite because |R_ii S_ii| < 1 and 0 < tanh' ≤ 1, so every layer is a bijection
(though without a closed-form inverse: only its own samples can be scored).

Reference: van den Berg, Hasenclever, Tomczak, Welling. Sylvester Normalizing Flows for
Variational Inference. UAI 2018, arXiv:1803.05649.
"""

import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.nn import DenseNN
from torch.distributions import Transform
from pyro_vae.core.checks import UserError


def _matvec(m, x):
    """m x with m ``[..., D, D]`` and x ``[..., D]``, broadcasting the batch dims."""
    return (m @ x.unsqueeze(-1)).squeeze(-1)


def _reflect(x, v):
    """(I − 2 v vᵀ) x for a unit vector v."""
    return x - 2 * (x * v).sum(-1, keepdim=True) * v


class ConditionedSylvester(Transform):
    """z' = z + Q R tanh(S Qᵀ z + b) for given R, S ``[..., D, D]``, b ``[..., D]``, unit v ``[...,
    n, D]``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, R, S, b, v):
        super().__init__(cache_size=1)
        self.R, self.S, self.b, self.v = R, S, b, v
        self._log_det = None

    def _q(self, x):
        for i in reversed(range(self.v.shape[-2])):
            x = _reflect(x, self.v[..., i, :])
        return x

    def _q_t(self, x):
        for i in range(self.v.shape[-2]):
            x = _reflect(x, self.v[..., i, :])
        return x

    def _call(self, x):
        pre = _matvec(self.S, self._q_t(x)) + self.b
        act = torch.tanh(pre)
        diag = self.R.diagonal(dim1=-2, dim2=-1) * self.S.diagonal(dim1=-2, dim2=-1)
        self._log_det = torch.log1p((1 - act.pow(2)) * diag).sum(-1)
        return x + self._q(_matvec(self.R, act))

    def log_abs_det_jacobian(self, x, y):
        x_old, y_old = self._cached_x_y
        if x is not x_old or y is not y_old:
            self(x)
        return self._log_det


class ConditionalSylvester(ConditionalTransformModule):
    """Hypernet h ↦ (R, S, b, v) of one Sylvester layer; ``condition(h)`` returns
    :class:`ConditionedSylvester`.

    :param int reflections: number n of Householder reflections in Q (default: ``input_dim``).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim, context_dim, hidden_dims, reflections=None):
        super().__init__()
        reflections = input_dim if reflections is None else reflections
        if isinstance(reflections, bool) or not isinstance(reflections, int) or reflections < 1:
            raise UserError(f"reflections must be a positive integer, got {reflections!r}")
        d = self.input_dim = input_dim
        self.reflections = reflections
        self.nn = DenseNN(
            context_dim, hidden_dims, param_dims=[d * d, d * d, d, d, d, reflections * d]
        )
        self.register_buffer("upper", torch.ones(d, d).triu(1))

    def condition(self, context):
        r, s, r_diag, s_diag, b, v = self.nn(context)
        d, batch = self.input_dim, context.shape[:-1]
        R = r.reshape(*batch, d, d) * self.upper + torch.diag_embed(torch.tanh(r_diag))
        S = s.reshape(*batch, d, d) * self.upper + torch.diag_embed(torch.tanh(s_diag))
        v = v.reshape(*batch, self.reflections, d)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return ConditionedSylvester(R, S, b, v)


__all__ = ["ConditionalSylvester", "ConditionedSylvester"]
