"""When a DSC series' frames were acquired and with which echo time: its sidecar (BIDS-style JSON) or given values."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class AcquisitionTiming:
    times_s: np.ndarray
    te_s: float
    tr_s: float | None


def read_timing(frames: int, sidecar: Path | None, tr_s: float | None, te_s: float | None) -> AcquisitionTiming:
    """Frame times and echo time from a BIDS-style sidecar (seconds) or from explicit TR/TE (seconds)."""
    data: dict = {}
    if sidecar is not None:
        try:
            data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"The DSC sidecar {sidecar} could not be read as JSON ({error}).") from None
    te = te_s if te_s is not None else data.get("EchoTime")
    tr = tr_s if tr_s is not None else data.get("RepetitionTime")
    if te is None:
        raise ValueError("The echo time is missing: give --te (seconds) or a sidecar with EchoTime.")
    te = float(te)
    if te > 1.0:
        raise ValueError(f"The echo time {te:g} looks like milliseconds; give it in seconds (e.g. {te / 1000:g}).")
    if te <= 0:
        raise ValueError(f"The echo time must be positive, got {te:g} s.")
    if "FrameTimes" in data and tr_s is None:
        times = np.asarray(data["FrameTimes"], dtype=float)
        if len(times) != frames:
            raise ValueError(f"The DSC sidecar lists {len(times)} frame times for a series of {frames} frames.")
    elif tr is not None:
        tr = float(tr)
        if tr > 20.0:
            raise ValueError(f"The repetition time {tr:g} looks like milliseconds; give it in seconds.")
        if tr <= 0:
            raise ValueError(f"The repetition time must be positive, got {tr:g} s.")
        times = np.arange(frames) * tr
    else:
        raise ValueError("The repetition time is missing: give --tr (seconds) or a sidecar with RepetitionTime.")
    return AcquisitionTiming(times, te, None if tr is None else float(tr))


def read_frame_times(sidecar: str | os.PathLike, frames: int) -> np.ndarray:
    """Frame times (s) from a DSC sidecar: ``FrameTimes`` if present, else frame index x ``RepetitionTime``."""
    try:
        data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"The DSC sidecar {sidecar} could not be read as JSON ({error}).") from None
    if "FrameTimes" in data:
        times = np.asarray(data["FrameTimes"], dtype=float)
        if len(times) != frames:
            raise ValueError(f"The DSC sidecar {sidecar} lists {len(times)} frame times for {frames} frames.")
        return times
    if "RepetitionTime" not in data:
        raise ValueError(f"The DSC sidecar {sidecar} has neither FrameTimes nor RepetitionTime.")
    return np.arange(frames) * float(data["RepetitionTime"])
