"""DSC protocol QA against the 2020 consensus (Boxerman et al.): each item met, not met or unknown, computed by
hand from the consensus values (1.5 T: TE 40-50 ms; 3 T: TE 20-35 ms; 60 deg with a full-dose preload, 30 deg
without; full-dose bolus 0.1 mmol/kg; TR 1-1.5 s; at least 30 baseline frames)."""

import numpy as np
import pytest

from DSCPerfusionLib.protocol import (MET, NOT_MET, UNKNOWN, acquisition_header, check_protocol, protocol_report,
                                      summary_line)

CONSENSUS_15T = {"MagneticFieldStrength": 1.5, "FlipAngle": 60, "PreloadDose": 0.1, "BolusDose": 0.1}


def statuses(header, te_s=0.045, times=np.arange(120) * 1.2, arrival=40):
    return {item.key: item.status for item in check_protocol(header, te_s, times, arrival)}


def test_a_consensus_acquisition_meets_every_item():
    assert set(statuses(CONSENSUS_15T).values()) == {MET}
    assert len(statuses(CONSENSUS_15T)) == 7


@pytest.mark.parametrize("tesla, te_s, expected", [
    (1.5, 0.040, MET), (1.5, 0.050, MET), (1.5, 0.035, NOT_MET), (1.5, 0.0505, NOT_MET),
    (3.0, 0.020, MET), (3.0, 0.035, MET), (3.0, 0.045, NOT_MET), (3.0, 0.019, NOT_MET),
    (2.89, 0.030, MET),  # a "3 T" scanner that writes its exact field
    (None, 0.030, UNKNOWN), (None, 0.045, UNKNOWN),  # fits one field's range: depends on the field
    (None, 0.038, NOT_MET), (None, 0.060, NOT_MET),  # fits neither field's range
    (7.0, 0.020, UNKNOWN),  # the consensus has no TE for 7 T
])
def test_echo_time_by_field_strength(tesla, te_s, expected):
    header = dict(CONSENSUS_15T, MagneticFieldStrength=tesla)
    assert statuses(header, te_s=te_s)["echo_time"] == expected


@pytest.mark.parametrize("tesla, expected", [(1.5, MET), (3.0, MET), (2.89, MET), (7.0, NOT_MET), (1.0, NOT_MET),
                                             (None, UNKNOWN)])
def test_field_strength(tesla, expected):
    assert statuses(dict(CONSENSUS_15T, MagneticFieldStrength=tesla))["field_strength"] == expected


@pytest.mark.parametrize("flip, preload, expected_flip, expected_preload", [
    (60, 0.1, MET, MET),  # the recommended protocol
    (30, 0.0, MET, MET),  # the single-dose alternative: no preload, 30 deg
    (60, 0.0, NOT_MET, MET),  # 60 deg needs the preload
    (30, 0.1, NOT_MET, MET),  # 30 deg is the no-preload option
    (90, 0.1, NOT_MET, MET),
    (62, 0.1, MET, MET),  # within the 5 deg tolerance
    (60, 0.025, MET, NOT_MET),  # a quarter-dose preload is neither option; 60 deg is right for a preload
    (60, None, UNKNOWN, UNKNOWN),  # fits the preload option, but the preload is not stated
    (30, None, UNKNOWN, UNKNOWN),
    (90, None, NOT_MET, UNKNOWN),  # fits neither option
    (None, 0.1, UNKNOWN, MET),
])
def test_flip_angle_goes_with_the_preload(flip, preload, expected_flip, expected_preload):
    result = statuses(dict(CONSENSUS_15T, FlipAngle=flip, PreloadDose=preload))
    assert (result["flip_angle"], result["preload"]) == (expected_flip, expected_preload)


@pytest.mark.parametrize("dose, expected", [(0.1, MET), (0.105, MET), (0.2, NOT_MET), (0.05, NOT_MET),
                                            (None, UNKNOWN)])
def test_bolus_dose(dose, expected):
    assert statuses(dict(CONSENSUS_15T, BolusDose=dose))["bolus_dose"] == expected


@pytest.mark.parametrize("interval, expected", [(1.0, MET), (1.5, MET), (0.9, NOT_MET), (2.0, NOT_MET)])
def test_temporal_resolution_is_the_frame_interval(interval, expected):
    assert statuses(CONSENSUS_15T, times=np.arange(80) * interval)["temporal_resolution"] == expected


def test_temporal_resolution_unknown_without_frame_times():
    assert statuses(CONSENSUS_15T, times=None)["temporal_resolution"] == UNKNOWN


@pytest.mark.parametrize("arrival, expected", [(30, MET), (50, MET), (29, NOT_MET), (11, NOT_MET), (None, UNKNOWN)])
def test_baseline_counts_the_frames_before_the_bolus(arrival, expected):
    assert statuses(CONSENSUS_15T, arrival=arrival)["baseline"] == expected


def test_unreadable_header_values_are_unknown_not_refused():
    header = {"MagneticFieldStrength": "3T", "FlipAngle": [60], "PreloadDose": True, "BolusDose": float("inf")}
    assert acquisition_header(header) == {"MagneticFieldStrength": None, "FlipAngle": None, "PreloadDose": None,
                                          "BolusDose": None}
    result = statuses(header, te_s=0.030)
    assert [result[key] for key in ("field_strength", "flip_angle", "preload", "bolus_dose", "echo_time")] == \
        [UNKNOWN] * 5


def test_report_counts_and_line():
    header = {"MagneticFieldStrength": 3.0, "FlipAngle": 90}
    report = protocol_report(check_protocol(header, 0.030, np.arange(60) * 1.5, 11))
    # field met, TE 30 ms at 3 T met, TR 1.5 met; flip 90 fits neither option, baseline 11 < 30; preload, bolus
    # not stated.
    assert report["summary"] == {MET: 3, NOT_MET: 2, UNKNOWN: 2}
    assert "Boxerman" in report["source"] and "2020" in report["source"]
    flip = next(item for item in report["items"] if item["key"] == "flip_angle")
    assert flip["found"].startswith("90 deg") and "60 deg" in flip["expected"] and "30 deg" in flip["expected"]
    line = summary_line(report)
    assert line == ("DSC protocol vs 2020 consensus (Boxerman et al.): 3 of 7 met; not met: Flip angle 90 deg "
                    "(preload not stated); Baseline before the bolus 11 frames; unknown: Preload, Bolus dose")
