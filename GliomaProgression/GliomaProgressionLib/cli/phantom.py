"""``gliomaprog phantom``: a synthetic case folder (and optionally its Slicer scene)."""

from __future__ import annotations

import argparse
from pathlib import Path

from GliomaProgressionLib.cli.options import StderrProgress, non_negative_int, positive_float, positive_int
from GliomaProgressionLib.phantom.synthetic import HABITAT_SHARE_BOUNDS, SIZES

SHARE_FLAGS = {"high_angiogenic_share": "--high-angiogenic-share", "perinecrotic_share": "--perinecrotic-share",
               "nel_low_angiogenic_share": "--nel-low-angiogenic-share", "infiltrated_share": "--infiltrated-share"}


def add_commands(commands) -> None:
    """``phantom``."""
    phantom = commands.add_parser(
        "phantom", help="generate a synthetic glioma case (simulated images with known truth)",
        description="Generate a synthetic glioma case from the MNI152 template: CE-T1, FLAIR, DSC (4D), "
                    "lesion labels and the truth (CBV, K2, future progression). Synthetic, not patient data.")
    phantom.add_argument("--out", required=True, type=Path, help="new folder for the case (must not exist)")
    phantom.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    phantom.add_argument("--size", choices=SIZES, default="full",
                         help="full: clinical resolution; small: coarse grids for fast tests")
    phantom.add_argument("--cavity", action="store_true", help="resection-cavity variant")
    phantom.add_argument("--no-noise", action="store_true", help="noise-free images (for validation)")
    phantom.add_argument("--progression-cbv-ratio", type=positive_float, default=1.6,
                         help="CBV of the future-progression region relative to white matter (default 1.6)")
    phantom.add_argument("--progression-flair-ratio", type=positive_float, default=1.04,
                         help="FLAIR of the future-progression region relative to the oedema (default 1.04)")
    variants = phantom.add_argument_group("variants that look like the data users have")
    variants.add_argument("--preprocessed", action="store_true",
                          help="BraTS style: 1 mm, every series already co-registered on one grid, skull-stripped")
    variants.add_argument("--with-head", action="store_true",
                          help="scalp and skull kept, as acquired (default: skull-stripped brain)")
    variants.add_argument("--no-dsc", action="store_true", help="no perfusion (DSC) series")
    variants.add_argument("--no-diffusion", action="store_true", help="no diffusion maps (adc, md, fa)")
    variants.add_argument("--dwi", action="store_true",
                          help="a raw DTI series (dwi.nii.gz, dwi.bval, dwi.bvec) instead of the md and fa maps")
    phantom.add_argument("--progression-adc-ratio", type=positive_float, default=0.80,
                         help="ADC and MD of the future-progression region / the rest of the oedema (default 0.80)")
    phantom.add_argument("--progression-fa-ratio", type=positive_float, default=0.93,
                         help="FA of the future-progression region / the rest of the oedema (default 0.93)")
    variants.add_argument("--dsc-slices", type=positive_int, metavar="N",
                          help="a thin DSC slab of N slices through the tumour (default: the whole head)")
    habitats = phantom.add_argument_group("perfusion-habitat truth (Yun et al. 2023)")
    habitats.add_argument("--habitats", action="store_true",
                          help="divide the enhancing lesion and the NEL into perfusion habitats with curves of their "
                               "own, and write their truth (truth/habitats*.nii.gz, truth/habitats.json)")
    for name, flag in SHARE_FLAGS.items():
        habitats.add_argument(flag, type=_fraction, metavar="F", help=_share_help(name))
    phantom.add_argument("--scene", type=Path, help="also write the case as a Slicer scene bundle (.mrb)")
    phantom.add_argument("--quiet", action="store_true", help="no progress lines")
    phantom.set_defaults(handler=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from GliomaProgressionLib.phantom.folder import write_case
    from GliomaProgressionLib.case.files import check_new_output_folder
    from GliomaProgressionLib.phantom.synthetic import PhantomConfig, generate_case

    check_new_output_folder(args.out, "--out")  # the command line names its flag
    if args.no_dsc and args.dsc_slices is not None:
        raise ValueError("--dsc-slices sets the DSC slab, but --no-dsc leaves the DSC series out; give one of them.")
    given = [flag for name, flag in SHARE_FLAGS.items() if getattr(args, name) is not None]
    if given and not args.habitats:
        raise ValueError(f"{', '.join(given)} set habitat shares; add --habitats to make the habitats.")
    if args.no_diffusion and args.dwi:
        raise ValueError("--dwi writes the diffusion series raw, but --no-diffusion leaves diffusion out; give one "
                         "of them.")
    if args.scene is not None:
        _check_scene_path(args.scene)
    shares = {name: getattr(args, name) for name in SHARE_FLAGS}
    config = PhantomConfig(seed=args.seed, size=args.size, cavity=args.cavity, noise=not args.no_noise,
                           progression_cbv_ratio=args.progression_cbv_ratio,
                           progression_flair_ratio=args.progression_flair_ratio, preprocessed=args.preprocessed,
                           head=args.with_head, dsc=not args.no_dsc, dsc_slices=args.dsc_slices,
                           habitats=args.habitats, diffusion=not args.no_diffusion,
                           progression_adc_ratio=args.progression_adc_ratio,
                           progression_fa_ratio=args.progression_fa_ratio, **shares)
    progress = StderrProgress(args.quiet)
    case = generate_case(config, progress)
    write_case(case, args.out, dwi=args.dwi)
    print(f"Synthetic case written to {args.out}")
    if args.scene is not None:
        progress(1.0, "Writing the Slicer scene")
        _write_case_scene(args.out, args.scene)
        print(f"Slicer scene written to {args.scene}")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}")
    return value


def _share_help(name: str) -> str:
    if name == "infiltrated_share":
        return "fraction of the NEL that is infiltrated oedema, grown from the future-progression region " \
               "(default: that region alone)"
    low, high = HABITAT_SHARE_BOUNDS[name]
    region = "NEL" if name.startswith("nel_") else "CEL"
    habitat = name.removeprefix("nel_").removesuffix("_share").replace("_", "-")
    return f"fraction of the {region} that is {habitat} (default: drawn from the seed, {low:g}-{high:g})"


def _check_scene_path(path: Path) -> None:
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"--scene {path} must end in .mrb.")
    if path.exists():
        raise ValueError(f"--scene {path} already exists; choose a new file name.")


def _write_case_scene(case_folder: Path, scene_path: Path) -> None:
    from GliomaProgressionLib import mrml
    from GliomaProgressionLib.report.scene import load_case_into_scene

    scene = mrml.new_scene()
    load_case_into_scene(case_folder, scene, name=case_folder.name)
    mrml.write_scene_bundle(scene_path, scene)
