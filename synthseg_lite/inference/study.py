"""What a study loop needs beyond one scan: reading the next scan while this one is segmented,
and a progress bar in scans per hour.

:class:`ScanReader` keeps one reader thread one scan ahead: when the loop asks for scan ``i``, the
read of the next pending scan starts in the background, so decompressing and decoding it (NIfTI
gzip, MGZ) overlaps the current scan's network. :class:`StudyProgress` is a ``tqdm`` bar whose
rate is scans per hour and whose time left counts only scans that are segmented (scans whose
outputs exist are skipped in no time and would distort the estimate).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

__all__ = ["ScanReader", "StudyProgress"]


class ScanReader:
    """Read scans in study order, the next pending one in a background thread.

    Args:
        scans: the study's scans (paths or any items), in the order the loop visits them.
        read: reads one scan (e.g. ``lambda s: load_volume(s.path, canonical=False)``).
        pending: whether a scan will be read at all (False: its outputs exist, skipped);
            only pending scans are read ahead.

    Use as a context manager; :meth:`read` returns what ``read(path)`` returns or raises what it
    raises (a read error surfaces for its own scan, in the loop).
    """

    def __init__(
        self,
        scans: Sequence[Any],
        read: Callable[[Any], Any],
        pending: Callable[[Any], bool] = lambda _: True,
    ):
        self.scans, self._read, self._pending = list(scans), read, pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-reader")
        self._ahead: tuple[Any, Future] | None = None

    def read(self, scan: Any) -> Any:
        """``read(scan)``, read ahead or now; starts reading the next pending scan after it."""
        if self._ahead is not None and self._ahead[0] == scan:
            future = self._ahead[1]
        else:
            if self._ahead is not None:
                self._ahead[1].cancel()
            future = self._pool.submit(self._read, scan)
        self._ahead = None
        try:
            position = self.scans.index(scan)
        except ValueError:
            position = len(self.scans)
        for nxt in self.scans[position + 1 :]:
            if self._pending(nxt):
                self._ahead = (nxt, self._pool.submit(self._read, nxt))
                break
        return future.result()

    def close(self) -> None:
        """Drop a read-ahead nobody asked for and stop the thread."""
        if self._ahead is not None:
            self._ahead[1].cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ScanReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StudyProgress(tqdm):
    """A progress bar over a study's scans showing scans per hour and the time left.

    Call :meth:`done` after each scan with the seconds it took and whether it was segmented (a
    scan kept from an earlier run counts toward the bar, not toward the rate).
    """

    def __init__(self, scans: Sequence[Any], disable: bool = False):
        super().__init__(
            scans, desc="scans", unit="scan", disable=disable,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self.seconds, self.segmented, self.left = 0.0, 0, len(scans)
        self._start = time.perf_counter()

    def done(self, seconds: float, segmented: bool = True) -> None:
        """Account for one finished (or skipped) scan and refresh the rate and time left."""
        self.left -= 1
        if not segmented:
            return
        self.segmented += 1
        self.seconds += seconds
        per_scan = self.seconds / self.segmented
        left = per_scan * self.left
        self.set_postfix_str(
            f"{3600 / max(per_scan, 1e-9):.0f} scans/h, "
            f"{self.format_interval(left)} left", refresh=False,
        )
