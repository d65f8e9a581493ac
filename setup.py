"""Build the compiled routing hot path.

EDGEPROXY_NO_EXTENSIONS=1 skips the extension (the pure-Python twin is then used, loudly);
EDGEPROXY_DEBUG=1 keeps bounds checks and assertions in the compiled code.
"""

import os

from setuptools import Extension, setup

if os.environ.get("EDGEPROXY_NO_EXTENSIONS"):
    ext_modules = []
else:
    from Cython.Build import cythonize

    debug = bool(os.environ.get("EDGEPROXY_DEBUG"))
    ext_modules = cythonize(
        [Extension("edgeproxy._fastroute", ["edgeproxy/_fastroute.pyx"], extra_compile_args=["-O2", "-ffp-contract=off"])],
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
        },
    )

setup(ext_modules=ext_modules)
