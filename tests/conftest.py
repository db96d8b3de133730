import os

import pyro
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core (make test): one thread each
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # and in the CLI's subprocesses


def pytest_addoption(parser):
    parser.addoption(
        "--device", default="cpu", help="device for device-parametrized tests (cpu, cuda)"
    )


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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device (``make gpu-check`` runs them); without one they
    skip."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


cuda = pytest.mark.cuda
