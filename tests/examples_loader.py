"""Import a script of examples/ (or benchmarks/) as a module, so tests can call its
``main(parse_args([...]))``."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example(name, folder="examples"):
    """The module of ``FOLDER/NAME.py``."""
    spec = importlib.util.spec_from_file_location(
        f"{folder}_{name}", os.path.join(ROOT, folder, name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
