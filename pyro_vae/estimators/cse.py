"""Common-subexpression elimination of a captured step: each pure op on the same inputs computed
once.

Under ``Trace_ELBO`` the model is replayed on the guide's samples, so a path that model and guide
share (the deep hierarchy's top-down path, the ladder's) is run twice on the same tensors: the
same convolutions of the same parameters and the same z. In the make_fx graph these are nodes with
the same op and the same arguments; :func:`eliminate_common_subexpressions` keeps the first of
each, so the replay runs the shared forward once, as a hand-written loss would. Values are
unchanged (the same op on the same tensors), only fewer ops run.
:class:`~.capture.TracedStep` merges the forward before differentiating it, so the shared path's
backward runs once too.

An op is merged only when it is pure (draws no random numbers, writes into no argument) and none of
its arguments is written in place; a graph that writes into anything but a fresh buffer (the
``empty`` that ``normal_`` fills) is left as it is.
"""

import operator

import torch

# ops that make a fresh buffer, the only tensors a graph may write into and still be merged
_FRESH = {"empty", "empty_like", "new_empty", "empty_strided", "zeros", "zeros_like"}


def _writes(node):
    """The arguments ``node`` writes into (its schema's mutable arguments)."""
    op = node.target
    if not isinstance(op, torch._ops.OpOverload):
        return []
    out = []
    for i, a in enumerate(op._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            out.append(node.kwargs.get(a.name, node.args[i] if i < len(node.args) else None))
    return [n for n in out if isinstance(n, torch.fx.Node)]


def _pure(node):
    op = node.target
    if op is operator.getitem:
        return True
    if not isinstance(op, torch._ops.OpOverload):
        return False
    return torch.Tag.nondeterministic_seeded not in op.tags and not _writes(node)


def _key(value):
    """A hashable form of an argument (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, torch.fx.Node) or value is None:
        return value
    return (type(value), value)


def eliminate_common_subexpressions(graph):
    """Merge the pure ops of the fx ``graph`` (a ``GraphModule``) that repeat an earlier op on the
    same arguments; return how many were removed (0 where the graph writes into a tensor that is
    not a fresh buffer)."""
    written = set()
    for node in graph.graph.nodes:
        for target in _writes(node):
            if getattr(target.target, "__name__", "").split(".")[0] not in _FRESH:
                return 0
            written.add(target)
    seen, removed = {}, 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or not _pure(node) or node in written:
            continue
        if any(a in written for a in node.all_input_nodes):
            continue
        key = (node.target, _key(node.args), _key(node.kwargs))
        try:
            first = seen.setdefault(key, node)
        except TypeError:  # an argument that cannot be hashed: keep the op
            continue
        if first is not node:
            node.replace_all_uses_with(first)
            graph.graph.erase_node(node)
            removed += 1
    if removed:
        graph.graph.eliminate_dead_code()
        graph.recompile()
    return removed
