"""Build of sm_hlm's optional compiled kernels (metadata: pyproject.toml).

The extensions are optional: where no C compiler is available the package installs
without them and uses the numpy forms of the same loops (``sm_hlm.engine.compiled``
says which is in use).
"""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("sm_hlm.engine._csmall", ["sm_hlm/engine/_csmall.c"],
              depends=["sm_hlm/engine/_cbuffers.h"], optional=True),
    Extension("sm_hlm.engine._crows", ["sm_hlm/engine/_crows.c"],
              depends=["sm_hlm/engine/_cbuffers.h"], optional=True),
])
