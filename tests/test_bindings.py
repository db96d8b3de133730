"""The fx replay with Python bindings (:mod:`pyro_vae.estimators.bindings`) gives the make_fx
graph's exact numbers, on other data than it was proven on, and calls almost no ``OpOverload``."""

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.estimators.bindings import _same, binding, with_bindings
from pyro_vae.estimators.capture import TracedStep
from pyro_vae.estimators.trace import DeviceTrace_ELBO
from pyro_vae.models.nets import MLP


def _vae_pair():
    decoder, encoder = MLP(3, [16], (1, 5, 5)), MLP((1, 5, 5), [16], 6)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(3), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            loc, raw = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1))

    return model, guide


def test_the_bound_replay_equals_the_fx_graph_on_new_data_and_skips_the_op_overloads():
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = _vae_pair()
    step = TracedStep(DeviceTrace_ELBO(), model, guide, torch.rand(7, 1, 5, 5).bernoulli())
    assert step.graph is step.bound and step.backend == "fx"
    x = torch.rand(7, 1, 5, 5).bernoulli()  # a batch the bindings were not proven on
    inputs = [*step.params, x, *step.state]
    with torch.no_grad():
        torch.manual_seed(1)
        plain = step.fx(*inputs)
        torch.manual_seed(1)
        bound = step.bound(*inputs)
    assert len(plain) == len(bound) and all(torch.equal(a, b) for a, b in zip(plain, bound))
    calls = [n for n in step.bound.graph.nodes if n.op == "call_function"]
    overloads = [n for n in calls if isinstance(n.target, torch._ops.OpOverload)]
    # what stays an OpOverload: random draws, uninitialized memory, and backward ops without a
    # Python binding
    assert len(overloads) <= 0.1 * len(calls), [str(n.target) for n in overloads]
    assert not any(n.target is torch.ops.aten.alias.default for n in calls)


def test_a_binding_is_kept_only_where_it_gives_the_ops_result():
    graph = torch.fx.symbolic_trace(lambda a: a + 1)  # a placeholder graph to rewrite by hand
    node = next(n for n in graph.graph.nodes if n.op == "call_function")
    node.target, node.args = torch.ops.aten.expand.default, (node.args[0], [2, 3])
    graph.recompile()
    fast = with_bindings(graph, [torch.ones(3)])
    assert (
        next(n for n in fast.graph.nodes if n.op == "call_function").target is torch.Tensor.expand
    )
    # a binding that gives other strides, values or dtypes is not the same result
    a = torch.arange(6.0).view(2, 3)
    assert _same(a, a.clone()) and not _same(a, a.t().contiguous().t())
    assert not _same(a, a + 1) and not _same(a, a.double())
    nan = torch.tensor([float("nan"), 1.0])
    assert _same(nan, nan.clone()) and not _same(nan, torch.tensor([0.0, 1.0]))
    # ops that draw random numbers keep their OpOverload (running them twice would draw twice)
    assert binding(torch.ops.aten.normal_.default) is torch.Tensor.normal_
    graph = torch.fx.symbolic_trace(lambda a: a + 1)
    node = next(n for n in graph.graph.nodes if n.op == "call_function")
    node.target = torch.ops.aten.normal_.default
    node.args = (node.args[0],)
    graph.recompile()
    fast = with_bindings(graph, [torch.zeros(3)])
    assert next(n for n in fast.graph.nodes if n.op == "call_function").target is (
        torch.ops.aten.normal_.default
    )
