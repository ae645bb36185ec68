"""``famix demo``: the whole FAMix recipe (mine, train, evaluate) on the miniature world of
:mod:`famix.world`, on a CPU, in minutes. An application of the library, like ``famix.world``: nothing in
the library imports it.

- ``run``: the protocol (settings, variants, seeds), reusing finished runs: :func:`run_demo`;
- ``report``: the markdown table, the bar chart and the labelled grid of predictions.

Protocol and how its settings were chosen: ``docs/demo.md``.
"""

from famix.demo.run import run_demo

__all__ = ["run_demo"]
