"""The verbs of the ``famix`` command, one module each: ``run(...)`` checks every input, then does the work
or, when a run with the same record is finished, returns its result at once (and says so).

Each module owns its verb: its settings, its run record, open / finished / status (an
``engine.runs.Status``) and the code only it runs; :mod:`famix.engine` holds what two verbs share. Stages
never read each other's files; the composites call stages: reproduce -> mine, train, evaluate; adapt ->
train; benchmark -> export (its exported variants are export's checked files); evaluate -> report
(``famix eval --report``: the page of its results); train -> report (the run's page at its end); app ->
adapt (the page's adapt button). The demos call stages too.
"""
