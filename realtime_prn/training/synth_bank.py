"""The large-pose bank on disk: turned faces synthesised once per recipe, reloaded on resume.

Why: ``tools/train.py --synth 12000`` spends 5-11 minutes on 2 cores turning faces
(:func:`uvreg_data.synthesise_large_poses`) before the first step, and did so again on every
``--resume`` of the same run, although the bank is deterministic in its inputs. A resumable
training run should start in seconds, so the bank is kept in ``engines/train/`` (git-ignored),
named by a hash of everything it depends on: the source cache images and labels themselves (so a
change upstream -- labels, backgrounds, the split -- can never reuse a stale bank), the count,
seed and synthesis arguments, and :data:`BANK_VERSION` for changes to the synthesis code.

A 12,000-face bank is ~3.7 GB (uint8 320x320x3 each, stored uncompressed so it loads at disk
speed). The folder keeps the most recently used banks up to :data:`BUDGET_BYTES` and deletes
older ones, saying so: it is a cache, every bank can be rebuilt.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from realtime_prn.io.atomic import atomic_open

#: Bump when :func:`uvreg_data.synthesise_large_poses` changes what it makes for the same inputs.
BANK_VERSION = "bank/1"
#: Banks kept in the folder (most recently used first); the one in use is always kept.
BUDGET_BYTES = 8 * 1024**3
PREFIX = "synth-"


def bank_key(cache: np.ndarray, q: np.ndarray, n: int, seed: int, sources: np.ndarray | None,
             **kwargs: object) -> str:
    """Content hash of a bank's inputs (3.6 s for the corpus' 7,707 cache images on 2 AVX2 cores:
    little next to 11 minutes of synthesis)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{BANK_VERSION}|{n}|{seed}|{sorted(kwargs.items())!r}|{cache.shape}|{q.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(cache)).cast("B"))
    h.update(np.ascontiguousarray(q, np.float64).tobytes())
    h.update(b"-" if sources is None else np.asarray(sources, bool).tobytes())
    return h.hexdigest()


def bank_path(folder: str | os.PathLike, n: int, key: str) -> Path:
    return Path(folder) / f"{PREFIX}{n}-{key[:16]}.npz"


def evict(folder: str | os.PathLike, keep: Path, budget: int = BUDGET_BYTES) -> list[Path]:
    """Delete the least recently used banks beyond ``budget`` bytes, never ``keep``; returns them."""
    banks = sorted(Path(folder).glob(f"{PREFIX}*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = keep.stat().st_size if keep.exists() else 0
    gone = []
    for p in banks:
        if p == keep:
            continue
        total += p.stat().st_size
        if total > budget:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def cached_large_poses(folder: str | os.PathLike, cache: np.ndarray, q: np.ndarray, decoder: object,
                       n: int, seed: int, sources: np.ndarray | None = None, progress: bool = True,
                       budget: int = BUDGET_BYTES, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    """:func:`uvreg_data.synthesise_large_poses` (same arguments and result), from ``folder`` when
    a bank of exactly these inputs is there, else synthesised and saved for the next start."""
    from realtime_prn.training.uvreg_data import synthesise_large_poses

    path = bank_path(folder, n, bank_key(cache, q, n, seed, sources, **kwargs))
    if path.exists():
        try:
            with np.load(path) as z:
                images, params = z["images"], z["params"]
            if images.shape[0] == n and params.shape[0] == n:
                os.utime(path)  # most recently used: the last to be evicted
                if progress:
                    print(f"large-pose bank {path} ({n} faces, {path.stat().st_size / 1e9:.1f} GB, cached)")
                return images, params
        except (OSError, ValueError, KeyError):
            pass  # unreadable (a disk error, a foreign file): rebuilt below and replaced
    images, params = synthesise_large_poses(cache, q, decoder, n, seed, progress=progress, sources=sources,
                                            **kwargs)
    try:
        with atomic_open(path, "wb") as fh:
            np.savez(fh, images=images, params=params)
        gone = evict(folder, path, budget)
        if progress:
            size = path.stat().st_size / 1e9
            extra = f"; removed {len(gone)} older bank(s) beyond {budget / 1024**3:.0f} GiB" if gone else ""
            print(f"large-pose bank saved to {path} ({size:.1f} GB; a resume reloads it){extra}")
    except OSError as e:  # a full disk costs the next start time, never this run
        print(f"warning: large-pose bank not saved ({e.strerror or e}); the next start synthesises it again")
    return images, params
