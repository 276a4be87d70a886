"""Convenience: ``python bench/run.py [options]`` == ``shmpipe bench [options]`` without installing."""
import importlib.util
import os
import sys


def _expose(package: str, folder: str) -> None:
    """Import ``folder`` as ``package`` unless that package is importable already."""
    try:
        __import__(package)
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            package, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    sys.path.insert(0, os.path.join(root, "src"))     # shmpipe itself, when built in place
    _expose("shmpipe_bench", here)
    _expose("shmpipe_tools", os.path.join(root, "tools"))
    from shmpipe_bench.cli import main

    sys.exit(main())
