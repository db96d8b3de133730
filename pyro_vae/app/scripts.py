"""What every example script shares: its run flags, the folder it writes to and its smoke budget.

An example is ``main(args)`` over the library and a ``parse_args(argv)`` built from
:func:`script_parser` (the flags every example takes) and :func:`parse_script_args` (the output
folder, the ``--smoke`` budget). Lists of integers are comma-separated everywhere, as in ``pyro-vae
train``: ``--hidden-dims 300,300``.
"""

import argparse
import os
import tempfile


def int_list(text):
    """``"300,300"`` → ``[300, 300]``, the argparse type of every list-of-integers flag."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 400,200, got {text!r}"
        ) from None


def script_parser(doc, name, resume=True, smoke="seconds-long run on a small subset"):
    """An :class:`argparse.ArgumentParser` for the example ``name`` (its description: the first line
    of ``doc``) with the flags every example takes: ``--limit --test-limit --data-dir --device
    --seed --out --smoke`` and, for scripts whose runs continue from a checkpoint, ``--resume``. The
    script adds its own flags."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.set_defaults(script_name=name, resume=False)
    p.add_argument("--limit", type=int, default=None, help="training images to use (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="test images to use (default: all)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the dataset is (default: torchvision's download folder)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help=f"run directory (default runs/{name}, or runs/{name}-2, … when taken"
        + (", unless --resume" if resume else "")
        + "; --smoke: a fresh "
        "temporary one)",
    )
    if resume:
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the run(s) in --out from their checkpoints",
        )
    p.add_argument("--smoke", action="store_true", help=smoke)
    return p


def parse_script_args(parser, argv=None, smoke=None):
    """Parse ``argv``; set ``args.out`` by :func:`output_dir`; with ``--smoke``, replace the values
    named in ``smoke`` (a dict of argument name → value: the tiny budget)."""
    args = parser.parse_args(argv)
    args.out = output_dir(args.out, args.script_name, args.smoke, args.resume)
    if args.smoke:
        vars(args).update(smoke or {})
    return args


def output_dir(out, name, smoke=False, resume=False):
    """The directory an example (or any script) writes to, said on stdout.

    ``out=None`` with ``smoke``: a fresh temporary directory (a smoke run never collides with
    another); ``resume``: ``out`` (default ``runs/NAME``) as it is, to continue its runs; else
    ``out`` when it does not exist or is empty, or the first of ``out-2``, ``out-3``, … that does
    not.
    """
    if out is None and smoke:
        out = tempfile.mkdtemp(prefix=f"pyro_vae_{name}_")
        print(f"smoke run: writing to the fresh directory {out}")
        return out
    out = out or os.path.join("runs", name)
    if resume:
        held = os.path.isdir(out) and os.listdir(out)
        print(f"resuming the run(s) in {out}" if held else f"new run: writing to {out}")
        return out
    fresh, n = out, 1
    while os.path.exists(fresh) and (not os.path.isdir(fresh) or os.listdir(fresh)):
        n += 1
        fresh = f"{out}-{n}"
    print(
        f"new run: writing to {fresh}"
        + (f" ({out} holds an earlier run; pass --resume to continue it)" if fresh != out else "")
    )
    return fresh
