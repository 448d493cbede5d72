"""Synthetic glioblastoma cases with known truth: anatomy, tumour, future progression, perfusion.

A case is built in three steps:

1. Anatomy on the template grid: the MNI ICBM152 2009 template shipped inside nilearn (T1, grey and white
   matter probabilities) gives the brain; a tumour is grown in deep white matter: a necrotic core, a 3-5 mm
   enhancing rim, and FLAIR oedema that spreads preferentially along white matter. A wedge of the oedema
   next to the tumour is "infiltrated": it has mildly raised CBV (and, if asked, subtly raised FLAIR) and is
   where the tumour will come back (the progression truth).
2. Tissue properties on that grid: CE-T1 and FLAIR intensities, CBV, CBF, leakage K2, DSC baseline signal.
3. Acquisitions: each series has its own grid and head pose (see ``acquisition``); DSC is simulated from the
   CBV/CBF/K2 maps on its own grid through a gamma-variate AIF and an exponential residue function, with
   Boxerman-Schmainda-Weisskoff leakage in the enhancing tumour; Rician noise is added to every image.

How visible the future progression is in FLAIR and in CBV is set by ``PhantomConfig``, so that a cohort can be
made in which nCBV carries information that FLAIR lacks (seed 000's finding).

Variants look like the data users really have: ``preprocessed`` (BraTS style: CE-T1 and FLAIR already on one
isotropic grid, every series in one head pose), ``head`` (scalp and skull kept, as acquired, instead of a
skull-stripped brain), ``dsc=False`` (no perfusion series) and ``dsc_slices`` (a thin DSC slab through the
tumour). ``arrival_delay_s`` and ``mtt_spread`` (a late hemisphere, uneven transit times) test leakage
correction; with them the truth nCBV is the integral of each voxel's own curve. With every variant off, a seed
gives the case it always gave, bit for bit (diffusion, below, only adds its maps).

Diffusion (``diffusion=True``; off by default in the library, which most tests and the progression cohorts
use without it, on by default in ``gliomaprog phantom``; issue 15; seed 004, Yan et al. 2020, Sci Rep; and seed 003):
an ADC map and the DTI maps MD and FA, on a diffusion grid of their own (an EPI series: 2 x 2 x 4 mm at full size,
2.5 x 2.5 x 4 mm small, its own slice tilt and head pose, the others' still pose when ``preprocessed``; partial
volume through the same sub-voxel averaging as FLAIR and DSC), with Gaussian noise on each map
(``diffusion_noise``, SD in map units). ADC and MD are the same quantity (a third of the tensor's trace: a
trace-weighted ADC equals the tensor's MD), in 10^-6 mm^2/s; two maps because scanners give a DWI trace ADC and a
DTI series separately, with their own noise. Tissue values (``PhantomConfig.adc`` and ``.fa``), rounded from the
literature:

============ ======= ===== ===========================================================================
tissue        ADC     FA    source
============ ======= ===== ===========================================================================
white matter  750    0.45  Helenius et al. 2002 (AJNR 23:194, ADC 0.7-0.8e-3 mm^2/s); Pierpaoli et al.
                           1996 (Radiology 201:637, MD ~0.7e-3 in white and grey matter, FA of white matter)
grey matter   850    0.15  Helenius et al. 2002 (cortex 0.8-0.9e-3 mm^2/s); low FA in cortex
CSF           3000   0.05  free water at 37 degrees C (~3.0e-3 mm^2/s); FA only the noise floor
oedema        1400   0.20  Lu et al. 2003 (AJNR 24:937): peritumoral MD of gliomas ~1.3-1.5e-3, FA ~0.2
enhancing     1000   0.15  Sinha et al. 2002 (AJNR 23:520): enhancing high-grade glioma ~1.0-1.1e-3, low FA
necrosis      2000   0.08  necrotic cores of glioblastoma ~1.8-2.5e-3 mm^2/s, near-isotropic
cavity        3000   0.05  fluid, as CSF
============ ======= ===== ===========================================================================

The future-progression wedge differs from the rest of the oedema as Yan et al. found (lower ADC and p, i.e. MD;
Price et al. 2007, Eur Radiol 17:1675, found the same for p in the regions that recurred): its ADC and MD are
``progression_adc_ratio`` (0.80) and its FA ``progression_fa_ratio`` (0.93) times the oedema's, set like the
FLAIR ratio. ``adc_replication_config`` builds a cohort in which ADC carries what FLAIR and nCBV lack. The noise
and the diffusion grid's pose come from the case's own diffusion stream, so every other series and truth of a
seed is the same with diffusion on or off. A raw DTI series (b = 0 and 12 directions at b = 1000 s/mm^2) can be
made from the noise-free maps (``diffusion_weighted_series``; ``folder.write_case(..., dwi=True)``).

Perfusion habitats (``habitats=True``, issue 14; seed 002, Yun et al. 2023, AJNR): the enhancing lesion (CEL) and
the NEL are divided into the tissue patterns of ``DSCPerfusionLib.habitats.labels.HABITATS``, each a compact patch
(the voxels of its region nearest a point on the tumour's edge, directions drawn from the case's own habitat
stream), with DSC parameters of its own (``HABITAT_FAMILIES``). Only CBV, CBF, K2 and the DSC baseline change: the
CE-T1, FLAIR, lesion and progression truth stay those of the case without habitats.

* CEL: perinecrotic tissue at one pole of the rim, low-angiogenic (cellular) tumour at the opposite pole,
  high-angiogenic tumour between them. The whole 3-5 mm rim borders the necrosis, and a thinner inner shell would
  be below the DSC voxel (1.8 x 1.8 x 5 mm), so the perinecrotic patch spans the rim's thickness.
* NEL: infiltrated oedema is the future-progression region (grown through the NEL to ``infiltrated_share`` if
  given), a patch of non-enhancing cellular tumour (low-angiogenic) lies on the side away from it, and the rest
  is vasogenic oedema. The resection-cavity case has no necrosis and is refused.

The family values (CBV ml/100 g, CBF ml/100 g/min, K2 1/s, baseline S0; normal white matter 2, 22, 0, 900; grey
matter 4, 60, 0, 1050; CSF 0, 0, 0, 1500) and what they give Yun's curve parameters (baseline, drop, drop speed,
percentage recovery; ``DSCPerfusionLib.features``), so that the rules naming a pattern against grey matter,
white matter and CSF (``habitats.labels``) find each family:

=================== ===== ===== ====== ==== ==========================================================
family               CBV   CBF   K2     S0   why
=================== ===== ===== ====== ==== ==========================================================
high_angiogenic      9.0   130   +0.015 1000 angiogenesis and a leaky barrier: a drop deeper and faster than
                                             grey matter's; T1 leakage lifts the recovery above 100 %
low_angiogenic       1.4    16    0      650 dense cells, few vessels: the lowest baseline (short T2) and a drop
                                             below white matter's
perinecrotic         3.0    32   -0.012 1250 T2-bright tissue next to necrosis: a baseline above grey matter's
                                             and, from T2* leakage (K2 < 0), a recovery well below white matter's
infiltrated_oedema   3.2   35.2   0     1150 tumour cells in oedema: the progression region's CBV (1.6 x white
                                             matter, its transit time), a baseline between grey matter's and the
                                             grey-CSF midpoint, a drop between white and grey matter's
vasogenic_oedema     0.8     9    0     1400 water, compressed vessels: the highest baseline of the lesion and a
                                             drop below white matter's even at that baseline
=================== ===== ===== ====== ==== ==========================================================

Every family's parameters are uniform inside it; the DSC voxels see them through partial volume with the
neighbours (necrosis, other families, normal tissue), which the habitat method has to live with as in patients.
Truth: ``habitats`` (CE-T1 grid) holds the habitat value at each voxel's centre; on the DSC grid ``lesion_dsc`` the
lesion label filling most of each voxel (background included: partial volume as the signal is made) and
``habitats_dsc`` the habitat of that region filling most of it; ``SyntheticCase.habitats``
(``truth/habitats.json``) the fraction of each region in each habitat, voxel counts and the family parameters.
The burden varies per case: the shares of the high-angiogenic and perinecrotic CEL and of the low-angiogenic
NEL are drawn within ``HABITAT_SHARE_BOUNDS`` unless given; the infiltrated share is the progression region's
(about 0.07-0.17 of the NEL) unless ``infiltrated_share`` grows it.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DSCPerfusionLib.habitats.labels import HABITAT_BY_KEY, HABITATS, REGIONS
from DSCPerfusionLib.simulation import add_rician_noise, simulate_dsc

from GliomaProgressionLib.case.channels import DIFFUSION_FILES, DIFFUSIVITIES
from GliomaProgressionLib.phantom.acquisition import HeadPose, SeriesProtocol, acquire, acquire_labels, random_pose, series_grid
from GliomaProgressionLib.case.geometry import Volume, ijk_to_ras_from_sitk

Progress = Callable[[float, str], None]

LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 3, "cavity": 4}
LABEL_DESCRIPTIONS = {
    1: "necrosis (non-enhancing tumour core)",
    2: "SNFH: surrounding non-enhancing FLAIR hyperintensity (the NEL)",
    3: "enhancing tumour",
    4: "resection cavity",
}
SIZES = ("full", "small")

MNI_NOTICE = (
    "Anatomy: MNI ICBM152 2009 symmetric template (as shipped with nilearn). Copyright (C) 1993-2009 Louis "
    "Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. Permission to "
    "use, copy, modify, and distribute this software and its documentation for any purpose and without fee is "
    "hereby granted, provided that the above copyright notice appear in all copies. The authors and McGill "
    "University make no representations about the suitability of this software for any purpose. It is provided "
    '"as is" without express or implied warranty. The authors are not responsible for any data loss, '
    "equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse of "
    "this software package."
)
SYNTHETIC_NOTICE = "Synthetic case generated by GliomaProgression: simulated images, not patient data."

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class TissueProperties:
    """Per-tissue values of one property (intensity in arbitrary units, CBV in ml/100 g, CBF in ml/100 g/min,
    K2 in 1/s). Normal tissue values are mixed by the template's GM/WM/CSF probabilities."""

    grey: float
    white: float
    csf: float
    oedema: float
    enhancing: float
    necrosis: float
    cavity: float


# Bounds of the transit-time variants: a late territory in moyamoya or carotid stenosis arrives up to ~10 s
# late; an MTT factor of exp(+-0.5) at 1 SD already spans 3-9 s around white matter's 5.5 s.
MAX_ARRIVAL_DELAY_S = 10.0
MAX_MTT_SPREAD = 0.5
MTT_FIELD_SIGMA_MM = 15.0  # smoothness of the MTT field: territories, not voxels
TRANSIT_STREAM = 13  # second seed word of the variants' own random generator
HABITAT_STREAM = 14  # second seed word of the habitat split's own random generator
DIFFUSION_STREAM = 15  # second seed word of the diffusion series' own generator (pose, noise on the maps)
DWI_STREAM = 16  # second seed word of the raw DTI series' own generator (its Rician noise)
REPLICATION_STREAM = 17  # second seed word of ``adc_replication_config``'s draws

# The maps a case folder gets (adc.nii.gz, fa.nii.gz, md.nii.gz: ``case.channels.DIFFUSION_FILES``), in the order
# their noise is drawn from the diffusion stream: fixed here, so that a seed's maps never change with that tuple.
DIFFUSION_MAPS = ("adc", "md", "fa")
DIFFUSION_UNITS = {name: "10^-6 mm^2/s" if name in DIFFUSIVITIES else "fraction (0-1)"
                   for name in DIFFUSION_MAPS}
# The diffusion series: a 2 x 2 x 4 mm EPI at full size (a common clinical DTI protocol), coarser when small.
DIFFUSION_PROTOCOLS = {
    "full": SeriesProtocol("diffusion", (2.0, 2.0, 4.0), (2, 2, 4), tilt_deg=8.0),
    "small": SeriesProtocol("diffusion", (2.5, 2.5, 4.0), (2, 2, 2), tilt_deg=8.0),
}
# The raw DTI series (``diffusion_weighted_series``): one b = 0 volume and 12 directions at b = 1000 s/mm^2, SNR of
# normal white matter at b = 0.
DWI_B_VALUE = 1000.0
DWI_DIRECTIONS = 12
DWI_SNR = 25.0


@dataclass(frozen=True)
class HabitatFamily:
    """DSC parameters of one perfusion habitat: CBV (ml/100 g), CBF (ml/100 g/min), leakage K2 (1/s, BSW
    convention of ``simulate_dsc``: positive = T1 effect, negative = T2* effect) and baseline DSC signal S0."""

    cbv: float
    cbf: float
    k2: float
    dsc_s0: float


# See "Perfusion habitats" in the module docstring for why each value.
HABITAT_FAMILIES = {
    "high_angiogenic": HabitatFamily(cbv=9.0, cbf=130.0, k2=0.015, dsc_s0=1000.0),
    "low_angiogenic": HabitatFamily(cbv=1.4, cbf=16.0, k2=0.0, dsc_s0=650.0),
    "perinecrotic": HabitatFamily(cbv=3.0, cbf=32.0, k2=-0.012, dsc_s0=1250.0),
    "infiltrated_oedema": HabitatFamily(cbv=3.2, cbf=35.2, k2=0.0, dsc_s0=1150.0),
    "vasogenic_oedema": HabitatFamily(cbv=0.8, cbf=9.0, k2=0.0, dsc_s0=1400.0),
}
HABITAT_FAMILY_UNITS = {"cbv": "ml/100 g", "cbf": "ml/100 g/min", "k2": "1/s (BSW; negative: T2* leakage)",
                        "dsc_s0": "baseline DSC signal (normal white matter 900)"}
# Bounds of the habitat shares drawn per case when the config leaves them open (fractions of the region): wide
# enough for a cohort whose survival depends on habitat burden, narrow enough that every family keeps a few
# hundred DSC voxels at full size (and some twenty at the small size).
HABITAT_SHARE_BOUNDS = {
    "high_angiogenic_share": (0.30, 0.50),  # of the CEL
    "perinecrotic_share": (0.20, 0.30),  # of the CEL; low-angiogenic tumour is the rest of it (0.20-0.50)
    "nel_low_angiogenic_share": (0.05, 0.12),  # of the NEL: non-enhancing cellular tumour next to the CEL
}


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that decides a synthetic case. The same config gives the same case, bit for bit."""

    seed: int = 0
    size: str = "full"
    cavity: bool = False
    noise: bool = True
    # How the infiltrated (future-progression) part of the NEL differs from the rest of the oedema.
    progression_cbv_ratio: float = 1.6  # its CBV relative to normal white matter
    progression_flair_ratio: float = 1.04  # its FLAIR signal relative to the rest of the oedema
    progression_adc_ratio: float = 0.80  # its ADC and MD relative to the rest of the oedema (seed 004: lower)
    progression_fa_ratio: float = 0.93  # its FA relative to the rest of the oedema (seed 004: slightly lower)
    k2_enhancing: float = 0.015  # leakage of the enhancing tumour (1/s), BSW convention (positive = T1 effect)
    # DSC protocol
    frames: int = 60
    tr_s: float = 1.5
    te_s: float = 0.030
    # Signal-to-noise ratio of normal white matter in each series (Rician noise sigma = WM signal / SNR).
    snr: dict = field(default_factory=lambda: {"t1c": 30.0, "flair": 25.0, "dsc": 40.0})
    t1c: TissueProperties = TissueProperties(0.80, 1.00, 0.30, 0.85, 1.45, 0.45, 0.20)  # times T1 template
    flair: TissueProperties = TissueProperties(800, 620, 80, 1350, 1100, 900, 100)
    cbv: TissueProperties = TissueProperties(4.0, 2.0, 0.0, 1.7, 7.0, 0.4, 0.0)
    cbf: TissueProperties = TissueProperties(60.0, 22.0, 0.0, 18.0, 85.0, 6.0, 0.0)
    dsc_s0: TissueProperties = TissueProperties(1050, 900, 1500, 1150, 1000, 1300, 1500)
    # Diffusion (see "Diffusion" in the module docstring): ADC = MD in 10^-6 mm^2/s, FA 0-1, the b = 0 signal of a
    # raw DTI series (T2-weighted spin-echo EPI), and the SD of the Gaussian noise on each map.
    adc: TissueProperties = TissueProperties(850, 750, 3000, 1400, 1000, 2000, 3000)
    fa: TissueProperties = TissueProperties(0.15, 0.45, 0.05, 0.20, 0.15, 0.08, 0.05)
    dwi_b0: TissueProperties = TissueProperties(1050, 900, 2200, 1500, 1150, 1700, 2200)
    diffusion_noise: dict = field(default_factory=lambda: {"adc": 40.0, "md": 30.0, "fa": 0.03})
    # Variants (see the module's docstring).
    preprocessed: bool = False
    head: bool = False
    dsc: bool = True
    dsc_slices: int | None = None
    diffusion: bool = False  # ADC, MD and FA maps (issue 15); `gliomaprog phantom` turns them on
    # Transit-time variants, off by default (issue 13): the bolus reaches the tumour's hemisphere this much
    # later (s), and each voxel's MTT is scaled by exp(mtt_spread * z), z a smooth unit-SD field (CBF scaled
    # inversely, CBV kept). With either on, the nCBV truth is the integral of each voxel's own curve.
    arrival_delay_s: float = 0.0
    mtt_spread: float = 0.0
    # Perfusion-habitat truth, off by default (issue 14; see "Perfusion habitats" in the module docstring). The
    # shares are fractions of their region; None draws them from the seed within HABITAT_SHARE_BOUNDS. The
    # infiltrated oedema is the future-progression region, grown through the NEL to ``infiltrated_share`` if given.
    habitats: bool = False
    high_angiogenic_share: float | None = None
    perinecrotic_share: float | None = None
    nel_low_angiogenic_share: float | None = None
    infiltrated_share: float | None = None

    def validated(self) -> "PhantomConfig":
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}.")
        if self.progression_cbv_ratio <= 0 or self.progression_flair_ratio <= 0:
            raise ValueError("progression_cbv_ratio and progression_flair_ratio must be positive.")
        if self.progression_adc_ratio <= 0 or self.progression_fa_ratio <= 0:
            raise ValueError("progression_adc_ratio and progression_fa_ratio must be positive.")
        if self.diffusion and self.fa.oedema * self.progression_fa_ratio > 1:
            raise ValueError(f"progression_fa_ratio {self.progression_fa_ratio:g} gives the progression region an FA "
                             f"of {self.fa.oedema * self.progression_fa_ratio:g} (the oedema's {self.fa.oedema:g} "
                             "times the ratio), above 1.")
        if set(self.diffusion_noise) != set(DIFFUSION_FILES) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in self.diffusion_noise.values()):
            raise ValueError("diffusion_noise must give a non-negative noise SD for each of "
                             f"{', '.join(DIFFUSION_FILES)}, got {self.diffusion_noise!r}.")
        if self.k2_enhancing < 0:
            raise ValueError(f"k2_enhancing must be zero or positive, got {self.k2_enhancing}.")
        if self.frames < 20 or self.tr_s <= 0 or self.te_s <= 0:
            raise ValueError("The DSC protocol needs at least 20 frames and positive TR and TE.")
        if not (0 <= self.arrival_delay_s <= MAX_ARRIVAL_DELAY_S) or not (0 <= self.mtt_spread <= MAX_MTT_SPREAD):
            raise ValueError(f"arrival_delay_s must be 0-{MAX_ARRIVAL_DELAY_S:g} s and mtt_spread "
                             f"0-{MAX_MTT_SPREAD:g}, got {self.arrival_delay_s} and {self.mtt_spread}.")
        if self.dsc_slices is not None:
            if not isinstance(self.dsc_slices, (int, np.integer)) or self.dsc_slices < 1:
                raise ValueError(f"dsc_slices must be a whole number of at least 1, got {self.dsc_slices!r}.")
            if not self.dsc:
                raise ValueError("dsc_slices sets the DSC slab, but the case is asked without DSC.")
        self._validate_habitats()
        return self

    def _validate_habitats(self) -> None:
        shares = {name: getattr(self, name) for name in (*HABITAT_SHARE_BOUNDS, "infiltrated_share")}
        given = {name: value for name, value in shares.items() if value is not None}
        if given and not self.habitats:
            raise ValueError(f"{', '.join(given)} set habitat shares, but the case is asked without habitats.")
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction from 0 to 1, got {value!r}.")
        if (self.high_angiogenic_share or 0) + (self.perinecrotic_share or 0) > 1:
            raise ValueError("high_angiogenic_share and perinecrotic_share together exceed the whole CEL.")
        if (self.infiltrated_share or 0) + (self.nel_low_angiogenic_share or 0) > 1:
            raise ValueError("infiltrated_share and nel_low_angiogenic_share together exceed the whole NEL.")
        if self.habitats and self.cavity:
            raise ValueError("Habitat truth needs the pre-operative tumour with its necrosis; the resection-cavity "
                             "case has none.")


@dataclass
class SyntheticCase:
    """The images of one case (each with its own grid) and its truth."""

    config: PhantomConfig
    t1c: Volume
    flair: Volume
    dsc: Volume | None  # [t, k, j, i]; None for a case without DSC
    frame_times_s: np.ndarray | None
    lesion: Volume  # BraTS 2024 labels on the CE-T1 grid
    truth: dict[str, Volume]  # cbv, cbf, ncbv, k2, nawm, brain_dsc (DSC grid, with DSC); brain, progression (CE-T1)
    metadata: dict
    # With habitats: truth also holds "habitats" (CE-T1 grid), "habitats_dsc" and "lesion_dsc" (DSC grid), and
    # this summary (fractions per region, voxel counts, shares, family parameters) is truth/habitats.json.
    habitats: dict | None = None
    # With diffusion: "adc", "md", "fa" as a scanner gives them (noisy, float32, on the diffusion grid; files
    # adc.nii.gz, md.nii.gz, fa.nii.gz); truth also holds the noise-free "md" and "fa" (truth ADC = truth MD), the
    # b = 0 signal "dwi_b0" and the mask "brain_diffusion" on that grid. None for a case made without diffusion.
    diffusion: dict[str, Volume] | None = None


# --- template -------------------------------------------------------------------------------------------


def _template_folder() -> Path:
    # Located without importing nilearn (slow, and only its data files are needed).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("The MNI152 template ships with the Python package nilearn, which is not installed.")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _load_template(size: str) -> dict[str, sitk.Image]:
    """The template images at ``size`` (read and resampled once per process: a case only reads them)."""
    return dict(_template_images(size))


@functools.lru_cache(maxsize=len(SIZES))
def _template_images(size: str) -> dict[str, sitk.Image]:
    images = {}
    for name, filename in _TEMPLATE_FILES.items():
        image = sitk.Cast(sitk.ReadImage(str(_template_folder() / filename)), sitk.sitkFloat32)
        if size == "small":
            image = _resample_isotropic(image, 2.0)
        images[name] = image
    return images


def _resample_isotropic(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    smooth = sitk.SmoothingRecursiveGaussian(image, spacing_mm / 2.355)  # anti-aliasing before decimation
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         (spacing_mm,) * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)


# --- anatomy and tumour on the template grid --------------------------------------------------------------


@dataclass
class _Anatomy:
    grid: sitk.Image
    spacing: np.ndarray  # mm, per array axis (k, j, i)
    ras: tuple[np.ndarray, np.ndarray, np.ndarray]  # broadcastable R, A, S coordinates (mm) per array axis
    t1: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    csf: np.ndarray
    brain: np.ndarray


def _anatomy(template: dict[str, sitk.Image]) -> _Anatomy:
    t1, grey, white = (sitk.GetArrayFromImage(template[name]) for name in ("t1", "gm", "wm"))
    grey, white = np.clip(grey / grey.max(), 0, 1), np.clip(white / white.max(), 0, 1)
    brain = ndimage.binary_fill_holes(t1 > 0.1 * t1.max()) | (grey + white > 0.5)
    t1 = t1 / np.median(t1[white > 0.95])
    csf = np.where(brain, np.clip(1.0 - grey - white, 0, 1), 0).astype(np.float32)
    ijk_to_ras = ijk_to_ras_from_sitk(template["t1"])
    if not np.allclose(ijk_to_ras[:3, :3], np.diag(np.diag(ijk_to_ras[:3, :3]))):
        raise ValueError("The template grid is expected to be axis-aligned.")
    shape = t1.shape
    axes = [np.arange(n, dtype=np.float32) for n in shape[::-1]]  # i, j, k
    r = (ijk_to_ras[0, 0] * axes[0] + ijk_to_ras[0, 3])[None, None, :]
    a = (ijk_to_ras[1, 1] * axes[1] + ijk_to_ras[1, 3])[None, :, None]
    s = (ijk_to_ras[2, 2] * axes[2] + ijk_to_ras[2, 3])[:, None, None]
    spacing = np.array(template["t1"].GetSpacing())[::-1]
    return _Anatomy(template["t1"], spacing, (r, a, s), t1.astype(np.float32), grey.astype(np.float32),
                    white.astype(np.float32), csf, brain)


def _smooth_noise(rng: np.random.Generator, shape, sigma_mm: float, spacing: np.ndarray) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_mm / spacing)
    return field_ / (field_.std() + 1e-12)


@dataclass
class _Tumour:
    labels: np.ndarray  # BraTS labels, uint8
    progression: np.ndarray  # bool, inside label 2
    nawm: np.ndarray  # bool: contralateral normal-appearing white matter
    centre_ras: np.ndarray
    parameters: dict


def _pick_centre(anatomy: _Anatomy, rng: np.random.Generator, side: float) -> np.ndarray:
    depth = ndimage.distance_transform_edt(anatomy.brain, sampling=anatomy.spacing)
    r = anatomy.ras[0]
    candidates = (anatomy.white > 0.9) & (depth > 35) & (r * side > 20) & (r * side < 45)
    index = np.argwhere(candidates)
    if len(index) == 0:
        raise ValueError("No deep white matter found to place the tumour in.")
    return index[rng.integers(len(index))]


def _grow_tumour(anatomy: _Anatomy, rng: np.random.Generator, config: PhantomConfig) -> _Tumour:
    side = rng.choice([-1.0, 1.0])
    centre = _pick_centre(anatomy, rng, side)
    spacing = anatomy.spacing
    # Work in a box around the tumour: every structure below fits within 75 mm of its centre.
    half = np.ceil(75 / spacing).astype(int)
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, anatomy.brain.shape))
    brain, white, csf = anatomy.brain[box], anatomy.white[box], anatomy.csf[box]
    offset = [np.arange(s.start, s.stop) - c for s, c in zip(box, centre)]
    dk, dj, di = (o * sp for o, sp in zip(offset, spacing))
    radius_field = np.sqrt(dk[:, None, None] ** 2 + dj[None, :, None] ** 2 + di[None, None, :] ** 2)

    outer_radius = rng.uniform(12, 19)
    rim = rng.uniform(3.0, 5.0)
    irregular = radius_field + 2.5 * _smooth_noise(rng, radius_field.shape, 7.0, spacing)
    tumour = (irregular < outer_radius) & brain
    necrosis = tumour & (irregular < outer_radius - rim)
    enhancing = tumour & ~necrosis

    # Oedema follows white-matter tracts: it reaches far into white matter and hardly into cortex or CSF.
    distance = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    reach_white, reach_grey = rng.uniform(16, 26), 3.0
    reach = reach_white * white + reach_grey * (1 - white) + 3.0 * _smooth_noise(rng, white.shape, 5.0, spacing)
    oedema = brain & ~tumour & (csf < 0.5) & (distance < reach)
    components, _ = ndimage.label(oedema | tumour)
    oedema &= components == components[tuple(c - s.start for c, s in zip(centre, box))]

    progression, direction, depth_mm = _infiltrated_wedge(rng, oedema, distance, dk, dj, di, radius_field, spacing)
    labels = np.zeros(brain.shape, np.uint8)
    labels[oedema] = LABELS["oedema"]
    if config.cavity:
        # Resection: the tumour is removed but for a residual rim facing the infiltrated wedge.
        toward = _cosine_to(direction, dk, dj, di, radius_field)
        residual = enhancing & (toward > np.cos(np.deg2rad(40)))
        labels[tumour & ~residual] = LABELS["cavity"]
        labels[residual] = LABELS["enhancing"]
    else:
        labels[necrosis] = LABELS["necrosis"]
        labels[enhancing] = LABELS["enhancing"]

    full_labels = np.zeros(anatomy.brain.shape, np.uint8)
    full_labels[box] = labels
    full_progression = np.zeros(anatomy.brain.shape, bool)
    full_progression[box] = progression
    lesion_distance = ndimage.distance_transform_edt(full_labels == 0, sampling=spacing)
    nawm = (anatomy.white > 0.9) & (anatomy.ras[0] * side < -5) & (lesion_distance > 15) & anatomy.brain
    centre_ras = np.array([float(np.squeeze(anatomy.ras[0][..., centre[2]])),
                           float(np.squeeze(anatomy.ras[1][:, centre[1], :])),
                           float(np.squeeze(anatomy.ras[2][centre[0]]))])
    parameters = {
        "hemisphere": "right" if side > 0 else "left",
        "centre_ras_mm": centre_ras.round(2).tolist(),
        "enhancing_outer_radius_mm": round(float(outer_radius), 2),
        "enhancing_rim_thickness_mm": round(float(rim), 2),
        "oedema_reach_in_white_matter_mm": round(float(reach_white), 2),
        # The direction is in array axes (k, j, i); the template grid's i, j, k run along R, A, S.
        "progression_direction_ras": direction[::-1].round(3).tolist(),
        "progression_depth_mm": round(float(depth_mm), 2),
    }
    return _Tumour(full_labels, full_progression, nawm, centre_ras, parameters)


def _cosine_to(direction, dk, dj, di, radius_field) -> np.ndarray:
    dot = direction[0] * dk[:, None, None] + direction[1] * dj[None, :, None] + direction[2] * di[None, None, :]
    return dot / np.maximum(radius_field, 1e-6)


def _infiltrated_wedge(rng, oedema, distance, dk, dj, di, radius_field, spacing):
    """A wedge of oedema next to the tumour (a cone around a random direction, a few mm deep)."""
    minimum_voxels = int(300 / np.prod(spacing))  # at least 0.3 mL
    for _ in range(50):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        depth_mm = rng.uniform(8, 14)
        wedge = oedema & (_cosine_to(direction, dk, dj, di, radius_field) > np.cos(np.deg2rad(55)))
        wedge &= distance < depth_mm
        if wedge.sum() >= minimum_voxels:
            return wedge, direction, depth_mm
    raise ValueError("Could not place an infiltrated region of at least 0.3 mL in the oedema.")


# --- perfusion habitats -------------------------------------------------------------------------------------


def _split_habitats(anatomy: _Anatomy, tumour: _Tumour, config: PhantomConfig) -> tuple[np.ndarray, dict]:
    """Habitat values (``HABITATS``) on the template grid, 0 outside the CEL and NEL, and the shares used.

    Each family is one compact patch: the voxels of its region nearest a point on the tumour's edge. The
    directions and the shares the config leaves open come from the habitat stream, so the rest of the case is
    the same with habitats on or off.
    """
    rng = np.random.default_rng([config.seed, HABITAT_STREAM])
    drawn = {name: float(rng.uniform(*bounds)) for name, bounds in HABITAT_SHARE_BOUNDS.items()}
    shares = {name: drawn[name] if getattr(config, name) is None else float(getattr(config, name)) for name in drawn}
    cel_names = ("high_angiogenic_share", "perinecrotic_share")
    if sum(shares[name] for name in cel_names) > 1:  # one given, the other drawn: the drawn one gives way
        drawn_name, given_name = cel_names if config.high_angiogenic_share is None else cel_names[::-1]
        shares[drawn_name] = 1.0 - shares[given_name]
    pole, nel_side = _unit_vector(rng), _unit_vector(rng)
    labels = tumour.labels
    cel, nel = labels == LABELS["enhancing"], labels == LABELS["oedema"]
    centre_mm = np.argwhere(cel | (labels == LABELS["necrosis"])).mean(axis=0) * anatomy.spacing
    edge_mm = tumour.parameters["enhancing_outer_radius_mm"]
    habitats = np.zeros(labels.shape, np.uint8)

    # CEL: perinecrotic tissue at one pole of the rim, low-angiogenic tumour at the other, high-angiogenic between.
    low_share = 1.0 - shares["high_angiogenic_share"] - shares["perinecrotic_share"]
    perinecrotic = _nearest_voxels(cel, centre_mm + edge_mm * pole, shares["perinecrotic_share"] * cel.sum(),
                                   anatomy.spacing)
    low = _nearest_voxels(cel & ~perinecrotic, centre_mm - edge_mm * pole, low_share * cel.sum(), anatomy.spacing)
    habitats[cel] = HABITAT_BY_KEY["high_angiogenic"].value
    habitats[perinecrotic] = HABITAT_BY_KEY["perinecrotic"].value
    habitats[low] = HABITAT_BY_KEY["low_angiogenic"].value

    # NEL: infiltrated oedema where the tumour will come back, a patch of non-enhancing cellular tumour on the
    # side away from it, vasogenic oedema elsewhere.
    infiltrated = _infiltrated_oedema(nel, tumour.progression & nel, config.infiltrated_share, anatomy.spacing)
    wedge = np.array(tumour.parameters["progression_direction_ras"][::-1])
    away = -wedge + 0.5 * nel_side
    away /= np.linalg.norm(away)
    nel_low = _nearest_voxels(nel & ~infiltrated, centre_mm + (edge_mm + 3.0) * away,
                              shares["nel_low_angiogenic_share"] * nel.sum(), anatomy.spacing)
    habitats[nel] = HABITAT_BY_KEY["vasogenic_oedema"].value
    habitats[infiltrated] = HABITAT_BY_KEY["infiltrated_oedema"].value
    habitats[nel_low] = HABITAT_BY_KEY["low_angiogenic"].value
    return habitats, {**shares, "infiltrated_share": config.infiltrated_share}


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def _nearest_voxels(mask: np.ndarray, point_mm: np.ndarray, count: float, spacing: np.ndarray) -> np.ndarray:
    """The ``count`` voxels of ``mask`` nearest ``point_mm`` (array axes, mm): a compact patch."""
    index = np.argwhere(mask)
    wanted = int(round(count))
    chosen = np.zeros(mask.shape, bool)
    if wanted <= 0:
        return chosen
    distance = np.linalg.norm(index * spacing - point_mm, axis=1)
    nearest = index[np.argsort(distance, kind="stable")[:wanted]]
    chosen[tuple(nearest.T)] = True
    return chosen


def _infiltrated_oedema(nel: np.ndarray, wedge: np.ndarray, share: float | None, spacing: np.ndarray) -> np.ndarray:
    """The future-progression wedge, grown through the NEL (nearest voxels first) to ``share`` of it if given."""
    if share is None:
        return wedge
    wanted = int(round(share * nel.sum()))
    if wanted < wedge.sum():
        raise ValueError(f"The infiltrated share {share:g} is below the {wedge.sum() / nel.sum():.3f} of the NEL "
                         "that the future-progression region already takes in this case.")
    distance = ndimage.distance_transform_edt(~wedge, sampling=spacing)
    index = np.argwhere(nel & ~wedge)
    order = np.argsort(distance[tuple(index.T)], kind="stable")[: wanted - int(wedge.sum())]
    grown = wedge.copy()
    grown[tuple(index[order].T)] = True
    return grown


def _habitats_by_volume(habitat_map: np.ndarray, lesion_labels: np.ndarray, anatomy_grid: sitk.Image,
                        grid: sitk.Image, pose: HeadPose, oversample: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """(habitats, lesion labels) on ``grid``: the lesion label filling most of each voxel (background included), then
    in a CEL or NEL voxel the habitat of that region filling most of it, each share of the voxel taken by ``acquire``
    as the signal's partial volume is. A DSC voxel's curve is the mix of its tissues, so its truth is the tissue that
    dominates that mix, not the one at its centre (a 1.8 x 1.8 x 5 mm voxel on the lesion's edge is often mostly
    normal brain)."""
    def share(mask: np.ndarray) -> np.ndarray:
        return acquire(_as_image(mask.astype(np.float32), anatomy_grid), grid, pose, oversample)

    def most(masks: dict) -> np.ndarray:
        values = np.array(list(masks), np.uint8)
        return values[np.argmax(np.stack([share(mask) for mask in masks.values()]), axis=0)]

    lesion = most({value: lesion_labels == value for value in np.unique(lesion_labels)})
    habitats = np.zeros_like(lesion)
    for region, label in {"CEL": LABELS["enhancing"], "NEL": LABELS["oedema"]}.items():
        in_region = lesion_labels == label
        present = [h.value for h in HABITATS if region in h.regions and (habitat_map[in_region] == h.value).any()]
        if present:
            chosen = most({value: in_region & (habitat_map == value) for value in present})
            habitats[lesion == label] = chosen[lesion == label]
    return habitats, lesion


def _apply_habitats(maps: dict[str, np.ndarray], habitats: np.ndarray) -> None:
    """Each habitat's DSC parameters (``HABITAT_FAMILIES``) in place of its region's single values."""
    for key, family in HABITAT_FAMILIES.items():
        inside = habitats == HABITAT_BY_KEY[key].value
        for name in ("cbv", "cbf", "k2", "dsc_s0"):
            maps[name][inside] = getattr(family, name)


def _habitat_summary(shares: dict, habitats: Volume, lesion: Volume,
                     habitats_dsc: np.ndarray | None, lesion_dsc: np.ndarray | None) -> dict:
    """What truth/habitats.json holds: per region, the fraction of its CE-T1 voxels in each habitat that may occur
    there, voxel counts on the CE-T1 and DSC grids, and the simulation parameters of each family."""
    region_labels = {"CEL": LABELS["enhancing"], "NEL": LABELS["oedema"]}
    voxel_ml = float(np.prod(habitats.spacing)) / 1000.0
    fractions, voxels = {}, {}
    for region in REGIONS:
        inside = lesion.array == region_labels[region]
        values = habitats.array[inside]
        allowed = [h for h in HABITATS if region in h.regions]
        fractions[region] = {h.key: round(float(np.mean(values == h.value)) if values.size else 0.0, 6)
                             for h in allowed}
        voxels[region] = {"t1c": {h.key: int(np.sum(values == h.value)) for h in allowed}}
        if habitats_dsc is not None:
            on_dsc = habitats_dsc[lesion_dsc == region_labels[region]]
            voxels[region]["dsc"] = {h.key: int(np.sum(on_dsc == h.value)) for h in allowed}
        voxels[region]["t1c_volume_ml"] = round(float(inside.sum()) * voxel_ml, 3)
    return {
        "notice": SYNTHETIC_NOTICE,
        "labels": {str(h.value): h.key for h in HABITATS},
        "regions": {region: LABEL_DESCRIPTIONS[label] for region, label in region_labels.items()},
        "fractions": fractions,
        "voxels": voxels,
        # Asked of the template grid (drawn or given); infiltrated_share None: the progression region alone.
        "shares": {name: None if value is None else round(value, 6) for name, value in shares.items()},
        "families": {key: asdict(family) for key, family in HABITAT_FAMILIES.items()},
        "family_units": HABITAT_FAMILY_UNITS,
    }


# --- diffusion ------------------------------------------------------------------------------------------------


def _diffusion_series(config: PhantomConfig, anatomy: _Anatomy, tumour: _Tumour, field_of_view: np.ndarray,
                      brain_centre) -> tuple[dict, dict, HeadPose, sitk.Image]:
    """ADC, MD and FA as a scanner gives them, the noise-free truth on the diffusion grid, its pose and grid.

    Pose and noise come from the case's diffusion stream: the other series of a seed do not change with diffusion
    on or off. Outside the brain the maps are 0 (scanners mask the background of diffusion maps).
    """
    rng = np.random.default_rng([config.seed, DIFFUSION_STREAM])
    protocol = DIFFUSION_PROTOCOLS[config.size]
    centre = tuple(float(c) for c in brain_centre)
    pose = HeadPose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), centre) if config.preprocessed else \
        random_pose(rng, centre, 2.0, 3.0)
    grid = series_grid(protocol, pose, anatomy.grid, field_of_view)
    tissue = {
        "md": _property_map(anatomy, tumour, config.adc,
                            progression_value=config.adc.oedema * config.progression_adc_ratio),
        "fa": _property_map(anatomy, tumour, config.fa,
                            progression_value=config.fa.oedema * config.progression_fa_ratio),
        "dwi_b0": _property_map(anatomy, tumour, config.dwi_b0),
        "brain": anatomy.brain.astype(np.float32),
    }
    acquired = {name: acquire(_as_image(array, anatomy.grid), grid, pose, protocol.oversample)
                for name, array in tissue.items()}
    share = acquired.pop("brain")
    brain = share > 0.5
    # A voxel on the brain's edge holds its brain part's values: the background adds no signal to the mix.
    truth = {name: np.where(brain, array / np.maximum(share, 1e-6), 0).astype(np.float32)
             for name, array in acquired.items()}
    truth["brain_diffusion"] = brain.astype(np.uint8)
    maps = {name: _noisy_map(rng, config, truth["fa" if name == "fa" else "md"], brain, name)
            for name in DIFFUSION_MAPS}
    return maps, truth, pose, grid


def _noisy_map(rng: np.random.Generator, config: PhantomConfig, truth: np.ndarray, brain: np.ndarray,
               name: str) -> np.ndarray:
    """A map with the scanner's Gaussian noise (``diffusion_noise``), 0 outside the brain, in its valid range."""
    values = truth
    if config.noise:
        values = truth + np.float32(config.diffusion_noise[name]) * rng.standard_normal(truth.shape, np.float32)
        values = np.clip(values, 0.0, 1.0 if name == "fa" else None)
    return np.where(brain, values, 0).astype(np.float32)


def gradient_scheme(directions: int = DWI_DIRECTIONS, b_value: float = DWI_B_VALUE) -> tuple[np.ndarray, np.ndarray]:
    """b-values (s/mm^2) and unit b-vectors (one row per volume) of a DTI protocol: one b = 0 volume, then
    ``directions`` directions spread evenly over the half-sphere by dipy's electrostatic repulsion (Jones et al.
    1999, MRM 42:515), from a fixed start: the same scheme every time."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    if isinstance(directions, bool) or not isinstance(directions, (int, np.integer)) or directions < 6:
        raise ValueError(f"A diffusion tensor needs at least 6 gradient directions, got {directions!r}.")
    if not b_value > 0:
        raise ValueError(f"The b-value must be positive, got {b_value!r}.")
    start = np.random.default_rng(int(directions)).standard_normal((int(directions), 3))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    spread, _ = disperse_charges(HemiSphere(xyz=start), 1000)
    bvecs = np.vstack([np.zeros((1, 3)), spread.vertices / np.linalg.norm(spread.vertices, axis=1, keepdims=True)])
    return np.r_[0.0, np.full(int(directions), float(b_value))], bvecs


def prolate_tensor_eigenvalues(md: np.ndarray, fa: np.ndarray) -> np.ndarray:
    """Eigenvalues ``[..., 3]`` (units of ``md``) of the cylindrically symmetric tensor with mean ``md`` and
    fractional anisotropy ``fa``: l1 = MD + 2a and l2 = l3 = MD - a, where a = MD FA / sqrt(3 - 2 FA^2) solves
    FA = sqrt(3/2) |l - MD| / |l| for that shape (l2 = l3 = 0 at FA = 1)."""
    md = np.asarray(md, dtype=np.float64)
    fa = np.clip(np.asarray(fa, dtype=np.float64), 0.0, 1.0)
    a = md * fa / np.sqrt(3.0 - 2.0 * fa ** 2)
    return np.stack([md + 2 * a, md - a, md - a], axis=-1)


def diffusion_weighted_signal(md: np.ndarray, fa: np.ndarray, principal: np.ndarray, s0: np.ndarray,
                              bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """The noise-free DWI signal ``[t, ...]`` of one prolate tensor per voxel, by dipy's tensor model
    (S = S0 exp(-b g^T D g)): ``md`` in 10^-6 mm^2/s, ``fa`` 0-1, ``principal`` the tensor's main axis ``[..., 3]``
    in the frame of ``bvecs`` (any length but 0), ``s0`` the b = 0 signal, b-values in s/mm^2."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import tensor_prediction

    first = np.asarray(principal, dtype=np.float64)
    first = first / np.linalg.norm(first, axis=-1, keepdims=True)
    # Any two axes perpendicular to the first complete the frame: the tensor is symmetric about its main axis.
    helper = np.where(np.abs(first[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    second = np.cross(first, helper)
    second /= np.linalg.norm(second, axis=-1, keepdims=True)
    third = np.cross(first, second)
    evecs = np.stack([first, second, third], axis=-1)  # eigenvectors as columns, as dipy stores them
    evals = prolate_tensor_eigenvalues(np.asarray(md) * 1e-6, fa)  # mm^2/s
    params = np.concatenate([evals, evecs.reshape(evecs.shape[:-2] + (9,))], axis=-1)
    signal = tensor_prediction(params, gradient_table(np.asarray(bvals, float), bvecs=np.asarray(bvecs, float)),
                               np.asarray(s0, dtype=np.float64))
    return np.moveaxis(signal, -1, 0).astype(np.float32)


def diffusion_weighted_series(case: SyntheticCase) -> tuple[Volume, np.ndarray, np.ndarray]:
    """A raw DTI series of the case ``[t, k, j, i]`` on its diffusion grid (int16, as scanners store it), with
    its b-values (s/mm^2) and b-vectors (rows; FSL convention: in the image's voxel axes i, j, k, x negated when
    the image's voxel-to-world matrix has a positive determinant, as FSL and dcm2niix write them).

    The signal is made from the noise-free MD, FA and b = 0 maps of ``case.truth`` with ``gradient_scheme()``;
    each voxel's tensor points away from the tumour's centre (a radial field: the tracts oedema and infiltration
    follow leave the tumour), and Rician noise from the case's own DWI stream gives white matter an SNR of
    ``DWI_SNR`` at b = 0. A tensor fit recovers the MD and FA truth within the noise.
    """
    if case.diffusion is None:
        raise ValueError("The synthetic case was made without diffusion; a DTI series is made from its MD and FA.")
    md, fa, b0, brain = (case.truth[name] for name in ("md", "fa", "dwi_b0", "brain_diffusion"))
    inside = np.asarray(brain.array, bool)
    bvals, gradients = gradient_scheme()
    ijk_to_ras = md.ijk_to_ras
    axes = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)  # unit i, j, k axes in RAS (columns)
    template_from_series = np.array(case.metadata["diffusion"]["series"]["ras_template_from_ras_series"])
    centre = np.linalg.inv(template_from_series) @ np.r_[case.metadata["tumour"]["centre_ras_mm"], 1.0]
    ijk = np.argwhere(inside)[:, ::-1].astype(np.float64)
    outward = (ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3] - centre[:3]) @ axes  # along i, j, k
    outward[np.linalg.norm(outward, axis=1) < 1e-6] = (1.0, 0.0, 0.0)
    signal = np.zeros((len(bvals),) + inside.shape, np.float32)
    signal[:, inside] = diffusion_weighted_signal(md.array[inside], fa.array[inside], outward, b0.array[inside],
                                                  bvals, gradients)
    if case.config.noise:
        rng = np.random.default_rng([case.config.seed, DWI_STREAM])
        signal = add_rician_noise(signal, case.config.dwi_b0.white / DWI_SNR, rng)
    bvecs = gradients.copy()
    if np.linalg.det(ijk_to_ras[:3, :3]) > 0:
        bvecs[:, 0] *= -1
    return Volume(_to_int16(signal), ijk_to_ras.copy()), bvals, bvecs


# --- a cohort in which ADC carries what FLAIR and nCBV lack ---------------------------------------------------

ADC_VISIBLE_ADC_RATIO = (0.72, 0.85)  # ADC and MD of the wedge / the oedema's where the progression shows on ADC
ADC_VISIBLE_FA_RATIO = (0.90, 0.96)  # its FA / the oedema's there (seed 004: slightly lower)
NCBV_VISIBLE_CBV_RATIO = (1.6, 1.8)  # its CBV / white matter's where the progression shows on nCBV (seed 000's)
NOT_PROGRESSING_EVERY = 4  # seed % 4 == 3: nothing progresses (the demo recipe's negatives, models.training)


def adc_replication_visibility(seed: int) -> str:
    """Where ``adc_replication_config(seed)`` lets the future progression show: "adc", "ncbv" or "none"."""
    if seed % NOT_PROGRESSING_EVERY == NOT_PROGRESSING_EVERY - 1:
        return "none"
    return "adc" if np.random.default_rng([seed, REPLICATION_STREAM]).uniform() < 0.5 else "ncbv"


def adc_replication_config(seed: int, size: str = "small") -> PhantomConfig:
    """One case of a simulated cohort in which ADC carries information that FLAIR and nCBV lack (issue 15).

    The future-progression wedge of the NEL is, by ``adc_replication_visibility(seed)``:

    * "adc" (about half of the progressing cases): lower ADC and MD, ``ADC_VISIBLE_ADC_RATIO`` x the oedema's,
      and slightly lower FA, ``ADC_VISIBLE_FA_RATIO`` x (seed 004's contrasts), while its CBV and FLAIR are the
      oedema's own (CBV ratio cbv.oedema / cbv.white, FLAIR ratio 1): invisible on nCBV and FLAIR;
    * "ncbv" (the other half): raised CBV, ``NCBV_VISIBLE_CBV_RATIO`` x white matter's (as in seed 000's demo
      recipe), FLAIR, ADC and FA those of the oedema: visible on nCBV only;
    * "none" (seed % 4 == 3, the seeds the demo recipe's ``models.training.is_positive`` calls negative): every
      ratio that of the oedema; nothing shows and nothing progresses (such a case gets no progression label).

    A model given CE-T1, FLAIR and nCBV can learn the "ncbv" half only; one given ADC as well, both halves. The
    draws come from the seed's own replication stream; the rest is ``PhantomConfig`` defaults (diffusion on).
    """
    base = PhantomConfig(seed=seed, size=size).validated()
    looks_like_oedema = {"progression_cbv_ratio": base.cbv.oedema / base.cbv.white, "progression_flair_ratio": 1.0,
                         "progression_adc_ratio": 1.0, "progression_fa_ratio": 1.0}
    rng = np.random.default_rng([seed, REPLICATION_STREAM, 1])
    visible = adc_replication_visibility(seed)
    if visible == "adc":
        shows = {"progression_adc_ratio": float(rng.uniform(*ADC_VISIBLE_ADC_RATIO)),
                 "progression_fa_ratio": float(rng.uniform(*ADC_VISIBLE_FA_RATIO))}
    elif visible == "ncbv":
        shows = {"progression_cbv_ratio": float(rng.uniform(*NCBV_VISIBLE_CBV_RATIO))}
    else:
        shows = {}
    return PhantomConfig(seed=seed, size=size, diffusion=True, **{**looks_like_oedema, **shows}).validated()


# --- scalp and skull ----------------------------------------------------------------------------------------

# Intensities of the layers around the brain, in each series' units (white matter: CE-T1 1000, FLAIR 620, DSC 900):
# fat-rich scalp is bright on T1 and FLAIR and dim on fat-suppressed EPI; cortical bone gives no signal; the
# diploe between the two tables has marrow signal.
HEAD_LAYERS = {
    "t1c": {"scalp": 1300.0, "bone": 60.0, "diploe": 700.0},
    "flair": {"scalp": 900.0, "bone": 40.0, "diploe": 500.0},
    "dsc_s0": {"scalp": 500.0, "bone": 40.0, "diploe": 250.0},
}


def _head_layers(anatomy: _Anatomy, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Skull (inner and outer table, diploe between) and scalp around the brain, a few mm each, with uneven
    thickness, as masks on the template grid."""
    outside = ndimage.distance_transform_edt(~anatomy.brain, sampling=anatomy.spacing)
    uneven = _smooth_noise(rng, outside.shape, 15.0, anatomy.spacing)
    skull_start, skull_mm, scalp_mm = 2.0 + 0.5 * uneven, 6.5 + 1.5 * uneven, 5.5 + 1.5 * uneven
    depth = outside - skull_start
    skull = (depth > 0) & (depth <= skull_mm)
    diploe = skull & (depth > 0.3 * skull_mm) & (depth <= 0.7 * skull_mm)
    scalp = (depth > skull_mm) & (depth <= skull_mm + scalp_mm)
    return {"bone": skull & ~diploe, "diploe": diploe, "scalp": scalp}


def _add_head(maps: dict[str, np.ndarray], head: dict[str, np.ndarray]) -> None:
    for series, layers in HEAD_LAYERS.items():
        for layer, value in layers.items():
            maps[series][head[layer]] = value


# --- tissue property maps ---------------------------------------------------------------------------------


def _property_map(anatomy: _Anatomy, tumour: _Tumour, values: TissueProperties, base: np.ndarray | None = None,
                  progression_value: float | None = None) -> np.ndarray:
    """One tissue property on the template grid: normal tissue mixed by probability, lesion by label."""
    if base is not None:
        result = base * np.float32(1.0)
    else:
        result = values.grey * anatomy.grey + values.white * anatomy.white + values.csf * anatomy.csf
    result = np.where(anatomy.brain, result, 0).astype(np.float32)
    labels = tumour.labels
    for name in ("oedema", "enhancing", "necrosis", "cavity"):
        value = getattr(values, name)
        result[labels == LABELS[name]] = value if base is None else value * np.median(base[anatomy.white > 0.95])
    if progression_value is not None:
        result[tumour.progression] = progression_value
    return result


def _tissue_maps(anatomy: _Anatomy, tumour: _Tumour, config: PhantomConfig,
                 habitats: np.ndarray | None = None) -> dict[str, np.ndarray]:
    cbv_progression = config.progression_cbv_ratio * config.cbv.white
    mtt_white = 60.0 * config.cbv.white / config.cbf.white
    k2 = np.zeros(anatomy.brain.shape, np.float32)
    k2[tumour.labels == LABELS["enhancing"]] = config.k2_enhancing
    maps = {
        "t1c": _property_map(anatomy, tumour, config.t1c, base=anatomy.t1 * 1000),
        "flair": _property_map(anatomy, tumour, config.flair,
                               progression_value=config.flair.oedema * config.progression_flair_ratio),
        "cbv": _property_map(anatomy, tumour, config.cbv, progression_value=cbv_progression),
        # The infiltrated NEL keeps white matter's transit time: more vessels, same flow per vessel.
        "cbf": _property_map(anatomy, tumour, config.cbf, progression_value=60.0 * cbv_progression / mtt_white),
        "k2": k2,
        "dsc_s0": _property_map(anatomy, tumour, config.dsc_s0),
        "brain": anatomy.brain.astype(np.float32),
        "nawm": tumour.nawm.astype(np.float32),
    }
    if habitats is not None:
        _apply_habitats(maps, habitats)
    _add_transit_variants(maps, anatomy, tumour, config)
    return maps


def _add_transit_variants(maps: dict[str, np.ndarray], anatomy: _Anatomy, tumour: _Tumour,
                          config: PhantomConfig) -> None:
    """Scale CBF for ``mtt_spread`` and add the "arrival_delay" map (s) for ``arrival_delay_s``; nothing when off.

    Their own generator (seeded from the case's) draws the MTT field, so the rest of the case is unchanged.
    """
    if config.mtt_spread > 0:
        rng = np.random.default_rng([config.seed, TRANSIT_STREAM])
        field_ = _smooth_noise(rng, anatomy.brain.shape, MTT_FIELD_SIGMA_MM, anatomy.spacing)
        maps["cbf"] = (maps["cbf"] * np.exp(-config.mtt_spread * field_)).astype(np.float32)
    if config.arrival_delay_s > 0:
        tumour_side = np.sign(tumour.centre_ras[0])
        late = anatomy.ras[0] * tumour_side > 0
        maps["arrival_delay"] = np.broadcast_to(late * np.float32(config.arrival_delay_s),
                                                anatomy.brain.shape).astype(np.float32)


# --- acquisitions -----------------------------------------------------------------------------------------


def _protocols(size: str, preprocessed: bool = False) -> dict[str, SeriesProtocol]:
    if preprocessed:  # resampled onto one isotropic, axis-aligned grid, as BraTS distributes its cases
        spacing = 2.0 if size == "small" else 1.0
        isotropic = {name: SeriesProtocol(name, (spacing,) * 3, (1, 1, 1), tilt_deg=0.0) for name in ("t1c", "flair")}
        return {**isotropic, "dsc": _protocols(size)["dsc"]}
    if size == "small":
        return {
            "t1c": SeriesProtocol("t1c", (2.0, 2.0, 2.4), (1, 1, 1), tilt_deg=6.0),
            "flair": SeriesProtocol("flair", (2.0, 2.0, 4.0), (1, 1, 2), tilt_deg=-4.0),
            "dsc": SeriesProtocol("dsc", (3.6, 3.6, 6.0), (2, 2, 3), tilt_deg=10.0),
        }
    return {
        "t1c": SeriesProtocol("t1c", (0.9375, 0.9375, 1.2), (1, 1, 1), tilt_deg=6.0),
        "flair": SeriesProtocol("flair", (0.9375, 0.9375, 3.0), (1, 1, 3), tilt_deg=-4.0),
        "dsc": SeriesProtocol("dsc", (1.8, 1.8, 5.0), (2, 2, 5), tilt_deg=10.0),
    }


def _as_image(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def _noisy(rng: np.random.Generator, config: PhantomConfig, array: np.ndarray, white_signal: float, series: str):
    if not config.noise:
        return array
    return add_rician_noise(array, white_signal / config.snr[series], rng)


def _to_int16(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, np.iinfo(np.int16).max).astype(np.int16)


def generate_case(config: PhantomConfig = PhantomConfig(), progress: Progress | None = None) -> SyntheticCase:
    """Generate one synthetic case in memory. Deterministic for a given config."""
    config = config.validated()
    report = progress or (lambda fraction, message: None)
    rng = np.random.default_rng(config.seed)
    report(0.0, "Loading the MNI152 template")
    template = _load_template(config.size)
    anatomy = _anatomy(template)
    report(0.1, "Growing the tumour")
    tumour = _grow_tumour(anatomy, rng, config)
    habitat_map, shares = _split_habitats(anatomy, tumour, config) if config.habitats else (None, None)
    maps = _tissue_maps(anatomy, tumour, config, habitat_map)
    images = {name: _as_image(array, anatomy.grid) for name, array in maps.items()}
    label_image = _as_image(tumour.labels, anatomy.grid)
    progression_image = _as_image(tumour.progression.astype(np.uint8), anatomy.grid)

    field_of_view = anatomy.brain
    if config.head:
        head = _head_layers(anatomy, rng)
        _add_head(maps, head)
        images.update({name: _as_image(maps[name], anatomy.grid) for name in HEAD_LAYERS})
        field_of_view = anatomy.brain | head["scalp"] | head["bone"] | head["diploe"]

    protocols = _protocols(config.size, config.preprocessed)
    brain_centre = anatomy.grid.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in np.argwhere(anatomy.brain).mean(axis=0)[::-1]])
    poses = _poses(rng, brain_centre, config.preprocessed)
    grids = {name: series_grid(protocols[name], poses[name], anatomy.grid, field_of_view) for name in protocols}
    if config.preprocessed:
        grids["flair"] = grids["t1c"]
    if config.dsc_slices is not None:
        grids["dsc"] = _slab(grids["dsc"], poses["dsc"], tumour.centre_ras, config.dsc_slices)

    def acquired(name: str, series: str) -> np.ndarray:
        return acquire(images[name], grids[series], poses[series], protocols[series].oversample)

    report(0.3, "Acquiring CE-T1 and FLAIR")
    t1c = _noisy(rng, config, acquired("t1c", "t1c"), 1000.0, "t1c")
    flair = _noisy(rng, config, acquired("flair", "flair"), config.flair.white, "flair")
    lesion = acquire_labels(label_image, grids["t1c"], poses["t1c"])
    progression = acquire_labels(progression_image, grids["t1c"], poses["t1c"])
    brain = acquire(images["brain"], grids["t1c"], poses["t1c"], (1, 1, 1)) > 0.5

    def volume(array, series):
        return Volume(array, ijk_to_ras_from_sitk(grids[series]))

    truth = {"brain": volume(brain.astype(np.uint8), "t1c"), "progression": volume(progression, "t1c")}
    dsc = times = simulation = None
    if config.dsc:
        report(0.5, "Simulating the DSC series")
        dsc, times, simulation, dsc_truth = _dsc_series(config, rng, acquired)
        truth.update({name: volume(array, "dsc") for name, array in dsc_truth.items()})
    else:
        poses, grids = {k: v for k, v in poses.items() if k != "dsc"}, {k: v for k, v in grids.items() if k != "dsc"}
    habitats = None
    if config.habitats:
        # CE-T1 grid: labels at each voxel centre, as the lesion and progression truths (its habitats fill its CEL
        # and NEL exactly). DSC grid: what its curves are labelled against, so the label filling most of each
        # voxel, weighed as the signal mixes its tissues (``_habitats_by_volume``).
        habitat_image = _as_image(habitat_map, anatomy.grid)
        truth["habitats"] = volume(acquire_labels(habitat_image, grids["t1c"], poses["t1c"]), "t1c")
        on_dsc = lesion_dsc = None
        if config.dsc:
            dsc_view = (anatomy.grid, grids["dsc"], poses["dsc"], protocols["dsc"].oversample)
            on_dsc, lesion_dsc = _habitats_by_volume(habitat_map, tumour.labels, *dsc_view)
            truth["habitats_dsc"] = volume(on_dsc, "dsc")
            truth["lesion_dsc"] = volume(lesion_dsc, "dsc")  # which region each DSC voxel's habitat is in
        habitats = _habitat_summary(shares, truth["habitats"], volume(lesion, "t1c"), on_dsc, lesion_dsc)
    metadata = _metadata(config, tumour, poses, grids, protocols, simulation, times)
    diffusion = None
    metadata["diffusion"] = None
    if config.diffusion:
        report(0.9, "Acquiring the diffusion maps")
        maps, diffusion_truth, pose, grid = _diffusion_series(config, anatomy, tumour, field_of_view, brain_centre)
        diffusion = {name: Volume(array, ijk_to_ras_from_sitk(grid)) for name, array in maps.items()}
        truth.update({name: Volume(array, ijk_to_ras_from_sitk(grid)) for name, array in diffusion_truth.items()})
        metadata["diffusion"] = _diffusion_metadata(poses["t1c"], pose, grid, DIFFUSION_PROTOCOLS[config.size])
    report(1.0, "Synthetic case ready")
    return SyntheticCase(
        config=config,
        t1c=volume(_to_int16(t1c), "t1c"),
        flair=volume(_to_int16(flair), "flair"),
        dsc=None if dsc is None else volume(_to_int16(dsc), "dsc"),
        frame_times_s=times,
        lesion=volume(lesion, "t1c"),
        truth=truth,
        metadata=metadata,
        habitats=habitats,
        diffusion=diffusion,
    )


def _dsc_series(config: PhantomConfig, rng: np.random.Generator, acquired) -> tuple:
    """The DSC signal on its grid, its frame times, the simulation and the truth maps on the DSC grid."""
    delayed = config.arrival_delay_s > 0
    names = ("cbv", "cbf", "k2", "dsc_s0", "brain", "nawm") + (("arrival_delay",) if delayed else ())
    dsc_maps = {name: acquired(name, "dsc") for name in names}
    brain_dsc = dsc_maps["brain"] > 0.5
    nawm_dsc = (dsc_maps["nawm"] > 0.5) & brain_dsc
    times = np.arange(config.frames) * config.tr_s
    delay = np.clip(dsc_maps["arrival_delay"], 0, None) if delayed else None
    simulation = simulate_dsc(times, dsc_maps["cbv"], dsc_maps["cbf"], dsc_maps["k2"], dsc_maps["dsc_s0"],
                              config.te_s, brain_mask=brain_dsc, arrival_delay_s=delay)
    signal = _noisy(rng, config, simulation.signal, config.dsc_s0.white, "dsc")
    # A thin slab may miss the contralateral white matter: then nCBV is relative to all white matter in it.
    reference = nawm_dsc if nawm_dsc.any() else brain_dsc
    if delayed or config.mtt_spread > 0:
        # Unequal transit times: the truth is what each voxel's own curve holds, free of discretisation.
        own_area = np.trapezoid(simulation.vascular_delta_r2s, times, axis=0)
        ncbv = own_area / own_area[reference].mean()
    else:
        ncbv = dsc_maps["cbv"] / dsc_maps["cbv"][reference].mean()
    truth = {"cbv": dsc_maps["cbv"], "cbf": dsc_maps["cbf"], "ncbv": ncbv.astype(np.float32), "k2": dsc_maps["k2"],
             "nawm": nawm_dsc.astype(np.uint8), "brain_dsc": brain_dsc.astype(np.uint8)}
    if delayed:
        truth["arrival_delay"] = delay.astype(np.float32)
    return signal, times, simulation, truth


def _poses(rng: np.random.Generator, brain_centre, preprocessed: bool) -> dict[str, HeadPose]:
    if preprocessed:  # co-registered already: one pose for every series
        still = HeadPose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(float(c) for c in brain_centre))
        return {"t1c": still, "flair": still, "dsc": still}
    return {"t1c": random_pose(rng, brain_centre, 1.5, 1.5), "flair": random_pose(rng, brain_centre, 2.0, 2.5),
            "dsc": random_pose(rng, brain_centre, 2.0, 3.0)}


def _slab(grid: sitk.Image, pose: HeadPose, centre_ras: np.ndarray, slices: int) -> sitk.Image:
    """The series grid cut down to ``slices`` slices centred on the tumour (a thin-slab DSC protocol)."""
    centre_lps = (-float(centre_ras[0]), -float(centre_ras[1]), float(centre_ras[2]))
    in_scanner = pose.transform().GetInverse().TransformPoint(centre_lps)
    k_centre = grid.TransformPhysicalPointToContinuousIndex(in_scanner)[2]
    size = list(grid.GetSize())
    first = int(np.clip(round(k_centre - (slices - 1) / 2), 0, max(size[2] - slices, 0)))
    slab = sitk.Image([size[0], size[1], min(slices, size[2])], sitk.sitkFloat32)
    slab.SetSpacing(grid.GetSpacing())
    slab.SetDirection(grid.GetDirection())
    slab.SetOrigin(grid.TransformIndexToPhysicalPoint([0, 0, first]))
    return slab


def _series_record(grid: sitk.Image, protocol: SeriesProtocol, pose: HeadPose) -> dict:
    return {
        "spacing_mm": list(grid.GetSpacing()),
        "size": list(grid.GetSize()),
        "slice_tilt_deg": protocol.tilt_deg,
        "head_rotation_deg": [round(v, 4) for v in pose.rotation_deg],
        "head_translation_mm": [round(v, 4) for v in pose.translation_mm],
        "ras_template_from_ras_series": pose.matrix_ras().round(6).tolist(),
    }


def _diffusion_metadata(t1c_pose: HeadPose, pose: HeadPose, grid: sitk.Image, protocol: SeriesProtocol) -> dict:
    """truth.json's "diffusion": the grid and pose of the diffusion maps (beside "series", whose members are the
    series every case has), the CE-T1 registration a reader should find, and the maps' units."""
    series = _series_record(grid, protocol, pose)
    series["ras_t1c_from_ras_series"] = (np.linalg.inv(t1c_pose.matrix_ras()) @ pose.matrix_ras()).round(6).tolist()
    return {
        "series": series,
        "units": DIFFUSION_UNITS,
        "definition": "ADC and MD: a third of the diffusion tensor's trace (the same quantity, two acquisitions with "
                      "their own noise); truth md and fa are noise-free; the wedge's ADC/MD and FA are the oedema's "
                      "times progression_adc_ratio and progression_fa_ratio",
    }


def _metadata(config, tumour, poses: dict[str, HeadPose], grids, protocols, simulation, times) -> dict:
    series = {name: _series_record(grids[name], protocols[name], pose) for name, pose in poses.items()}
    # What a registration of FLAIR or DSC onto CE-T1 should find: CE-T1 RAS = M @ series RAS.
    t1c_from_template = np.linalg.inv(poses["t1c"].matrix_ras())
    for name in ("flair", "dsc") if "dsc" in poses else ("flair",):
        series[name]["ras_t1c_from_ras_series"] = (t1c_from_template @ poses[name].matrix_ras()).round(6).tolist()
    settings = asdict(replace(config))
    return {
        "notice": SYNTHETIC_NOTICE,
        "template_notice": MNI_NOTICE,
        "config": settings,
        "labels": {str(k): v for k, v in LABEL_DESCRIPTIONS.items()},
        "tumour": tumour.parameters,
        "series": series,
        "dsc": None if simulation is None else {
            "frame_times_s": times.tolist(),
            "echo_time_s": config.te_s,
            "repetition_time_s": config.tr_s,
            "aif": np.asarray(simulation.aif).round(6).tolist(),
            "reference_delta_r2s_per_s": np.asarray(simulation.reference).round(6).tolist(),
            "reference_definition": "mean vascular deltaR2* of non-leaking brain (K2 == 0) on the DSC grid",
        },
    }
