"""Posterior-collapse diagnostics: warnings when the latents carry (almost) no information about
x, read from the active units (:func:`~pyro_vae.evaluation.latents.active_units`) and the KL
(:mod:`pyro_vae.evaluation.terms`) of each latent site.
"""

from pyro_vae.evaluation.latents import ACTIVE_THRESHOLD

# nats per image: a latent site (group) with less KL carries no information
SITE_KL_THRESHOLD = 0.01


def collapse_warnings(active, dims, kl):
    """Warnings (strings) when the posterior has collapsed: no active unit in a site, or under 10 %
    overall, or KL ≈ 0."""
    out = []
    for name, count in active.items():
        if count == 0:
            out.append(
                f"posterior collapse: latent site {name!r} has no active unit out of {dims[name]} "
                f"(Var_x E_q[z] <= {ACTIVE_THRESHOLD} in every dimension); the decoder ignores it"
            )
    total, total_dims = sum(active.values()), sum(dims.values())
    if total and total < 0.1 * total_dims:
        out.append(f"posterior collapse: only {total} of {total_dims} latent dimensions are active")
    if kl < 0.1:
        out.append(
            f"posterior collapse: mean KL(q‖p) is {kl:.3g} nats per image; the latents carry no "
            "information"
        )
    return out


def collapsed_sites(site_kl, counts, threshold=SITE_KL_THRESHOLD):
    """Sites (in order) whose KL is under ``threshold`` nats per image or that have no active
    unit."""
    return [
        n
        for n in counts
        if counts[n] == 0 or (site_kl.get(n) is not None and site_kl[n] < threshold)
    ]


def site_collapse_warning(collapsed, site_kl, total):
    """One warning naming the collapsed sites of a model with several sites, or None."""
    if not collapsed or total < 2:
        return None
    kl = ", ".join(
        f"{n} ({site_kl[n]:.3g} nats)" if site_kl.get(n) is not None else n for n in collapsed
    )
    return (
        f"posterior collapse: {len(collapsed)} of {total} latent groups carry (almost) no "
        f"information (KL < {SITE_KL_THRESHOLD} nats per image or no active unit): {kl}"
    )
