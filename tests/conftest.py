import pyro
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for device-parametrized tests (cpu, cuda)")


@pytest.fixture
def device(request):
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
