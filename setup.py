"""Builds the compiled ring (Cython 3, -O3). Everything else lives in pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ring = Extension(
    "shmpipe._ring",
    sources=["src/shmpipe/_ring.pyx"],
    include_dirs=["src/shmpipe", numpy.get_include()],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

# The order book's hot path: cimports shmpipe.ring_api (the ring's C-level API, found under src/)
# and links zlib for Kraken's CRC32.
orderbook = Extension(
    "shmpipe_services.orderbook._book",
    sources=["services/orderbook/_book.pyx"],
    include_dirs=["src/shmpipe", numpy.get_include()],
    libraries=["z"],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

# Capture's per-level normaliser (services/capture/_levels.pyx): the loops a book message runs once
# per level, which Python cannot afford within a few µs per message.
capture_levels = Extension(
    "shmpipe_services.capture._levels",
    sources=["services/capture/_levels.pyx"],
    include_dirs=["src/shmpipe"],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
)

# The synthetic market's per-event loop (services/capture/_market.pyx): issue 24's bottleneck, ~5 µs
# a message in Python; links zlib for the Kraken CRC32 its checksum records carry.
capture_market = Extension(
    "shmpipe_services.capture._market",
    sources=["services/capture/_market.pyx"],
    include_dirs=["src/shmpipe"],
    libraries=["z"],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [ring, orderbook, capture_levels, capture_market],
        include_path=["src"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
