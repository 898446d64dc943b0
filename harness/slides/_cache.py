"""A byte-bounded LRU cache of decoded tiles.

With stride = patch / 2 every tile is read about four times; decoding it once
and keeping it while neighbouring patches need it removes most JPEG work. The
bound is in bytes so that it can be counted inside a memory budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    import numpy as np
    from numpy.typing import NDArray


class TileCache:
    """Least-recently-used tiles, at most ``max_bytes`` of array data in total.

    Parameters
    ----------
    max_bytes
        Capacity; ``0`` disables caching (every lookup decodes).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._tiles: OrderedDict[Hashable, NDArray[np.uint8]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], NDArray[np.uint8]]) -> NDArray[np.uint8]:
        """The tile under ``key``, calling ``load()`` (outside the lock) on a miss."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
                self.hits += 1
                return tile
            self.misses += 1
        tile = load()
        tile.flags.writeable = False  # shared between reads: nobody may modify it
        if tile.nbytes <= self.max_bytes:
            with self._lock:
                if key not in self._tiles:
                    self._tiles[key] = tile
                    self.nbytes += tile.nbytes
                self._evict()
        return tile

    def resize(self, max_bytes: int) -> None:
        """Set the capacity, evicting least-recently-used tiles beyond it."""
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._evict()

    def clear(self) -> None:
        """Drop every tile."""
        with self._lock:
            self._tiles.clear()
            self.nbytes = 0

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes:
            _, old = self._tiles.popitem(last=False)
            self.nbytes -= old.nbytes
