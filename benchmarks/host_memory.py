"""Peak CPU memory of a long importance-sampled evaluation, with and without handing freed memory
back to the OS.

``evaluate`` takes log p(x) one image at a time when K = 5000 (a Bernoulli decoder caps a pass at
2^22 values), so a 10k-image test split is 10k passes. With a VampPrior each pass allocates [K, 500]
float64 matrices beside the decoder's [K, 784] logits, and glibc's heap fragments: the VampPrior
row's evaluation grew to 24 GB and was killed. This runs ``log_likelihood`` over ``--images`` images
(K = ``--samples``) of a VampPrior VAE with random weights, in a fresh process each way, and writes
the peak resident memory (``ru_maxrss``) to ``--out``.

    python benchmarks/host_memory.py --images 400 --out benchmarks/host_memory.json
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import resource, sys, time, torch
from pyro_vae.app.config import Config
from pyro_vae.estimators import importance
from pyro_vae.models import build_model
if sys.argv[1] == "off":
    importance.release_freed_memory = lambda: False
torch.manual_seed(0)
vae = build_model(Config(prior="vampprior", pseudo_inputs=500, latent_dim=40, hidden_dims=[300,
300]), (1, 28, 28))
x = torch.rand(int(sys.argv[2]), 1, 28, 28).bernoulli()
start = time.perf_counter()
importance.log_likelihood(vae.model, vae.guide, x, num_samples=int(sys.argv[3]), max_elements=2**22
// 784)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start)
"""


def peak(mode, images, samples):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(images), str(samples)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {"peak_mib": float(out[0]), "seconds": float(out[1])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = {
        "images": args.images,
        "samples": args.samples,
        "passes": args.images,
        "released": peak("on", args.images, args.samples),
        "kept": peak("off", args.images, args.samples),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
