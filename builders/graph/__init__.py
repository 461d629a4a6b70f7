"""Experiments as data: stages declared in ``catalog.yaml``, planned against the store, run in order.

- :mod:`builders.graph.params`  parameter types of stage kinds (validation, no heavy imports)
- :mod:`builders.graph.spec`    ``experiments.NAME.stages`` parsed and checked (one-line errors)
- :mod:`builders.graph.kinds`   the registry of stage kinds: parameters, runner, cost estimate
- :mod:`builders.graph.plan`    pure planning: stage keys, what is up to date, what to build
- :mod:`builders.graph.records` which stage key produced which store versions (in the store)
- :mod:`builders.graph.execute` running a plan: failures stop descendants only
"""
