"""Child seeds: every random stream in a run derives from the scenario's one master seed.

`child_seed(master, "deliberate", step)` is a pure function of its arguments, so a resumed run
draws exactly what an uninterrupted run would have drawn at the same step, whatever happened
before. Names are hashed with CRC32 (stable across processes, unlike `hash`).
"""

from __future__ import annotations

import zlib

import numpy as np


def child_seed(master: int, *keys: str | int) -> int:
    words = [master] + [zlib.crc32(key.encode()) if isinstance(key, str) else int(key) for key in keys]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def child_rng(master: int, *keys: str | int) -> np.random.Generator:
    return np.random.default_rng(child_seed(master, *keys))
