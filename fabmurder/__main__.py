"""Host-side entry point: ``python -m fabmurder <command> ...``.

The control machine starts every host-side program through this one entry
point over SSH. Each command lives in its own module, imported only when
asked for, so that a host which runs the tracker never imports libtorrent
and no host ever imports Fabric.
"""

from __future__ import annotations

import importlib
import sys

# command -> module whose ``main(argv: list[str]) -> int`` runs it
COMMANDS: dict[str, str] = {
    "tracker": "fabmurder.tracker.server",
    "create": "fabmurder.host.create",
    "seed": "fabmurder.host.transfer",
    "peer": "fabmurder.host.transfer",
    "daemon": "fabmurder.host.daemon",
    "allow": "fabmurder.host.allowlist",
    "stats": "fabmurder.host.stats",
    "status": "fabmurder.host.status",
    "clean": "fabmurder.host.clean",
    "finish": "fabmurder.host.finish",
    "poll": "fabmurder.host.statusfile",
    "digest": "fabmurder.host.digest",
    "token": "fabmurder.host.token",
    "serve": "fabmurder.host.serve",
    "put": "fabmurder.host.put",
}

USAGE = "usage: python -m fabmurder {" + ",".join(COMMANDS) + "} [options]\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    module_name = COMMANDS.get(command)
    if module_name is None:
        sys.stderr.write(f"fabmurder: unknown command {command!r}\n{USAGE}")
        return 2
    module = importlib.import_module(module_name)
    # seed and peer share one module; it is told which role it plays.
    if module_name == "fabmurder.host.transfer":
        rest = [command, *rest]
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
