"""``semisam compare``: methods × labeled draws × seeds on one dataset, paired against supervised-only.

See :mod:`semisam.compare.runner` for the folder layout and how runs are shared and resumed,
:mod:`semisam.compare.methods` for method names, :mod:`semisam.compare.stats` for the statistics and
:mod:`semisam.compare.report` for the outputs.
"""
from semisam.compare.methods import Method, parse_methods
from semisam.compare.runner import CompareSpec, run_compare

__all__ = ["CompareSpec", "Method", "parse_methods", "run_compare"]
