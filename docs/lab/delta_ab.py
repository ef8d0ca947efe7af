"""Lab: A/B of agent settings on tree deploys, in alternation on one fleet (issue #14).

``python docs/lab/delta_ab.py --variants '[{}, {"max_out_request_queue": 16}]'``
brings up a fleet (``$FABMURDER_FLEET_NAME``), writes the benchmark's trees
(:mod:`benchmarks.delta`) and, ``--rounds`` times, deploys each variant's
``murder.libtorrent`` settings in turn: the full tree to empty peers and,
with ``--delta``, the 1 % change on top. Each line printed is one run
(JSON), so variants measured minutes apart on a shared machine can be told
from the load beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from invoke import Context

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.delta import deploy, measured, on_host  # noqa: E402
from benchmarks.scaling import clear_releases, context  # noqa: E402
from fabmurder import install, pipeline  # noqa: E402
from fabmurder.config import settings  # noqa: E402
from fabmurder.testing import fleet as fleets  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--peers", type=int, default=16)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--variants",
        default="[{}]",
        help='JSON list of murder.libtorrent dicts ("_layout": "tarball" picks the layout)',
    )
    p.add_argument("--delta", action="store_true", help="deploy the 1 %% change after each full")
    p.add_argument("--out", default="/tmp/delta-ab.jsonl")
    args = p.parse_args()
    variants: list[dict[str, Any]] = json.loads(args.variants)
    wheel_dir = Path(tempfile.mkdtemp(prefix="fabmurder-ab-"))
    for path in install.wheel_set(settings(Context())).paths:
        shutil.copy(path, wheel_dir / path.name)
    extra: dict[str, Any] = {"wheel_dir": str(wheel_dir)}
    name = os.environ.get("FABMURDER_FLEET_NAME", "ab")
    fl = fleets.up(args.peers + 1, rate_mbit=args.rate, name=name)
    try:
        hosts = fl.hosts[: args.peers + 1]
        seeder, peers = hosts[0], hosts[1:]
        pipeline.setup(context(fl, peers, extra))
        changed = on_host(
            fl,
            seeder,
            f"make_tree(B / 'v1', {args.size_mib}, {args.files})\n"
            "print(change_tree(B / 'v1', B / 'v2'))",
        )
        with open(args.out, "a") as out:
            for r in range(args.rounds):
                for i, variant in enumerate(variants):
                    clear_releases(fl, peers)
                    settings_only = {k: v for k, v in variant.items() if not k.startswith("_")}
                    layout = variant.get("_layout", "tree")
                    config = {**extra, "layout": layout, "libtorrent": settings_only}
                    stamp = f"{int(time.time())}"
                    runs = [("full", "/srv/build/v1", f"a{i}-{stamp}")]
                    if args.delta:
                        runs.append(("delta", "/srv/build/v2", f"b{i}-{stamp}"))
                    for kind, src, tag in runs:
                        m = measured(fl, hosts, deploy(fl, peers, src, tag, config))
                        m.update(round=r, variant=variant, kind=kind, changed=changed)
                        if "size" in m:
                            m["seeder_over"] = round(
                                m["seeder_sent"] / (m["size"] if kind == "full" else changed), 2
                            )
                        line = json.dumps(m)
                        print(line, flush=True)
                        out.write(line + "\n")
        clear_releases(fl, peers)
    finally:
        fl.down()


if __name__ == "__main__":
    main()
