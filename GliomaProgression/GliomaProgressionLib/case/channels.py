"""The named input channels of the progression models, and the diffusion maps a case may bring.

A model lists its input channels by name (``Models.json``, ``gliomaprog.json``); a case provides them under the
same names, each on the 1 mm CE-T1 reference grid after ``preprocess.prepare_case``:

- ``t1c``, ``flair`` (always), ``ncbv`` (from the DSC series);
- diffusion (Yan et al. 2020, Tran et al. 2025): ``adc``, ``fa`` and ``md`` from ``adc.*``, ``fa.*`` and ``md.*``
  files, or ``fa`` and ``md`` fitted from a DTI series (``dwi.*`` with ``dwi.bval`` and ``dwi.bvec``, FSL format)
  by dipy's tensor model; ``p`` and ``q``, the isotropic and anisotropic components of the diffusion tensor
  (Peña et al. 1999, Br J Radiol 72:1041), derived from MD and FA;
- any other registered map, ``map_<name>`` from ``map_<name>.*``.

ADC and MD are kept in 10^-6 mm^2/s (normal white matter about 700-800), the unit most scanners store ADC maps in;
maps written in mm^2/s or 10^-3 mm^2/s are recognised by their range and rescaled, with a note.

p and q: the tensor's eigenvalues l1..l3 with mean MD split as |D|^2 = sum(l^2) = p^2 + q^2 with
p = sqrt(3) MD and q = sqrt(sum((l - MD)^2)); since FA = sqrt(3/2) q / |D|, q = MD FA sqrt(6 / (3 - 2 FA^2)).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# Every channel a model may name, with the modality written into an nnU-Net dataset.json and shown to users.
CHANNELS = {
    "t1c": "CE-T1",
    "flair": "FLAIR",
    "ncbv": "nCBV",
    "adc": "ADC",
    "fa": "FA",
    "md": "MD",
    "p": "p (isotropic diffusion)",
    "q": "q (anisotropic diffusion)",
}
MAP_PREFIX = "map_"
MAP_NAME = re.compile(r"map_[a-z0-9][a-z0-9_]{0,30}")
# The diffusion maps a case folder may hold as files; derived channels and what they are computed from.
DIFFUSION_FILES = ("adc", "fa", "md")
DERIVED = {"p": ("md",), "q": ("md", "fa")}
DIFFUSIVITIES = ("adc", "md")  # in 10^-6 mm^2/s
DTI_SERIES = "dwi"
# Upper bounds of a diffusivity map's high values (brain and CSF: 0.7e-3 to 3e-3 mm^2/s) in each unit it may be
# stored in, and the factor that brings it to 10^-6 mm^2/s.
DIFFUSIVITY_UNITS = ((0.1, 1e6, "mm^2/s"), (100.0, 1e3, "10^-3 mm^2/s"), (np.inf, 1.0, "10^-6 mm^2/s"))
FA_RANGE = (0.0, 1.0)


def is_channel_name(name: str) -> bool:
    return name in CHANNELS or bool(MAP_NAME.fullmatch(name))


def check_channel_name(name: str, what: str = "A channel") -> str:
    if not is_channel_name(name):
        raise ValueError(f"{what} is named {name!r}, which is not a known channel ({', '.join(CHANNELS)}, or "
                         "map_<name> in lower case).")
    return name


def channel_modality(name: str) -> str:
    """What the channel shows, for dataset.json and messages ("ADC", "map cbf")."""
    return CHANNELS.get(name) or f"map {name[len(MAP_PREFIX):]}"


def channel_files(name: str) -> str:
    """Where a case folder keeps the channel, in words for a message."""
    if name == "ncbv":
        return "a DSC series (dsc.nii.gz with dsc.json, or a dsc/ DICOM folder)"
    if name in DERIVED:
        sources = " and ".join(f"{source}.nii.gz" for source in DERIVED[name])
        return f"{sources} (or a DTI series dwi.nii.gz with dwi.bval and dwi.bvec), from which {name} is derived"
    if name in ("fa", "md"):
        return f"{name}.nii.gz (or a DTI series dwi.nii.gz with dwi.bval and dwi.bvec)"
    return f"{name}.nii.gz"


def missing_channel_message(case: str, name: str, model: str | None) -> str:
    """``model`` None: the channel set being exported needs it."""
    user = f"the model '{model}'" if model else "the channel set"
    return (f"The case {case} has no {channel_modality(name)} channel ({name}), which {user} needs: add "
            f"{channel_files(name)} to the case folder.")


def check_channels_present(case: str, needed, present, model: str | None) -> None:
    """One sentence for the first channel in ``needed`` that ``present`` (channel names, maps included) neither
    holds nor can derive."""
    available = set(present) | {name for name, sources in DERIVED.items() if set(sources) <= set(present)}
    for name in needed:
        if name not in available:
            raise ValueError(missing_channel_message(case, name, model))


def parse_map_argument(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` (``adc=adc.nii.gz``, ``map_cbf=cbf.nrrd``): a channel map given on its own."""
    name, separator, path = str(text).partition("=")
    if not separator or not path:
        raise ValueError(f"The map {text!r} is not given as NAME=PATH (e.g. adc=adc.nii.gz).")
    if name in DERIVED or name in ("t1c", "flair", "ncbv"):
        raise ValueError(f"The map {text!r} names {name}, which is not a map ({name} comes from "
                         f"{channel_files(name)}); give adc, fa, md or map_<name>.")
    return check_channel_name(name, f"The map {text!r}"), Path(path)


def map_sources(channels) -> list[str]:
    """The maps (adc, fa, md, map_<name>) that ``channels`` take from the case, in model order: p and q from MD and
    FA; CE-T1, FLAIR and nCBV have series of their own."""
    needed = []
    for name in channels:
        for source in DERIVED.get(name, (name,)):
            if (source in DIFFUSION_FILES or source.startswith(MAP_PREFIX)) and source not in needed:
                needed.append(source)
    return needed


def maps_needed(channels: list[str] | tuple[str, ...], maps: dict) -> dict:
    """The case's maps that ``channels`` use, directly or to derive p and q from: only they are registered."""
    wanted = set(map_sources(channels))
    return {name: image for name, image in maps.items() if name in wanted}


def isotropic_component(md: np.ndarray) -> np.ndarray:
    """Peña's p = sqrt(3) MD."""
    return (np.sqrt(3.0) * np.asarray(md, dtype=np.float32)).astype(np.float32)


def anisotropic_component(md: np.ndarray, fa: np.ndarray) -> np.ndarray:
    """Peña's q = MD FA sqrt(6 / (3 - 2 FA^2)); FA clipped to [0, 1] (noise can push it just outside)."""
    fa = np.clip(np.asarray(fa, dtype=np.float64), *FA_RANGE)
    return (np.asarray(md, dtype=np.float64) * fa * np.sqrt(6.0 / (3.0 - 2.0 * fa ** 2))).astype(np.float32)


def diffusivity_scale(array: np.ndarray, brain: np.ndarray | None, what: str) -> tuple[float, str | None]:
    """The factor that brings a diffusivity map to 10^-6 mm^2/s, and a note when it is not 1; recognised by the
    98th percentile of the positive voxels (of the brain when known; background noise, often most of the volume,
    does not reach it): brain and CSF are about 700-3000 in 10^-6 mm^2/s."""
    values = np.asarray(array)[brain] if brain is not None and np.any(brain) else np.asarray(array)
    values = values[values > 0]
    if values.size == 0:
        raise ValueError(f"{what} has no positive voxel; a diffusivity map holds positive values in the brain.")
    high = float(np.percentile(values, 98))
    for upper, factor, unit in DIFFUSIVITY_UNITS:
        if high < upper:
            note = None if factor == 1.0 else (f"{what} was read as {unit} (98th percentile {high:.3g}) and "
                                               "rescaled to 10^-6 mm^2/s.")
            return factor, note
    raise AssertionError("DIFFUSIVITY_UNITS ends with an unbounded unit")


def check_fa(array: np.ndarray, what: str) -> None:
    """FA is a fraction: a map far outside [0, 1] is something else (an ADC or a colour-FA map)."""
    high = float(np.percentile(np.asarray(array), 99.5))
    if high > 1.5 or float(np.min(array)) < -0.5:
        raise ValueError(f"{what} holds values up to {high:.3g}, which is not a fractional anisotropy (0 to 1); "
                         "give a scalar FA map.")


def read_gradients(bval: Path, bvec: Path, volumes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """b-values and unit b-vectors (FSL text files) checked against the DTI series' number of volumes."""
    from dipy.io.gradients import read_bvals_bvecs

    try:  # one file at a time: read together, dipy refuses a count mismatch without saying which is wrong
        bvals = read_bvals_bvecs(str(bval), None)[0]
        bvecs = read_bvals_bvecs(None, str(bvec))[1]
    except (OSError, ValueError) as error:
        raise ValueError(f"The gradient files {bval.name} and {bvec.name} of {what} could not be read "
                         f"({' '.join(str(error).split())[:160]}).") from None
    if bvals.ndim != 1 or len(bvals) != volumes:
        raise ValueError(f"{bval.name} lists {bvals.size} b-values but {what} has {volumes} volumes; each volume needs "
                         "one.")
    if bvecs.shape != (volumes, 3):
        raise ValueError(f"{bvec.name} holds {bvecs.size} numbers ({len(bvecs)} vectors) but {what} has {volumes} "
                         "volumes; it needs three rows (x, y, z) of one b-vector per volume.")
    return bvals.astype(np.float64), bvecs.astype(np.float64)


def tensor_maps(dwi: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray | None,
                what: str) -> dict[str, np.ndarray]:
    """FA and MD (10^-6 mm^2/s) of a DTI series ``[t, k, j, i]`` by dipy's log-linear least-squares tensor fit
    (b-values in s/mm^2); outside ``mask`` both are 0. Ordinary rather than weighted least squares: dipy's WLS
    inverts one matrix per voxel (12 s for 60 000 voxels here, minutes for a whole brain) and changes FA and MD
    little at clinical SNR (Chang et al. 2005, MRM 53:1088). FA and MD do not depend on the b-vectors' frame."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    try:
        gradients = gradient_table(bvals, bvecs=bvecs)
    except ValueError as error:
        raise ValueError(f"The gradients of {what} are not a usable DTI scheme ({' '.join(str(error).split())[:160]})."
                         ) from None
    directions = int(np.sum(~gradients.b0s_mask))
    if directions < 6 or not gradients.b0s_mask.any():
        raise ValueError(f"{what} has {directions} diffusion-weighted volumes and {int(gradients.b0s_mask.sum())} b=0 "
                         "volumes; a tensor needs at least 6 directions and one b=0 volume.")
    data = np.moveaxis(np.asarray(dwi, dtype=np.float32), 0, -1)  # dipy wants the gradients last
    fit = TensorModel(gradients, fit_method="OLS").fit(data, mask=None if mask is None else np.asarray(mask, bool))
    fa = np.nan_to_num(fit.fa, nan=0.0).astype(np.float32)
    md = (np.nan_to_num(fit.md, nan=0.0) * 1e6).astype(np.float32)  # mm^2/s -> 10^-6 mm^2/s
    return {"fa": np.clip(fa, *FA_RANGE), "md": np.maximum(md, 0.0)}
