"""When a DSC series' frames were acquired and with which echo time: its sidecar (BIDS-style JSON) or given values.

``read_timing`` is the one reader of the sidecar: every caller (case folders, ``gliomaprog perfusion``, the
prediction runner, the scene of a case folder) goes through it, so a sidecar means the same everywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A TR above this many seconds is milliseconds written where seconds belong (DSC TRs are 0.3-2.5 s).
LONGEST_PLAUSIBLE_TR_S = 20.0


@dataclass(frozen=True)
class AcquisitionTiming:
    times_s: np.ndarray
    te_s: float | None  # None only when read with need_echo_time=False
    tr_s: float | None


def _sidecar_fields(sidecar: str | os.PathLike | None) -> dict:
    """The JSON object of a DSC sidecar ({} without one)."""
    if sidecar is None:
        return {}
    try:
        data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"The DSC sidecar {sidecar} could not be read as JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"The DSC sidecar {sidecar} is not a JSON object of named fields.")
    return data


def _echo_time(data: dict, te_s: float | None) -> float:
    te = te_s if te_s is not None else data.get("EchoTime")
    if te is None:
        raise ValueError("The echo time is missing: it is neither in the DSC sidecar (EchoTime) nor given.")
    te = float(te)
    if te > 1.0:
        raise ValueError(f"The echo time {te:g} looks like milliseconds; give it in seconds (e.g. {te / 1000:g}).")
    if te <= 0:
        raise ValueError(f"The echo time must be positive, got {te:g} s.")
    return te


def _checked_tr(tr: float) -> float:
    if tr > LONGEST_PLAUSIBLE_TR_S:
        raise ValueError(f"The repetition time {tr:g} looks like milliseconds; give it in seconds.")
    if tr <= 0:
        raise ValueError(f"The repetition time must be positive, got {tr:g} s.")
    return tr


def _frame_times(frames: int, data: dict, tr: float | None, tr_given: bool, sidecar) -> np.ndarray:
    """The sidecar's FrameTimes, else frame index x TR (a TR given by the caller wins over FrameTimes)."""
    if "FrameTimes" in data and not tr_given:
        times = np.asarray(data["FrameTimes"], dtype=float)
        if len(times) != frames:
            raise ValueError(f"The DSC sidecar {sidecar} lists {len(times)} frame times for a series of {frames} "
                             "frames.")
        return times
    if tr is None:
        raise ValueError("The repetition time is missing: it is neither in the DSC sidecar (RepetitionTime or "
                         "FrameTimes) nor given.")
    return np.arange(frames) * _checked_tr(tr)


def read_timing(frames: int, sidecar: str | os.PathLike | None, tr_s: float | None = None,
                te_s: float | None = None, need_echo_time: bool = True) -> AcquisitionTiming:
    """Frame times and echo time from a BIDS-style sidecar (seconds) or from explicit TR/TE (seconds, these win).

    ``need_echo_time=False``: frame times only (te_s None when unknown), e.g. to show the series in a viewer.
    """
    data = _sidecar_fields(sidecar)
    known = te_s is not None or "EchoTime" in data
    te = _echo_time(data, te_s) if need_echo_time or known else None
    tr = tr_s if tr_s is not None else data.get("RepetitionTime")
    tr = None if tr is None else float(tr)
    times = _frame_times(frames, data, tr, tr_s is not None, sidecar)
    return AcquisitionTiming(times, te, tr)
