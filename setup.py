"""The package list, for one build-time mapping: the repository's top-level ``recipes/`` ships as ``semisam/recipes``.

Everything else is in pyproject.toml, including that mapping (``package-dir``) and which recipe files go in
(``package-data``: every ``*.yaml`` and ``*.md`` under ``recipes/`` at build time). pyproject.toml cannot add a
mapped package to the packages it discovers, so they are listed here: every ``semisam*`` and ``data_prep*``
package of the checkout, plus ``semisam.recipes`` and its group folders as found now (listed so setuptools
does not warn that they look importable). ``semisam.config.compose`` reads the installed ``semisam/recipes``;
an editable checkout reads ``recipes/`` itself.
"""
from setuptools import find_namespace_packages, setup

code = find_namespace_packages(include=["semisam*", "data_prep*"], exclude=["*__pycache__*"])
recipes = ["semisam.recipes", *(f"semisam.recipes.{group}" for group in find_namespace_packages(where="recipes"))]
setup(packages=[*code, *recipes])
