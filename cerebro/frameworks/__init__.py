"""Framework adapters: how a model is built, trained for one sub-epoch, evaluated, and moved.

Each adapter (``cerebro.frameworks.keras``; a torch one may follow) is imported lazily by
the code that needs it, so that importing :mod:`cerebro` or :mod:`cerebro.core` never costs a
deep-learning framework import.
"""
