"""When a DSC series' frames were acquired and with which echo time: its sidecar (BIDS-style JSON) or given values.

``read_timing`` is the one reader of the sidecar: every caller (case folders, ``gliomaprog perfusion``, the
prediction runner, the scene of a case folder) goes through it, so a sidecar means the same everywhere. Every
timing field of the sidecar is checked when the file is read, whether or not it will be used: a wrong file is
refused before any long computation, with one sentence naming it and the field.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from GliomaProgressionLib.case.files import json_kind, read_json_object

# A TR above this many seconds is milliseconds written where seconds belong (DSC TRs are 0.3-2.5 s).
LONGEST_PLAUSIBLE_TR_S = 20.0
# The same for the echo time (DSC TEs are 0.02-0.05 s).
LONGEST_PLAUSIBLE_TE_S = 1.0
# The sidecar's one-number fields: what they are called in a message, their plausible maximum, an example.
SIDECAR_SECONDS = {"EchoTime": ("echo time", LONGEST_PLAUSIBLE_TE_S, 0.03),
                   "RepetitionTime": ("repetition time", LONGEST_PLAUSIBLE_TR_S, 1.5)}


@dataclass(frozen=True)
class AcquisitionTiming:
    times_s: np.ndarray
    te_s: float | None  # None only when read with need_echo_time=False
    tr_s: float | None


@dataclass(frozen=True)
class SidecarTiming:
    """The timing fields of a DSC sidecar, checked; None where the sidecar has none (or null)."""

    te_s: float | None = None
    tr_s: float | None = None
    frame_times_s: np.ndarray | None = None


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value) -> float | None:
    """A JSON number as a float (inf when too large for one); None for anything else, true/false included."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _checked_seconds(value: float, quantity: str, longest: float, where: str = "") -> float:
    """A positive, finite time in seconds; above ``longest`` it is milliseconds written where seconds belong."""
    if not math.isfinite(value):
        raise ValueError(f"The {quantity}{where} is {value:g}; it must be a finite number of seconds.")
    if value <= 0:
        raise ValueError(f"The {quantity}{where} must be positive, got {value:g} s.")
    if value > longest:
        raise ValueError(f"The {quantity} {value:g}{where} looks like milliseconds; give it in seconds "
                         f"(e.g. {value / 1000:g}).")
    return value


def _sidecar_seconds(data: dict, field: str, sidecar) -> float | None:
    quantity, longest, example = SIDECAR_SECONDS[field]
    if data.get(field) is None:
        return None
    value = _number(data[field])
    if value is None:
        raise ValueError(f"The DSC sidecar {sidecar} gives {field} as {_shown(data[field])} "
                         f"({json_kind(data[field])}); it must be one number of seconds (e.g. {example}).")
    return _checked_seconds(value, quantity, longest, f" ({field} in the DSC sidecar {sidecar})")


def _check_frame_time_values(values: list, sidecar) -> np.ndarray:
    for position, value in enumerate(values):
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"The DSC sidecar {sidecar} has {_shown(value)} ({json_kind(value)}) at position "
                             f"{position} of FrameTimes; every frame time must be a finite number of seconds.")
        if number < 0:
            raise ValueError(f"The DSC sidecar {sidecar} has a negative frame time ({number:g} s at position "
                             f"{position} of FrameTimes); frame times count seconds from the start of the "
                             "acquisition.")
    return np.asarray(values, dtype=float)


def _check_frame_order(times: np.ndarray, sidecar) -> None:
    """Frames must follow each other: equal or falling times would only fail in the perfusion fit, minutes later."""
    steps = np.diff(times)
    if (steps <= 0).any():
        first = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(f"The DSC sidecar {sidecar} lists FrameTimes that do not increase: position {first + 1} "
                         f"({times[first + 1]:g} s) does not come after position {first} ({times[first]:g} s); each "
                         "frame must be later than the one before.")
    if steps.size and np.median(steps) > LONGEST_PLAUSIBLE_TR_S:
        raise ValueError(f"The DSC sidecar {sidecar} lists FrameTimes {np.median(steps):g} apart, which looks like "
                         "milliseconds; give them in seconds.")


def _sidecar_frame_times(data: dict, sidecar) -> np.ndarray | None:
    values = data.get("FrameTimes")
    if values is None:
        return None
    if not isinstance(values, list):
        raise ValueError(f"The DSC sidecar {sidecar} gives FrameTimes as {_shown(values)} ({json_kind(values)}); "
                         "it must be a list of the frames' times in seconds.")
    times = _check_frame_time_values(values, sidecar)
    _check_frame_order(times, sidecar)
    return times


def read_sidecar(sidecar: str | os.PathLike | None) -> SidecarTiming:
    """The checked timing fields of a DSC sidecar (none without one). Other fields (BIDS has many) are left alone."""
    if sidecar is None:
        return SidecarTiming()
    data = read_json_object(sidecar, "DSC sidecar")
    return SidecarTiming(_sidecar_seconds(data, "EchoTime", sidecar), _sidecar_seconds(data, "RepetitionTime", sidecar),
                         _sidecar_frame_times(data, sidecar))


def _frame_times(frames: int, fields: SidecarTiming, tr: float | None, tr_given: bool, sidecar) -> np.ndarray:
    """The sidecar's FrameTimes, else frame index x TR (a TR given by the caller wins over FrameTimes)."""
    if fields.frame_times_s is not None and not tr_given:
        if len(fields.frame_times_s) != frames:
            raise ValueError(f"The DSC sidecar {sidecar} lists {len(fields.frame_times_s)} frame times for a series "
                             f"of {frames} frames.")
        return fields.frame_times_s
    if tr is None:
        raise ValueError("The repetition time is missing: it is neither in the DSC sidecar (RepetitionTime or "
                         "FrameTimes) nor given.")
    return np.arange(frames) * tr


def read_timing(frames: int, sidecar: str | os.PathLike | None, tr_s: float | None = None,
                te_s: float | None = None, need_echo_time: bool = True) -> AcquisitionTiming:
    """Frame times and echo time from a BIDS-style sidecar (seconds) or from explicit TR/TE (seconds, these win).

    ``need_echo_time=False``: frame times only (te_s None when unknown), e.g. to show the series in a viewer.
    """
    fields = read_sidecar(sidecar)
    te = fields.te_s if te_s is None else _checked_seconds(float(te_s), "echo time", LONGEST_PLAUSIBLE_TE_S)
    if te is None and need_echo_time:
        raise ValueError("The echo time is missing: it is neither in the DSC sidecar (EchoTime) nor given.")
    tr = fields.tr_s if tr_s is None else _checked_seconds(float(tr_s), "repetition time", LONGEST_PLAUSIBLE_TR_S)
    return AcquisitionTiming(_frame_times(frames, fields, tr, tr_s is not None, sidecar), te, tr)
