"""Peer engines we measure ourselves against (TIAToolbox), and the side-by-side study.

Kept import-light: :mod:`harness.peers.tiatoolbox_models` runs inside the peer
virtualenv, which has TIAToolbox but not our other dependencies.
"""

from __future__ import annotations
