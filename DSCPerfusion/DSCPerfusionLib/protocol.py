"""The DSC acquisition checked against the 2020 consensus protocol: each item met, not met or unknown.

Source: Boxerman JL, Quarles CC, Hu LS, et al. Consensus recommendations for a dynamic susceptibility contrast
MRI protocol for use in high-grade gliomas. Neuro-Oncology 2020;22(9):1262-1275 (doi:10.1093/neuonc/noaa141).
What it recommends, and how sure we are of each number (the abstract was read here, the full text was not):

- Dosing and flip angle (abstract, certain): a full-dose preload and a full-dose bolus with an intermediate
  flip angle of 60 degrees gives the best CBV; when one dose is wanted, no preload, a full-dose bolus and a low
  flip angle of 30 degrees. Full dose = 0.1 mmol/kg (the standard single dose of gadolinium; certain). A
  fractional preload is neither option.
- Echo time by field strength (abstract, certain): 40-50 ms at 1.5 T, 20-35 ms at 3 T. (Not 25-35 ms at 3 T.)
- Field strength: the recommendations are written for 1.5 T and 3 T only (certain).
- Repetition time 1.0-1.5 s, the temporal resolution (the protocol table; fairly certain, not read here).
- Baseline: 30-50 time points before the bolus arrives (the protocol table; fairly certain, not read here).
  We require at least 30, the lower end.
Not checked (not in the series' headers, or not sure enough of the number): sequence (gradient-echo EPI),
injection rate, slice coverage, total duration.

The checks never refuse anything: a protocol outside the consensus still gets its maps, with the list beside.
The tolerances (flip angle within 5 degrees, field strength within 10 %) are ours, for scanners that write
2.89 T or 59.9 degrees; the consensus gives bare values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

CONSENSUS_SOURCE = ("Boxerman et al. Consensus recommendations for a dynamic susceptibility contrast MRI protocol "
                    "for use in high-grade gliomas. Neuro-Oncology 2020;22(9):1262-1275")
MET, NOT_MET, UNKNOWN = "met", "not met", "unknown"
STATUSES = (MET, NOT_MET, UNKNOWN)

# The consensus values, written once (see the module docstring for the certainty of each).
FIELD_STRENGTHS_T = (1.5, 3.0)
FIELD_STRENGTH_TOLERANCE = 0.10  # relative: a "3 T" scanner may write 2.89
ECHO_TIME_MS = {1.5: (40.0, 50.0), 3.0: (20.0, 35.0)}
FULL_DOSE_MMOL_PER_KG = 0.1
DOSE_TOLERANCE = 0.10  # relative, for weight-rounded doses
FLIP_ANGLE_WITH_PRELOAD_DEG = 60.0
FLIP_ANGLE_WITHOUT_PRELOAD_DEG = 30.0
FLIP_ANGLE_TOLERANCE_DEG = 5.0
REPETITION_TIME_S = (1.0, 1.5)
MIN_BASELINE_FRAMES = 30  # the consensus says 30-50
# Sidecar fields read here (BIDS names and units where BIDS has them; the two doses are this project's own, in
# mmol/kg, 0 meaning none, because BIDS has no field for a preload).
HEADER_FIELDS = {"MagneticFieldStrength": "T", "FlipAngle": "degrees", "PreloadDose": "mmol/kg",
                 "BolusDose": "mmol/kg"}
_EPSILON = 1e-6


@dataclass(frozen=True)
class ProtocolItem:
    key: str
    name: str
    expected: str
    found: str
    status: str  # one of STATUSES


def acquisition_header(fields: dict | None) -> dict[str, float | None]:
    """The HEADER_FIELDS of an already-parsed sidecar (or DICOM values in the same names and units): each a
    finite number or None. Anything else (text, a list, infinity) counts as not stated: nothing is refused."""
    fields = fields or {}
    return {name: _finite_number(fields.get(name)) for name in HEADER_FIELDS}


def _finite_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _near(value: float, target: float, relative: float) -> bool:
    return abs(value - target) <= relative * target + _EPSILON


def _within(value: float, limits: tuple[float, float]) -> bool:
    return limits[0] - _EPSILON <= value <= limits[1] + _EPSILON


def _field_key(tesla: float | None) -> float | None:
    """1.5 or 3.0 when the field strength is one of them, else None."""
    if tesla is None:
        return None
    return next((field for field in FIELD_STRENGTHS_T if _near(tesla, field, FIELD_STRENGTH_TOLERANCE)), None)


def check_field_strength(tesla: float | None) -> ProtocolItem:
    expected = " or ".join(f"{t:g} T" for t in FIELD_STRENGTHS_T)
    if tesla is None:
        return ProtocolItem("field_strength", "Field strength", expected, "not stated", UNKNOWN)
    return ProtocolItem("field_strength", "Field strength", expected, f"{tesla:g} T",
                        MET if _field_key(tesla) is not None else NOT_MET)


def check_echo_time(te_ms: float | None, tesla: float | None) -> ProtocolItem:
    expected = "; ".join(f"{low:g}-{high:g} ms at {field:g} T" for field, (low, high) in ECHO_TIME_MS.items())
    if te_ms is None:
        return ProtocolItem("echo_time", "Echo time (TE)", expected, "not stated", UNKNOWN)
    found = f"{te_ms:g} ms"
    field = _field_key(tesla)
    if field is not None:
        return ProtocolItem("echo_time", "Echo time (TE)", expected, f"{found} at {field:g} T",
                            MET if _within(te_ms, ECHO_TIME_MS[field]) else NOT_MET)
    if tesla is not None:  # a field the consensus does not cover: it gives no TE to compare with
        return ProtocolItem("echo_time", "Echo time (TE)", expected, f"{found} at {tesla:g} T (no consensus TE)",
                            UNKNOWN)
    # Field strength unknown: a TE outside every field's range fails whatever the field; inside one it depends.
    fits_some_field = any(_within(te_ms, limits) for limits in ECHO_TIME_MS.values())
    return ProtocolItem("echo_time", "Echo time (TE)", expected, f"{found} (field strength not stated)",
                        UNKNOWN if fits_some_field else NOT_MET)


def _preload_given(dose: float | None) -> bool | None:
    """True for a preload of any size, False for none (dose 0), None when not stated."""
    return None if dose is None else dose > _EPSILON


def check_preload(dose: float | None) -> ProtocolItem:
    expected = f"full dose ({FULL_DOSE_MMOL_PER_KG:g} mmol/kg) with a {FLIP_ANGLE_WITH_PRELOAD_DEG:g} deg flip " \
               f"angle, or none with {FLIP_ANGLE_WITHOUT_PRELOAD_DEG:g} deg"
    if dose is None:
        return ProtocolItem("preload", "Preload", expected, "not stated", UNKNOWN)
    if not _preload_given(dose):
        return ProtocolItem("preload", "Preload", expected, "none", MET)
    return ProtocolItem("preload", "Preload", expected, f"{dose:g} mmol/kg",
                        MET if _near(dose, FULL_DOSE_MMOL_PER_KG, DOSE_TOLERANCE) else NOT_MET)


def check_bolus(dose: float | None) -> ProtocolItem:
    expected = f"full dose ({FULL_DOSE_MMOL_PER_KG:g} mmol/kg)"
    if dose is None:
        return ProtocolItem("bolus_dose", "Bolus dose", expected, "not stated", UNKNOWN)
    return ProtocolItem("bolus_dose", "Bolus dose", expected, f"{dose:g} mmol/kg",
                        MET if _near(dose, FULL_DOSE_MMOL_PER_KG, DOSE_TOLERANCE) else NOT_MET)


def check_flip_angle(degrees: float | None, preload_dose: float | None) -> ProtocolItem:
    with_preload, without = FLIP_ANGLE_WITH_PRELOAD_DEG, FLIP_ANGLE_WITHOUT_PRELOAD_DEG
    expected = f"{with_preload:g} deg with a preload, {without:g} deg without"
    if degrees is None:
        return ProtocolItem("flip_angle", "Flip angle", expected, "not stated", UNKNOWN)
    found = f"{degrees:g} deg"
    near = {option: abs(degrees - option) <= FLIP_ANGLE_TOLERANCE_DEG for option in (with_preload, without)}
    preload = _preload_given(preload_dose)
    if preload is None:  # either option may apply: only an angle that fits neither is known to fail
        return ProtocolItem("flip_angle", "Flip angle", expected, f"{found} (preload not stated)",
                            UNKNOWN if any(near.values()) else NOT_MET)
    wanted = with_preload if preload else without
    return ProtocolItem("flip_angle", "Flip angle", expected,
                        f"{found} ({'with' if preload else 'without'} preload)", MET if near[wanted] else NOT_MET)


def check_temporal_resolution(interval_s: float | None) -> ProtocolItem:
    low, high = REPETITION_TIME_S
    expected = f"TR {low:g}-{high:g} s"
    if interval_s is None:
        return ProtocolItem("temporal_resolution", "Temporal resolution", expected, "not stated", UNKNOWN)
    return ProtocolItem("temporal_resolution", "Temporal resolution", expected, f"{interval_s:.3g} s",
                        MET if _within(interval_s, REPETITION_TIME_S) else NOT_MET)


def check_baseline(frames_before_arrival: int | None) -> ProtocolItem:
    expected = f"at least {MIN_BASELINE_FRAMES} frames before the bolus (30-50)"
    if frames_before_arrival is None:
        return ProtocolItem("baseline", "Baseline before the bolus", expected, "not known", UNKNOWN)
    return ProtocolItem("baseline", "Baseline before the bolus", expected, f"{frames_before_arrival} frames",
                        MET if frames_before_arrival >= MIN_BASELINE_FRAMES else NOT_MET)


def frame_interval_s(frame_times_s) -> float | None:
    """The temporal resolution: the median interval between frames (TR when frames are TR apart)."""
    times = np.asarray(frame_times_s, dtype=float) if frame_times_s is not None else np.zeros(0)
    return float(np.median(np.diff(times))) if times.size > 1 else None


def check_protocol(header: dict | None, echo_time_s: float | None, frame_times_s,
                   frames_before_arrival: int | None) -> list[ProtocolItem]:
    """Every consensus item for one DSC series. ``header``: a parsed sidecar (see ``acquisition_header``);
    ``frame_times_s``: the frames' times (s); ``frames_before_arrival``: the frames acquired before the bolus
    arrives (its 0-based frame index). None where not known."""
    fields = acquisition_header(header)
    tesla, preload = fields["MagneticFieldStrength"], fields["PreloadDose"]
    return [check_field_strength(tesla),
            check_echo_time(None if echo_time_s is None else echo_time_s * 1000.0, tesla),
            check_preload(preload), check_flip_angle(fields["FlipAngle"], preload), check_bolus(fields["BolusDose"]),
            check_temporal_resolution(frame_interval_s(frame_times_s)), check_baseline(frames_before_arrival)]


def protocol_report(items: list[ProtocolItem]) -> dict:
    """What perfusion.json and report.json say: the source, each item, and how many are met, not met, unknown."""
    return {"source": CONSENSUS_SOURCE, "items": [asdict(item) for item in items],
            "summary": {status: sum(item.status == status for item in items) for status in STATUSES}}


def summary_line(report: dict) -> str:
    """One line for a page: how many items are met, the ones not met with what was found, the ones unknown."""
    items = report["items"]
    failing = [f"{item['name']} {item['found']}" for item in items if item["status"] == NOT_MET]
    unknown = [item["name"] for item in items if item["status"] == UNKNOWN]
    line = f"DSC protocol vs 2020 consensus (Boxerman et al.): {report['summary'][MET]} of {len(items)} met"
    line += f"; not met: {'; '.join(failing)}" if failing else ""
    return line + (f"; unknown: {', '.join(unknown)}" if unknown else "")
