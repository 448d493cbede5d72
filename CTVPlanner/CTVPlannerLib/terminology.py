"""The terminology of every segment the extension writes: one declaration (``TERMS``) and the builder of the entry
Slicer stores on a segment.

A Slicer segment carries a terminology entry (the segment tag ``TerminologyEntry``): the name of a terminology
context (a list Slicer's Terminologies module has loaded), a category and a type, each a coded concept (coding
scheme, code value, code meaning), optionally a type modifier, and an anatomic region context with a region and
its modifier. Slicer 5.12 stores it as one string (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``)::

    context~category~type~typeModifier~regionContext~region~regionModifier

each coded part ``scheme^value^meaning``, an absent one ``^^``.

A term whose type is in one of Slicer's own lists names that list, with Slicer's codes and meanings. The others
(DICOM radiotherapy targets CTV/PTV/GTV, the DICOM lesion types "Enhancing Lesion" and "Non-Enhancing Lesion",
and the resection cavity, which has no standard code and gets one of the extension's private coding scheme) are
in the extension's own list, ``TERMINOLOGY_FILE`` (Slicer's JSON schema for terminology contexts), which the
modules load into Slicer's Terminologies module (``GliomaProgressionLib.mrml.load_extension_terminology``).

Testing/test_terminology.py checks every term against Slicer's lists and this file; segments get their entry
from ``entry``, ``lesion_entry`` or ``target_entry`` only, never from a string written elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Terminology contexts (the "SegmentationCategoryTypeContextName" of each list).
SLICER_DICOM_MASTER = "Segmentation category and type - DICOM master list"
EXTENSION_CONTEXT = "Segmentation category and type - GliomaProgression"
# The anatomic region context Slicer's segments name by default; no term here sets a region.
REGION_CONTEXT = "Anatomic codes - DICOM master list"

# The extension's list, shipped with the CTV Planner module (installed as listed in CTVPlanner/CMakeLists.txt).
TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "Terminologies" / \
    "GliomaProgressionTerminology.term.json"

# DICOM reserves coding scheme designators starting with "99" for private schemes.
PRIVATE_SCHEME = "99GLIOPROG"


@dataclass(frozen=True)
class Code:
    scheme: str  # coding scheme designator: SCT (SNOMED CT), DCM (DICOM), NCIt, or PRIVATE_SCHEME
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


NO_CODE = "^^"


@dataclass(frozen=True)
class Term:
    context: str
    category: Code
    type: Code
    modifier: Code | None = None

    def entry(self) -> str:
        """The terminology entry as Slicer 5.12 serialises it (no anatomic region)."""
        modifier = str(self.modifier) if self.modifier else NO_CODE
        return "~".join((self.context, str(self.category), str(self.type), modifier, REGION_CONTEXT, NO_CODE,
                         NO_CODE))


# Categories (DICOM CID 7150), with the meanings Slicer's lists give them.
MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
SPATIAL_AND_RELATIONAL = Code("SCT", "309825002", "Spatial and Relational Concept")

# Every term a segment of the extension may carry, by role.
TERMS: dict[str, Term] = {
    # Lesion parts (BraTS 2024 labels 1-4).
    "necrosis": Term(SLICER_DICOM_MASTER, MORPHOLOGICALLY_ALTERED, Code("SCT", "6574001", "Necrosis")),
    # SNFH (surrounding non-enhancing FLAIR hyperintensity): oedema and infiltrating tumour, DICOM CID 7159.
    "non_enhancing_lesion": Term(EXTENSION_CONTEXT, MORPHOLOGICALLY_ALTERED,
                                 Code("NCIt", "C81175", "Non-Enhancing Lesion")),
    "enhancing_lesion": Term(EXTENSION_CONTEXT, MORPHOLOGICALLY_ALTERED, Code("NCIt", "C113842", "Enhancing Lesion")),
    "resection_cavity": Term(EXTENSION_CONTEXT, MORPHOLOGICALLY_ALTERED,
                             Code(PRIVATE_SCHEME, "RESECT_CAVITY", "Resection cavity")),
    # Tumour where it grows or will grow: predicted progression, progression truth, recurrence.
    "neoplasm": Term(SLICER_DICOM_MASTER, MORPHOLOGICALLY_ALTERED, Code("SCT", "108369006", "Neoplasm")),
    "brain": Term(SLICER_DICOM_MASTER, ANATOMICAL_STRUCTURE, Code("SCT", "12738006", "Brain")),
    # The normal-appearing white matter nCBV is normalised to.
    "reference_region": Term(SLICER_DICOM_MASTER, SPATIAL_AND_RELATIONAL, Code("NCIt", "C94970", "Reference Region")),
    # Radiotherapy targets (DICOM CID 9534), under the category the CTV Planner's DICOM SEG export uses.
    "ctv": Term(EXTENSION_CONTEXT, SPATIAL_AND_RELATIONAL, Code("SCT", "228792002", "Clinical target volume")),
    "ptv": Term(EXTENSION_CONTEXT, SPATIAL_AND_RELATIONAL, Code("SCT", "228793007", "Planning target volume")),
    "gtv": Term(EXTENSION_CONTEXT, SPATIAL_AND_RELATIONAL, Code("SCT", "228791009", "Gross tumor volume")),
}

# BraTS 2024 lesion label -> role.
LESION_ROLES = {1: "necrosis", 2: "non_enhancing_lesion", 3: "enhancing_lesion", 4: "resection_cavity"}
# Target kind (``schemes.Target.kind``, RT ROI types) -> role. A boost is a CTV sub-volume for dose escalation.
TARGET_ROLES = {"CTV": "ctv", "BOOST": "ctv", "PTV": "ptv", "GTV": "gtv"}


def entry(role: str) -> str:
    """The serialised terminology entry of a role in ``TERMS``."""
    if role not in TERMS:
        raise ValueError(f"No terminology is declared for segments of the role '{role}'.")
    return TERMS[role].entry()


def lesion_entry(label: int) -> str:
    """The terminology entry of a BraTS 2024 lesion label (1-4)."""
    if int(label) not in LESION_ROLES:
        raise ValueError(f"No terminology is declared for the lesion label {label}.")
    return entry(LESION_ROLES[int(label)])


def target_entry(kind: str) -> str:
    """The terminology entry of a target of kind CTV, BOOST, PTV or GTV."""
    if kind not in TARGET_ROLES:
        raise ValueError(f"No terminology is declared for targets of the kind '{kind}'.")
    return entry(TARGET_ROLES[kind])
