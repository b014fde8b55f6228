"""Where the time of a pipeline call goes, recorded only when asked.

``with record_stages() as seconds: ...`` collects the seconds spent in each
named stage of every pipeline call made inside the block (the AniSOAP switch
included), so a benchmark can print the split without the pipeline taking a
timer argument. Outside such a block :func:`stage` costs one context-variable
lookup.

Stage names: ``frames`` (reading the frames into flat arrays), ``neighbour_list``,
``grouping`` (each pair's segment, the pairs grouped by it with the neighbour's
rotation and semi-axes gathered), ``kernel`` (the density variant), ``tensormap`` (metatensor objects),
``power_spectrum`` (the contraction and the mean over centres).
"""

from __future__ import annotations

import contextlib
import contextvars
import time

_current: contextvars.ContextVar = contextvars.ContextVar("einsum_workbench_stages", default=None)


@contextlib.contextmanager
def record_stages():
    """Collect stage durations (seconds, summed per name) made inside the block.

    Yields
    ------
    dict from stage name to seconds, filled as the block runs.
    """
    seconds: dict[str, float] = {}
    token = _current.set(seconds)
    try:
        yield seconds
    finally:
        _current.reset(token)


class stage:
    """Time the block as stage ``name`` when :func:`record_stages` is active.

    A class rather than a generator context manager: a pipeline call enters
    a dozen stages, and a generator's ~1.5 us each was 2% of a small call.
    """

    __slots__ = ("name", "seconds", "start")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.seconds = _current.get()
        if self.seconds is not None:
            self.start = time.perf_counter()

    def __exit__(self, *exc_info):
        if self.seconds is not None:
            self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - self.start
        return False
