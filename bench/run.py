"""Convenience: ``python bench/run.py [options]`` == ``shmpipe bench [options]`` without installing."""
import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        import shmpipe_bench  # noqa: F401  (installed, or on PYTHONPATH)
    except ImportError:  # run from a checkout: expose bench/ as shmpipe_bench, src/ for shmpipe
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "shmpipe_bench", os.path.join(here, "__init__.py"), submodule_search_locations=[here])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["shmpipe_bench"] = mod
        spec.loader.exec_module(mod)
        sys.path.insert(0, os.path.join(os.path.dirname(here), "src"))
    from shmpipe_bench.cli import main

    sys.exit(main())
