"""The verbs of the ``famix`` command, one module each: ``run(...)`` checks every input, then does the work
or, when a run with the same record is finished, returns its result at once (and says so).

Stages call the machinery in :mod:`famix.engine` and never read each other's files; the composites
(:mod:`famix.stages.reproduce`, the demos) call stages: reproduce -> mine, train, evaluate.
"""
