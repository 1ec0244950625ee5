"""Package discovery for setuptools (everything else is in pyproject.toml).

The top-level folders ``kernels/``, ``pipelines/`` and ``ui/`` install as ``dit_attn.kernels``,
``dit_attn.pipelines`` and ``dit_attn.ui`` (``package-dir`` in pyproject.toml). Every folder below them is listed as
a package, the bundled models' data folders included, so that setuptools ships them without warnings and a new
subpackage needs no edit here.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"dit_attn": "dit_attn", "dit_attn.kernels": "kernels", "dit_attn.pipelines": "pipelines", "dit_attn.ui": "ui"}
SKIP = ["*__pycache__*", "*.egg-info*"]

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_namespace_packages(folder, exclude=SKIP)]

setup(packages=sorted(set(packages)))
