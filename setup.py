"""The compiled part of the package: proxy.codec._speedups (see its source for why).

Optional: where no C compiler is available the build goes on without it and the proxy uses the
pure-Python twins of the same functions (and says so in a warning at start).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "proxy.codec._speedups",
            sources=[
                "proxy/codec/_speedups.c",
                "proxy/codec/_schema_walk.c",
                "proxy/codec/_pairing.c",
                "proxy/codec/_request_roots.c",
                "proxy/codec/_fetch_skim.c",
                "proxy/codec/_receive_spans.c",
            ],
            depends=[
                "proxy/codec/_schema_walk.h",
                "proxy/codec/_pairing.h",
                "proxy/codec/_roots.h",
                "proxy/codec/_request_roots.h",
                "proxy/codec/_fetch_skim.h",
                "proxy/codec/_receive_spans.h",
                "proxy/codec/_record_fields.h",
                "proxy/codec/_declining.h",
            ],
            optional=True,
        )
    ]
)
