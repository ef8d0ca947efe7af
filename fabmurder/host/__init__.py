"""The host side: the programs ``python -m fabmurder`` runs on the role hosts.

Every command here starts a fresh interpreter, once per host per step, and in
the lab 17 hosts share 2 cores, so start-up imports are kept lean: no Fabric,
no ``typing`` at run time (``TYPE_CHECKING = False`` guards the imports that
only type checkers need), no ``dataclasses``, ``tempfile`` or
``importlib.metadata`` (docs/performance.md has the measurements).
"""
