"""pyro_vae.core.chunks: particles drawn in passes of bounded memory combine into one mean."""

import math

import pytest
import torch

from pyro_vae.core.chunks import mean_over_particles, particles_per_pass, row_chunks


@pytest.mark.parametrize("per_pass, sizes", [(1, [1] * 7), (3, [3, 3, 1]), (7, [7]), (10, [7])])
def test_passes_combine_to_the_mean_and_the_log_mean_exp_of_all_particles(per_pass, sizes):
    f = torch.randn(7, 3, dtype=torch.float64)  # 7 particles of 3 data points
    for log in (False, True):
        seen = []

        def draw(k):
            part = f[sum(seen) : sum(seen) + k]
            seen.append(k)
            total = torch.logsumexp(part, 0) if log else part.sum(0)
            return total, {"site": 2 * total, "no kl": None}

        value, sites = mean_over_particles(draw, 7, per_pass, log=log)
        assert seen == sizes
        expected = torch.logsumexp(f, 0) - math.log(7) if log else f.mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        assert sites["no kl"] is None  # a value that does not exist stays None
        if not log:
            torch.testing.assert_close(sites["site"], 2 * expected, rtol=1e-12, atol=1e-12)


def test_memory_bound_and_row_chunks():
    assert particles_per_pass(5000, 100, 2**16) == 655  # 655 × 100 ≤ 2¹⁶ pairs per pass
    assert particles_per_pass(10, 100, 2**16) == 10  # never more than asked for
    assert particles_per_pass(10, 2**17, 2**16) == 1  # at least one
    assert row_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert row_chunks(5, None) == [slice(None)]
