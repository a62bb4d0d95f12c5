"""Errors raised by cerebro."""


class CerebroError(Exception):
    """Base class of errors raised by cerebro."""
