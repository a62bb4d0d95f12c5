"""The experiment layer: the engine loop, its typed tasks, the journal and the workspace.

``core/`` decides (pure); this package acts: it blocks on the backend, writes the store and
journals every fact before applying it to the :class:`~cerebro.core.state.ExperimentState`.
"""
