"""The fx replay of a captured step with each ATen op called through torch's Python binding.

A make_fx graph calls ``torch.ops.aten.add.Tensor(a, b)``: an ``OpOverload``, whose Python
``__call__`` costs about twice the dispatch of ``torch.add(a, b)`` or ``a.view(…)``, the generated
bindings of the same kernels. An overhead-bound step (a small MLP: ~190 ops, each a few µs) spends
most of its time there. :func:`with_bindings` copies the graph with every op that has a binding of
the same name (``torch.<name>``, else ``Tensor.<name>``) calling that binding instead, and keeps a
binding only where it was proven on the graph's own inputs: run side by side with the op, it gives
an equal result (same values, dtype, shape and strides). Ops that draw random numbers or write in
place keep their ``OpOverload`` (running them twice would change what they draw or write).
``aten.alias`` (a view of a whole tensor, which make_fx records for ``detach`` under ``no_grad``)
is dropped: the tensor itself shares the view's storage. Inductor compiles the original graph;
this copy is only the fx route's.
"""

import copy

import torch
from torch.fx import Interpreter


def binding(op):
    """``torch.<name>``, ``torch._C._nn.<name>`` (``F.softplus``'s) or ``torch.Tensor.<name>`` for
    the ATen op ``op`` (an ``OpOverload``), or None."""
    if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten":
        return None
    name = op.overloadpacket.__name__
    homes = (torch._C._VariableFunctions, torch._C._nn, torch.Tensor)
    return next((getattr(h, name) for h in homes if hasattr(h, name)), None)


def _pure(op):
    """Whether ``op`` neither draws random numbers nor writes into an argument."""
    if torch.Tag.nondeterministic_seeded in op.tags:
        return False
    return not any(a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)


def _same(a, b):
    """Equal outputs: tensors equal in values (NaN where NaN), dtype, shape and strides; else
    ``==``."""
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(_same(u, v) for u, v in zip(a, b))
        )
    if torch.is_tensor(a):
        return (
            torch.is_tensor(b)
            and (a.dtype, a.shape, a.stride()) == (b.dtype, b.shape, b.stride())
            and (torch.equal(a, b) or bool(torch.isclose(a, b, 0, 0, equal_nan=True).all()))
        )
    return a == b


class _Prover(Interpreter):
    """Runs the graph once; for each pure ATen op with a binding, runs the binding on the same
    arguments and keeps it (in :attr:`proven`) when the results are the same."""

    def __init__(self, graph):
        super().__init__(graph)
        self.proven = {}

    def run_node(self, node):
        out = super().run_node(node)
        fast = binding(node.target) if node.op == "call_function" else None
        if fast is not None and _pure(node.target):
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            try:
                if _same(out, fast(*args, **kwargs)):
                    self.proven[node.name] = fast
            except Exception:  # a binding whose signature differs from the op's: keep the op
                pass
        return out


def with_bindings(graph, inputs):
    """A copy of the fx ``graph`` whose pure ATen ops call the bindings proven on ``inputs`` (see
    the module). Running it here draws random numbers and writes what a step writes: the caller
    restores both."""
    prover = _Prover(graph)
    with torch.no_grad():
        prover.run(*inputs)
    fast = copy.deepcopy(graph)
    for node in list(fast.graph.nodes):
        if node.target is torch.ops.aten.alias.default:  # a view of the whole tensor: the tensor
            node.replace_all_uses_with(node.args[0])
            fast.graph.erase_node(node)
        elif node.name in prover.proven:
            node.target = prover.proven[node.name]
    fast.recompile()
    return fast
