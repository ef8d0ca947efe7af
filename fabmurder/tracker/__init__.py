"""The HTTP BitTorrent tracker that fabmurder runs on the tracker host.

:mod:`~fabmurder.tracker.protocol` parses and encodes the protocol,
:mod:`~fabmurder.tracker.swarm` keeps the peers, and
:mod:`~fabmurder.tracker.server` serves it (``python -m fabmurder tracker``).
Nothing here imports Fabric, Invoke or libtorrent.
"""
