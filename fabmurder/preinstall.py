"""Before the agent exists: check that ``remote_path`` is the deploy user's own.

``temp_path`` is checked on every host command by the agent itself
(:mod:`fabmurder.host.privatedir`). ``remote_path`` holds that agent, so
setup writes into it before there is an agent to ask. Setup therefore
sends the host-side module's own source to the host's Python (``-I``,
isolated, on stdin: nothing lands on disk and nothing on the command line)
and calls its ``ensure`` there. A ``remote_path`` that another user owns or
can write, that is a symlink, or that sits below a directory another user
could swap, is refused before a wheel is uploaded; a missing one is made
0700.
"""

from __future__ import annotations

from pathlib import Path

from fabric import Connection

from fabmurder.config import Settings
from fabmurder.errors import HostError
from fabmurder.host import privatedir
from fabmurder.remote import failure_reason, feeding, host_name, quote

#: the host-side module needs only MurderError from the package: a stand-in
#: is made, so the very code the agent runs checks the directory
_PRELUDE = """\
import sys, types
package = types.ModuleType("fabmurder")
package.__path__ = []
errors = types.ModuleType("fabmurder.errors")
exec("class MurderError(Exception):\\n    pass\\n", errors.__dict__)
sys.modules.update({"fabmurder": package, "fabmurder.errors": errors})
module = types.ModuleType("privatedir")
"""
_CALL = """
try:
    print(module.ensure(sys.argv[1]))
except module.UnsafeDirectory as exc:
    sys.exit(f"fabmurder: {exc}")
"""


def script() -> str:
    """Return the program the host's Python runs: the host module, then ``ensure(argv[1])``."""
    source = Path(privatedir.__file__).read_text(encoding="utf-8")
    return f"{_PRELUDE}exec(compile({source!r}, 'privatedir.py', 'exec'), module.__dict__)\n{_CALL}"


def ensure_remote_path(conn: Connection, s: Settings) -> None:
    """Make sure ``remote_path`` on ``conn``'s host is private to the deploy user (0700).

    :raises HostError: naming the unsafe directory, before anything is written.
    """
    result = conn.run(f"{quote(s.python)} -I - {quote(s.remote_path)}", **feeding(script()))
    if result.exited != 0:
        raise HostError(host_name(conn), f"remote_path: {failure_reason(result)}", result)
