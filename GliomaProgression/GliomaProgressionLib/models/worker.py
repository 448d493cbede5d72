"""nnU-Net prediction of one case, loaded safely: ``predict_images`` in the calling process, or this module run as
a separate process by ``inference.py``:

    python -m GliomaProgressionLib.models.worker --input DIR --model FOLDER --output FILE [--device auto|cpu|cuda]
        [--tta | --no-tta] [--folds 0 1 ...] [--configuration 3d_fullres] [--trust]

``DIR`` holds ``case_0000.nii.gz``, ``case_0001.nii.gz``, … (channels in model order, one grid). ``FILE`` gets the
foreground probability (float32, 0..1) on that grid. Progress lines ``[ NN%] message`` go to stdout; a failure
ends with ``ERROR: <message>`` and exit code 1 (the parent shows the last lines).

Whoever calls ``predict_images`` should be a process of its own (a background job that can be cancelled):
torch and nnU-Net stay loaded, and CPU predictions hide the GPU by setting ``CUDA_VISIBLE_DEVICES``.

Safe loading (DESIGN §7): nnU-Net's own loader unpickles checkpoints (``weights_only=False``) and imports whatever
class names the plans and checkpoint name, so a model folder from an untrusted source can run code. Here the
network is built from the plans with an allow-list of architecture and layer classes (no ``pydoc.locate``, no
trainer-class lookup — which also keeps timm/torchvision out of the process), the checkpoint is loaded with
``torch.load(weights_only=True)`` allowing only a few numpy scalar types, and the predictor is set up with
``nnUNetPredictor.manual_initialization``. Only ``trust=True`` falls back to unrestricted unpickling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from typing import Callable

Progress = Callable[[float, str], None]

DEVICES = ("auto", "cpu", "cuda")
ALLOWED_NETWORKS = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": ("unet", "PlainConvUNet"),
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": ("unet", "ResidualEncoderUNet"),
}
# Names nnU-Net plans use for layer classes (both the public and the module path spellings).
ALLOWED_LAYERS = {
    **{f"torch.nn.{n}": n for n in ("Conv2d", "Conv3d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm2d",
                                    "BatchNorm3d", "LeakyReLU", "ReLU", "GELU", "PReLU", "Dropout", "Dropout2d",
                                    "Dropout3d")},
    **{f"torch.nn.modules.conv.{n}": n for n in ("Conv2d", "Conv3d")},
    **{f"torch.nn.modules.instancenorm.{n}": n for n in ("InstanceNorm2d", "InstanceNorm3d")},
    **{f"torch.nn.modules.batchnorm.{n}": n for n in ("BatchNorm2d", "BatchNorm3d")},
    **{f"torch.nn.modules.activation.{n}": n for n in ("LeakyReLU", "ReLU", "GELU", "PReLU")},
    **{f"torch.nn.modules.dropout.{n}": n for n in ("Dropout", "Dropout2d", "Dropout3d")},
}
ALLOWED_PREPROCESSORS = {"DefaultPreprocessor"}
ALLOWED_READERS = {"SimpleITKIO", "NibabelIO", "NibabelIOWithReorient", "SimpleITKIOWithReorient"}
ALLOWED_NORMALIZATIONS = {"ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                          "RGBTo01Normalization"}
ALLOWED_RESAMPLINGS = {"resample_data_or_seg_to_shape", "resample_torch_fornnunet", "resample_torch_simple",
                       "no_resampling_hack"}
ALLOWED_LABEL_MANAGERS = {"LabelManager"}
RESAMPLINGS = ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")
MAX_STAGES = 12  # nnU-Net plans 5-8; more only makes building the network hang
MAX_BLOCKS_PER_STAGE = 32
MIN_FREE_CUDA_BYTES = 2 * 1024 ** 3
PLANS = "The model's plans.json"  # how a message names the plans when the caller does not say whose


class UnsafeModelError(ValueError):
    """The model package cannot be loaded without running code from it."""


def report(fraction: float, message: str) -> None:
    print(f"[{int(round(100 * max(0.0, min(1.0, fraction)))):3d}%] {message}", flush=True)


def use_nnunet_defaults() -> None:
    """Call before torch and nnU-Net are imported: they read these once. A function, not import-time code, so
    that importing this module (for DEVICES, or the checks the package installer runs) changes no environment."""
    os.environ.setdefault("nnUNet_def_n_proc", "1")  # nnU-Net's export pool size
    os.environ.setdefault("nnUNet_n_proc_DA", "1")  # else importing nnU-Net starts `hostname` to choose it
    os.environ.setdefault("nnUNet_compile", "false")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # silence its missing-folder warnings
        os.environ.setdefault(name, os.devnull)


# --- safe loading ---------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list:
    """The numpy types nnU-Net checkpoints contain (scalars in the training log), nothing that calls code."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    types = [scalar, np.dtype]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            types.append(getattr(np.dtypes, name))
    return types


def load_checkpoint(path: Path, trust: bool = False, name: str | None = None) -> dict:
    """Load an nnU-Net checkpoint weights-only (raises UnsafeModelError if that is impossible), or trusted.
    ``name``: how messages name the checkpoint (default its path)."""
    import torch

    name = name or str(path)
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError and friends
        text = str(error)
        refused = next((line.strip() for line in text.splitlines() if "allowed global" in line), None)
        if refused is None and "GLOBAL" not in text:
            raise ValueError(f"The checkpoint {name} is damaged or not a PyTorch checkpoint "
                             f"({type(error).__name__}: {text.strip().splitlines()[-1][:200] if text.strip() else ''})."
                             ) from None
        reason = refused.split(". Please use")[0] if refused else "it refers to code"
        raise UnsafeModelError(
            f"The checkpoint {name} cannot be loaded safely (weights only): {reason}. Loading it would run code "
            "stored in the file; install or use the package with trust only if you trust its source.") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise UnsafeModelError(f"The checkpoint {name} is not an nnU-Net checkpoint (no network_weights).")
    return checkpoint


def _layer(name, where: str = PLANS):
    import torch

    if name is None:
        return None
    if not _allowed(name, ALLOWED_LAYERS):
        raise UnsafeModelError(f"{where} names a layer class that is not allowed: {_shown(name)}.")
    return getattr(torch.nn, ALLOWED_LAYERS[name])


# --- the plans, checked as a whole ------------------------------------------------------------------------------
#
# A package's plans.json decides what nnU-Net looks up by name and how it cuts, resamples and normalises the images;
# hostile or broken plans must end in one sentence, never in a traceback, a hang or a name lookup. ``where`` is how a
# message names the plans ("The plans.json of the model package x.zip").


def _allowed(name, names) -> bool:
    """``name`` is one of ``names`` (a list or an object in hostile plans is no name, and not hashable either)."""
    return isinstance(name, str) and name in names


def _shown(value) -> str:
    """A JSON value as a message shows it, cut short."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _names(configurations: dict) -> str:
    names = [repr(name) for name in list(configurations)[:5]]
    return ", ".join(names) + (", ..." if len(configurations) > 5 else "")


def _kind(value) -> str:
    from GliomaProgressionLib.case.files import json_kind

    return json_kind(value)


def _configurations(plans, where: str) -> dict:
    if not isinstance(plans, dict):
        raise ValueError(f"{where} is not a JSON object of named fields (it holds {_kind(plans)}).")
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise ValueError(f"{where} has no configurations (its 'configurations' is {_shown(configurations)}).")
    return configurations


def default_configuration(plans, folder_name: str = "", where: str = PLANS) -> str:
    """The configuration a results folder is for: the one its name ends with (Trainer__Plans__configuration), else
    3d_fullres, else the first."""
    configurations = _configurations(plans, where)
    from_name = folder_name.split("__")[-1] if folder_name.count("__") == 2 else None
    return next((name for name in (from_name, "3d_fullres") if name in configurations), next(iter(configurations)))


def _inheritance_chain(configurations: dict, configuration: str, where: str) -> list[str]:
    """``configuration`` and the configurations it inherits from, nearest first; a cycle or a missing or malformed
    parent is refused (nnU-Net's ``inherits_from``)."""
    chain = [configuration]
    while True:
        settings = configurations[chain[-1]]
        if not isinstance(settings, dict):
            raise ValueError(f"{where} gives the configuration {chain[-1]!r} as {_kind(settings)}, not an object of "
                             "settings.")
        parent = settings.get("inherits_from")
        if parent is None:
            return chain
        if not isinstance(parent, str):
            raise ValueError(f"{where} gives 'inherits_from' of the configuration {chain[-1]!r} as {_shown(parent)}, "
                             "not a configuration name.")
        if parent in chain:
            cycle = " -> ".join(repr(name) for name in chain[chain.index(parent):] + [parent])
            raise ValueError(f"{where} has configurations that inherit from one another in a cycle ({cycle}).")
        if parent not in configurations:
            raise ValueError(f"{where} has the configuration {chain[-1]!r} inherit from {parent!r}, which it does not "
                             f"define (it has {_names(configurations)}).")
        chain.append(parent)


def resolve_configuration(plans, configuration: str, where: str = PLANS) -> dict:
    """The configuration's settings with those it inherits filled in (as nnU-Net's PlansManager merges them)."""
    configurations = _configurations(plans, where)
    if configuration not in configurations:
        raise ValueError(f"{where} has no configuration {configuration!r} "
                         f"(available: {_names(configurations)}).")
    entry: dict = {}
    for name in reversed(_inheritance_chain(configurations, configuration, where)):
        entry.update(configurations[name])
    return entry


def _architecture(entry: dict, where: str) -> dict:
    """The configuration's ``architecture``, its fields of the right kinds (the class names are checked apart)."""
    architecture = entry.get("architecture")
    if not isinstance(architecture, dict):
        raise ValueError(f"{where} gives the network 'architecture' as {_shown(architecture)}, not an object.")
    if not isinstance(architecture.get("network_class_name"), str):
        raise ValueError(f"{where} names the network class as {_shown(architecture.get('network_class_name'))}, "
                         "not a class name.")
    if not isinstance(architecture.get("arch_kwargs"), dict):
        raise ValueError(f"{where} gives the network's 'arch_kwargs' as {_shown(architecture.get('arch_kwargs'))}, "
                         "not an object of arguments.")
    imports = architecture.get("_kw_requires_import", [])
    if not isinstance(imports, list) or not all(isinstance(key, str) for key in imports):
        raise ValueError(f"{where} gives '_kw_requires_import' as {_shown(imports)}, not a list of argument names.")
    return architecture


def check_plans(plans, configuration: str, where: str = PLANS) -> dict:
    """The configuration's entry of the plans (inheritance resolved), after checking every class name it makes
    nnU-Net look up. ValueError (UnsafeModelError for a name not allowed) naming ``where`` and the problem."""
    entry = resolve_configuration(plans, configuration, where)
    architecture = _architecture(entry, where)
    if not _allowed(architecture["network_class_name"], ALLOWED_NETWORKS):
        raise UnsafeModelError(f"{where} names the network class {architecture['network_class_name']!r}, which is "
                               f"not one of the allowed architectures ({', '.join(sorted(ALLOWED_NETWORKS))}).")
    for key in architecture.get("_kw_requires_import", []):
        _layer(architecture["arch_kwargs"].get(key), where)
    if not _allowed(entry.get("preprocessor_name", "DefaultPreprocessor"), ALLOWED_PREPROCESSORS):
        raise UnsafeModelError(f"{where} names the preprocessor {_shown(entry.get('preprocessor_name'))}, which is "
                               "not allowed.")
    if not _allowed(plans.get("image_reader_writer", "SimpleITKIO"), ALLOWED_READERS):
        raise UnsafeModelError(f"{where} names the image reader {_shown(plans.get('image_reader_writer'))}, which is "
                               "not allowed.")
    return entry


# The settings nnU-Net reads while predicting, each with its test and what it must be.


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value, low: int = 1, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _is_size(value) -> bool:
    return isinstance(value, list) and len(value) in (2, 3) and all(_is_count(size) for size in value)


def _is_spacing(value, dimensions: int) -> bool:
    return (isinstance(value, list) and len(value) == dimensions
            and all(_is_number(step) and step > 0 for step in value))


def _check_setting(value, valid: bool, name: str, expected: str, where: str) -> None:
    if not valid:
        raise ValueError(f"{where} gives {name!r} as {_shown(value)}, not {expected}.")


def _check_channel_settings(entry: dict, plans: dict, channels: int, where: str) -> None:
    """Normalisation per input channel: one known scheme, mask flag and intensity statistics for each."""
    schemes = entry.get("normalization_schemes")
    _check_setting(schemes, isinstance(schemes, list) and len(schemes) == channels, "normalization_schemes",
                   f"a list of {channels} normalisation names (one per input channel)", where)
    unknown = next((scheme for scheme in schemes if not _allowed(scheme, ALLOWED_NORMALIZATIONS)), None)
    if unknown is not None:
        raise UnsafeModelError(f"{where} names the normalisation {_shown(unknown)}, which is not one of the known "
                               f"schemes ({', '.join(sorted(ALLOWED_NORMALIZATIONS))}).")
    masks = entry.get("use_mask_for_norm")
    _check_setting(masks, isinstance(masks, list) and len(masks) == channels
                   and all(isinstance(mask, bool) for mask in masks), "use_mask_for_norm",
                   f"a list of {channels} true/false values", where)
    intensities = plans.get("foreground_intensity_properties_per_channel")
    _check_setting(intensities, isinstance(intensities, dict), "foreground_intensity_properties_per_channel",
                   "an object of intensity statistics per channel", where)
    for channel in map(str, range(channels)):
        statistics = intensities.get(channel)
        if not isinstance(statistics, dict) or not all(_is_number(number) for number in statistics.values()):
            raise ValueError(f"{where} gives 'foreground_intensity_properties_per_channel' of channel {channel} as "
                             f"{_shown(statistics)}, not an object of intensity statistics (numbers).")


def _check_resampling(entry: dict, where: str) -> None:
    for name in RESAMPLINGS:
        function = entry.get(name)
        if not _allowed(function, ALLOWED_RESAMPLINGS):
            raise UnsafeModelError(f"{where} gives {name!r} as {_shown(function)}, not one of nnU-Net's resampling "
                                   f"functions ({', '.join(sorted(ALLOWED_RESAMPLINGS))}).")
        _check_setting(entry.get(f"{name}_kwargs"), isinstance(entry.get(f"{name}_kwargs"), dict), f"{name}_kwargs",
                       "an object of arguments", where)


def _check_stage_counts(kwargs: dict, where: str) -> None:
    """Building a network of a million stages would hang: the counts that size it must be plausible."""
    _check_setting(kwargs.get("n_stages"), _is_count(kwargs.get("n_stages"), 1, MAX_STAGES), "n_stages",
                   f"a whole number from 1 to {MAX_STAGES}", where)
    for name in ("n_conv_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder"):
        value = kwargs.get(name)
        counts = value if isinstance(value, list) else [value]
        if name in kwargs and (len(counts) > MAX_STAGES
                               or not all(_is_count(count, 1, MAX_BLOCKS_PER_STAGE) for count in counts)):
            raise ValueError(f"{where} gives {name!r} as {_shown(value)}, not whole numbers from 1 to "
                             f"{MAX_BLOCKS_PER_STAGE} (one per stage).")


def check_plans_settings(plans, configuration: str, channels: int, where: str = PLANS) -> dict:
    """``check_plans`` and every other setting nnU-Net reads while predicting, for a model of ``channels`` input
    channels: the configuration's entry, or ValueError naming ``where`` and the setting."""
    entry = check_plans(plans, configuration, where)
    _check_setting(entry.get("patch_size"), _is_size(entry.get("patch_size")), "patch_size",
                   "a list of 2 or 3 positive whole numbers", where)
    dimensions = len(entry["patch_size"])
    _check_setting(entry.get("spacing"), _is_spacing(entry.get("spacing"), dimensions), "spacing",
                   f"a list of {dimensions} positive numbers", where)
    for name in ("transpose_forward", "transpose_backward"):
        order = plans.get(name, list(range(dimensions)))
        _check_setting(order, isinstance(order, list) and sorted(order) == list(range(dimensions)), name,
                       f"an order of the axes 0 to {dimensions - 1}", where)
    _check_channel_settings(entry, plans, channels, where)
    _check_resampling(entry, where)
    if not _allowed(plans.get("label_manager", "LabelManager"), ALLOWED_LABEL_MANAGERS):
        raise UnsafeModelError(f"{where} names the label_manager {_shown(plans.get('label_manager'))}, which is not "
                               f"allowed ({', '.join(sorted(ALLOWED_LABEL_MANAGERS))}).")
    _check_stage_counts(entry["architecture"]["arch_kwargs"], where)
    return entry


def check_network_fits(entry: dict, input_channels: int, output_channels: int, weights: dict, checkpoint: str,
                       where: str = PLANS) -> None:
    """The network the plans describe can be built and the checkpoint's weights fit it. Built on the "meta" device:
    no memory for weights, so hostile sizes cost nothing."""
    import torch

    try:
        with torch.device("meta"):
            network = build_network(entry, input_channels, output_channels, where)
    except UnsafeModelError:
        raise
    except Exception as error:  # whatever the architecture's constructor makes of arguments it does not expect
        raise ValueError(f"{where} has architecture arguments that do not make a network "
                         f"({type(error).__name__}: {_first_line(error)}).") from None
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    found = {name: tuple(getattr(tensor, "shape", ())) for name, tensor in weights.items()}
    if expected != found:
        differing = sorted(set(expected) ^ set(found)) or [name for name in expected if expected[name] != found[name]]
        raise ValueError(f"The checkpoint {checkpoint} does not fit the network in the plans ({len(differing)} "
                         f"weights missing, extra or of another shape, e.g. {differing[0]!r}).")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def build_network(entry: dict, input_channels: int, output_channels: int, where: str = PLANS):
    """The network from the plans, built from allow-listed classes only (no name lookup, no trainer class)."""
    import importlib

    architecture = entry["architecture"]
    module, class_name = ALLOWED_NETWORKS[architecture["network_class_name"]]
    network_class = getattr(importlib.import_module(f"dynamic_network_architectures.architectures.{module}"),
                            class_name)
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        kwargs[key] = _layer(kwargs.get(key), where)
    kwargs["deep_supervision"] = False
    return network_class(input_channels=input_channels, num_classes=output_channels, **kwargs)


def choose_device(requested: str = "auto") -> str:
    """auto: CUDA when available with enough free memory, else CPU."""
    if requested == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if requested == "cuda":
            raise ValueError("CUDA was requested but no CUDA device is available.")
        return "cpu"
    if requested == "cuda":
        return "cuda"
    try:
        free, _ = torch.cuda.mem_get_info()
    except Exception:
        return "cpu"
    return "cuda" if free >= MIN_FREE_CUDA_BYTES else "cpu"


def load_predictor(folder: Path, device: str = "cpu", tta: bool | None = None, folds=None,
                   configuration: str | None = None, trust: bool = False):
    """An ``nnUNetPredictor`` for a model folder, set up without unpickling code or looking classes up by name."""
    use_nnunet_defaults()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(folder)
    for required in ("dataset.json", "plans.json"):
        if not (folder / required).is_file():
            raise ValueError(f"The model folder {folder} has no {required}.")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    if configuration is None:
        configuration = default_configuration(plans, folder.name)
    entry = check_plans(plans, configuration)
    if folds is None:
        folds = sorted(int(p.name[5:]) for p in folder.glob("fold_*") if p.name[5:].isdigit()
                       and (p / "checkpoint_final.pth").is_file())
    if not folds:
        raise ValueError(f"The model folder {folder} has no fold_N/checkpoint_final.pth.")
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(dataset_json)
    input_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    network = build_network(entry, input_channels, label_manager.num_segmentation_heads)
    parameters, trainer_name, mirror_axes = [], "unknown", None
    for fold in folds:
        checkpoint = load_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", trust)
        parameters.append(checkpoint["network_weights"])
        trainer_name = str(checkpoint.get("trainer_name", trainer_name))
        mirror_axes = checkpoint.get("inference_allowed_mirroring_axes", mirror_axes)
    try:
        network.load_state_dict(parameters[0])
    except RuntimeError as error:
        raise ValueError(f"The checkpoint does not fit the network in the plans: {str(error).splitlines()[0]}")
    torch_device = torch.device(device)
    use_mirroring = (device != "cpu") if tta is None else bool(tta)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=True)
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, tuple(mirror_axes) if mirror_axes is not None else None)
    predictor.gliomaprog_info = {"device": device, "mirroring": use_mirroring, "folds": list(folds),
                                 "configuration": configuration, "input_channels": input_channels}
    return predictor


# --- prediction -----------------------------------------------------------------------------------------------


def _progress_bar(progress: Progress):
    """A stand-in for tqdm inside nnU-Net's sliding window that reports ``Sliding window k/N`` to ``progress``."""

    class ProgressBar:
        span = (0.2, 0.85)

        def __init__(self, *args, total=None, disable=False, **kwargs):
            self.total = max(1, int(total or 1))
            self.count = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n: int = 1):
            self.count += n
            start, end = self.span
            # No time in the message: whoever prints progress lines adds the elapsed time once.
            progress(start + (end - start) * self.count / self.total, f"Sliding window {self.count}/{self.total}")

        def close(self):
            pass

    return ProgressBar


def predict_probability(predictor, images: list, progress: Progress | None = None):
    """Foreground probability (float32 SimpleITK image on the first image's grid) of one case's channels."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    tell = progress or (lambda fraction, message: None)
    reference = images[0]
    data = np.stack([sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)) for image in images])
    spacing = list(reference.GetSpacing())[::-1]
    properties = {"spacing": spacing}
    tell(0.12, "Preprocessing (crop, normalise, resample to the model's spacing)")
    adapter = PreprocessAdapterFromNpy([data], [None], [properties], [None], predictor.plans_manager,
                                       predictor.dataset_json, predictor.configuration_manager,
                                       num_threads_in_multithreaded=1, verbose=False)
    item = next(adapter)  # preprocessed here: no process pool, so no process beyond the caller's
    tell(0.2, f"Sliding window on {tuple(item['data'].shape[1:])} voxels")
    # nnU-Net's progress bar is its module's tqdm: replaced for this call only, so that no later prediction in
    # this process reports to a caller that has gone (a closed stream, a finished panel).
    original_bar = predict_from_raw_data.tqdm
    if progress is not None:
        predict_from_raw_data.tqdm = _progress_bar(progress)
    try:
        logits = predictor.predict_logits_from_preprocessed_data(item["data"]).cpu()
    finally:
        predict_from_raw_data.tqdm = original_bar
    tell(0.88, "Resampling the probabilities onto the input grid")
    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
        item["data_properties"], return_probabilities=True)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.numpy()
    foreground = np.clip(1.0 - probabilities[0], 0.0, 1.0).astype(np.float32)
    image = sitk.GetImageFromArray(foreground)
    image.CopyInformation(reference)
    return image


def _is_cuda_failure(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in ("cuda", "out of memory", "cudnn", "cublas", "outofmemory"))


def predict_images(images: list, model_folder: Path, device: str = "auto", tta: bool | None = None, folds=None,
                   configuration: str | None = None, trust: bool = False,
                   progress: Progress = report) -> tuple:
    """(foreground probability, summary) of one case's channels (SimpleITK images in model order, one grid), in
    this process. The summary says which device and mirroring were used; a CUDA failure falls back to the CPU."""
    if device not in DEVICES:
        raise ValueError(f"The device must be {', '.join(DEVICES)}, got {device!r}.")
    started = time.monotonic()
    progress(0.0, "Loading the model")
    use_nnunet_defaults()
    device = choose_device(device)
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    import torch  # noqa: F401  (after CUDA_VISIBLE_DEVICES)

    predictor = load_predictor(Path(model_folder), device, tta, folds, configuration, trust)
    expected = predictor.gliomaprog_info["input_channels"]
    if len(images) != expected:
        raise ValueError(f"The model needs {expected} channels, got {len(images)}.")
    progress(0.08, f"Device: {device}, test-time mirroring "
                   f"{'on' if predictor.gliomaprog_info['mirroring'] else 'off'}")
    fell_back = None
    try:
        probability = predict_probability(predictor, images, progress)
    except Exception as error:
        if device != "cuda" or not _is_cuda_failure(error):
            raise
        fell_back = str(error).splitlines()[0][:200]
        print(f"WARNING: CUDA failed ({fell_back}); predicting on the CPU instead.", flush=True)
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        device = "cpu"
        predictor = load_predictor(Path(model_folder), "cpu", tta, folds, configuration, trust)
        probability = predict_probability(predictor, images, progress)
    info = {**predictor.gliomaprog_info, "device": device, "cuda_fallback": fell_back,
            "seconds": round(time.monotonic() - started, 2)}
    return probability, info


def run(arguments) -> dict:
    """The worker process: channels from files, the probability map to a file, the summary as a RESULT line."""
    import SimpleITK as sitk

    files = sorted(Path(arguments.input).glob("case_[0-9][0-9][0-9][0-9].nii.gz"))
    if not files:
        raise ValueError(f"No case_0000.nii.gz in {arguments.input}.")
    images = [sitk.ReadImage(str(path)) for path in files]
    probability, info = predict_images(images, Path(arguments.model), arguments.device, arguments.tta,
                                       arguments.folds, arguments.configuration, arguments.trust)
    report(0.95, "Writing the probability map")
    output = Path(arguments.output)
    temporary = output.with_name(f".{output.name}.partial.nii.gz")
    sitk.WriteImage(probability, str(temporary), True)
    os.replace(temporary, output)
    print("RESULT " + json.dumps(info), flush=True)
    report(1.0, f"Prediction done ({info['seconds']} s)")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m GliomaProgressionLib.models.worker")
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--tta", dest="tta", action="store_true", default=None)
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--folds", type=int, nargs="+", default=None)
    parser.add_argument("--configuration", default=None)
    parser.add_argument("--trust", action="store_true")
    arguments = parser.parse_args(argv)
    try:
        run(arguments)
    except Exception as error:  # the traceback for the log, then the one-line message the parent shows
        import traceback

        traceback.print_exc(file=sys.stdout)
        print(f"ERROR: {error}", flush=True)
        return 1
    return 0


if __name__ == "__main__":  # nnU-Net's pools use spawn: nothing may run on import
    sys.exit(main())
