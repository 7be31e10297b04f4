"""Build hook for the optional C extension; everything else is in pyproject.toml.

``shazamq.protocol._recordwalk`` (the record walk of produce validation) is compiled when
a C compiler and the Python headers are there. It is optional: without them the build
says so and goes on, and ``shazamq.protocol.records`` uses its pure-Python walk.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shazamq.protocol._recordwalk",
            ["shazamq/protocol/_recordwalk.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
