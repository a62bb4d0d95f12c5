"""What the modules for users of the original Cerebro share: one warning, one message shape.

``cerebro.backend``, ``cerebro.keras``, ``cerebro.tune`` and the stores accept the original
Cerebro's (ADALabUCSD/cerebro-system 1.x) arguments.  One that has no effect here is accepted
with a :class:`CompatibilityWarning` that says what happens instead; one that would change
what is trained is refused with an error (docs/migrating.md lists both).  Pure.
"""

from __future__ import annotations

import warnings

__all__ = ["CompatibilityWarning", "warn_ignored"]

GUIDE = "docs/migrating.md"


class CompatibilityWarning(UserWarning):
    """An argument of the original Cerebro that is accepted but has no effect (or a meaning that
    changed on purpose); the message says what happens instead."""


def warn_ignored(owner: str, name: str, what_happens: str, *, stacklevel: int) -> None:
    """Warn that the original Cerebro's argument ``name`` of ``owner`` has no effect.

    ``stacklevel`` counts from the caller of this function (1 = the caller itself), so that the
    warning points at the user's line.
    """
    warnings.warn(
        f"The '{name}' parameter of {owner} (original Cerebro) has no effect: {what_happens}. See {GUIDE}.",
        CompatibilityWarning, stacklevel=stacklevel + 1,
    )
