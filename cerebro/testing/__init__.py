"""Test helpers shipped with cerebro for people who extend it (as ``optuna.testing`` is).

``check_driver_contract(make_driver, space, ...)`` runs the contract suite every built-in
search driver passes against a custom :class:`cerebro.SearchDriver`; see
``docs/search_drivers.md``.
"""

from .driver_contract import ContractReport, ContractViolation, check_config, check_driver_contract

__all__ = ["check_driver_contract", "check_config", "ContractReport", "ContractViolation"]
