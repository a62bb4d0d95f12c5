"""Framework adapters: how a model is built, trained for one sub-epoch, evaluated, and moved.

``base.py`` is the interface (:class:`~cerebro.frameworks.base.Framework`) and the code every
adapter shares (the model cache, the spec fields, the data sample); ``arrays.py`` turns
columns into inputs and targets; ``shipping.py`` decides what user code travels by value.
Each adapter (``keras/``, ``torch/``) is imported lazily, by name, through
:func:`~cerebro.frameworks.base.get_framework`, so that importing :mod:`cerebro` or
:mod:`cerebro.core` never costs a deep-learning framework import.
"""
