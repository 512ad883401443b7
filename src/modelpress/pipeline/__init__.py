"""Recipes and the verified pipeline.

- :mod:`~modelpress.pipeline.recipe`: load and validate recipes (errors name field and line)
- :mod:`~modelpress.pipeline.presets`: mobile, edge, server
- :mod:`~modelpress.pipeline.stages`: the Stage protocol, registry, and adapters to the verbs
- :mod:`~modelpress.pipeline.run`: baseline, resumable stages, gate with back-off, artifact
- :mod:`~modelpress.pipeline.gate`: measurement, verdict, back-off order
- :mod:`~modelpress.pipeline.search`: the Pareto search on a process pool or Ray Tune
- :mod:`~modelpress.pipeline.report_html`: the self-contained report.html
"""
