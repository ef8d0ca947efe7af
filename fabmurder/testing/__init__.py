"""Test support for fabmurder: a fleet of real SSH hosts on this machine.

Imported by the tests, the benchmarks and the demo, never by the runtime
package. See :mod:`fabmurder.testing.fleet`.
"""

from __future__ import annotations

from fabmurder.testing.fleet import Fleet, Host, down, load, up
from fabmurder.testing.proc import FleetError

__all__ = ["Fleet", "FleetError", "Host", "down", "load", "up"]
