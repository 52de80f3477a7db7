"""The ``hybridflow`` command line: ``demo``, ``train``, ``sample`` and ``bench memory``.

The entry point is :func:`hybridflow.cli.main.main` (the ``hybridflow`` console script and
``python -m hybridflow``). This package re-exports nothing, so that the benchmarks can use
:mod:`hybridflow.cli.outputs` without loading every command.
"""

__all__: list[str] = []
