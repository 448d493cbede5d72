"""nnU-Net prediction of one case's channels, checked first: in a worker process or in this one.

``run_prediction`` blocks (CLI, tests, scripts) and returns the foreground probability; ``start_prediction``
returns the running ``BackgroundProcess`` to poll. Both write the channels to a temporary folder for the worker
(``models.worker``) and remove it when the process ends, fails or is cancelled; cancel ends the whole process tree.
``predict_here`` runs the same prediction in the calling process, for a caller that is itself a background job
(the Slicer module's prediction job): no second process, and no channel written to disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import SimpleITK as sitk

from GliomaProgressionLib.case.geometry import ijk_to_ras_from_sitk, same_grid
from GliomaProgressionLib.models.packages import ModelPackage
from GliomaProgressionLib.models.process import BackgroundProcess, python_executable
from GliomaProgressionLib.models.worker import DEVICES

Progress = Callable[[float, str], None]


class PredictionCancelled(RuntimeError):
    pass


def _check_channels(channels, model: ModelPackage, channel_names: Sequence[str] | None) -> list[sitk.Image]:
    """The channel images in model order, or ValueError naming what is wrong."""
    expected = model.channel_names
    if isinstance(channels, dict):
        missing = [name for name in expected if name not in channels]
        if missing:
            raise ValueError(f"The model {model.id!r} needs the channels {model.describe_channels()}; missing: "
                             f"{', '.join(missing)}.")
        images = [channels[name] for name in expected]
    else:
        images = list(channels)
        if len(images) != len(expected):
            raise ValueError(f"The model {model.id!r} needs {len(expected)} channels in this order: "
                             f"{model.describe_channels()}; got {len(images)}.")
        if channel_names is not None and list(channel_names) != expected:
            raise ValueError(f"The channels are in the wrong order for the model {model.id!r}: got "
                             f"{', '.join(channel_names)}, it needs {', '.join(expected)}.")
    for index, image in enumerate(images):
        if not isinstance(image, sitk.Image):
            raise ValueError(f"Channel {index} ({expected[index]}) is not a SimpleITK image.")
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"Channel {index} ({expected[index]}) must be a scalar 3D volume, got a "
                             f"{image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
                             "component(s).")
    reference = images[0]
    for index, image in enumerate(images[1:], start=1):
        same = same_grid(ijk_to_ras_from_sitk(image), ijk_to_ras_from_sitk(reference), image.GetSize(),
                         reference.GetSize())
        if not same:
            raise ValueError(f"Channel {index} ({expected[index]}) is not on the grid of channel 0 "
                             f"({expected[0]}); register and resample the channels onto the CE-T1 reference grid "
                             "first (preprocess.prepare_case).")
    return images


def _write_inputs(images: list[sitk.Image], folder: Path) -> None:
    for index, image in enumerate(images):
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(folder / f"case_{index:04d}.nii.gz"))
        writer.SetUseCompression(True)
        try:
            writer.SetCompressionLevel(1)  # fast: these files live for seconds
        except AttributeError:
            pass
        writer.Execute(sitk.Cast(image, sitk.sitkFloat32))


def worker_command(input_folder: Path, model: ModelPackage, output_file: Path, device: str = "auto",
                   tta: bool | None = None) -> list[str]:
    command = [python_executable(), "-m", "GliomaProgressionLib.models.worker", "--input", str(input_folder),
               "--model", str(model.folder), "--output", str(output_file), "--device", device,
               "--configuration", model.configuration, "--folds", *[str(f) for f in model.folds]]
    if tta is not None:
        command.append("--tta" if tta else "--no-tta")
    if model.trusted:
        command.append("--trust")
    return command


def start_prediction(channels, model: ModelPackage, output_file: str | os.PathLike, device: str = "auto",
                     tta: bool | None = None, channel_names: Sequence[str] | None = None,
                     timeout_s: float | None = None, work_dir: str | os.PathLike | None = None) -> BackgroundProcess:
    """Start the worker on a case; poll the returned process. ``output_file`` appears only on success.

    The worker writes into the temporary folder; when the process ends (``poll``/``wait`` see it) its cleanup
    moves the probability map to ``output_file`` if it succeeded and removes the temporary folder in every case
    (success, failure, cancel, timeout). ``process.result`` then holds the worker's summary (device, timings).
    """
    if device not in DEVICES:
        raise ValueError(f"The device must be {', '.join(DEVICES)}, got {device!r}.")
    images = _check_channels(channels, model, channel_names)
    output_file = Path(output_file)
    if not output_file.parent.is_dir():
        raise ValueError(f"The output folder {output_file.parent} does not exist.")
    temporary = Path(tempfile.mkdtemp(prefix="gliomaprog-predict-", dir=work_dir))
    try:
        _write_inputs(images, temporary)
        (temporary / "out").mkdir()
        produced = temporary / "out" / "probability.nii.gz"
        process = BackgroundProcess(worker_command(temporary, model, produced, device, tta),
                                    cpu_only=(device == "cpu"), timeout_s=timeout_s)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    process.result = None
    process.temporary_folder = temporary
    process.output_file = output_file

    def finish(code: int | None) -> None:
        try:
            if code == 0 and not process.cancelled and produced.is_file():
                staged = output_file.with_name(f".{output_file.name}.partial{''.join(output_file.suffixes)}")
                shutil.copyfile(produced, staged)
                os.replace(staged, output_file)
                line = next((l for l in reversed(process.lines) if l.startswith("RESULT ")), None)
                process.result = json.loads(line[7:]) if line else {}
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    process.add_cleanup(finish)
    try:
        process.start()
    except BaseException:
        process.run_cleanups(None)
        raise
    return process


def run_prediction(channels, model: ModelPackage, device: str = "auto", tta: bool | None = None,
                   timeout_s: float | None = None, progress: Progress | None = None,
                   cancel: threading.Event | None = None, channel_names: Sequence[str] | None = None,
                   info: dict | None = None, work_dir: str | os.PathLike | None = None) -> sitk.Image:
    """Predict one case in a background process and return the foreground probability (float32, 0..1).

    ``channels``: SimpleITK images in model order (or a dict by channel name), all on one grid (the 1 mm CE-T1
    reference grid). Raises ValueError for bad input, PredictionCancelled when ``cancel`` is set, TimeoutError
    after ``timeout_s``, RuntimeError with the worker's last lines when it fails. ``info`` (if given) receives
    the worker's summary (device used, mirroring, seconds). Every temporary file is removed in all cases.
    """
    with tempfile.TemporaryDirectory(prefix="gliomaprog-result-", dir=work_dir) as result_folder:
        output = Path(result_folder) / "probability.nii.gz"
        process = start_prediction(channels, model, output, device, tta, channel_names, timeout_s, work_dir)
        last = None
        try:
            while True:
                code = process.poll()
                if progress is not None and process.progress is not last:
                    last = process.progress
                    progress(last.fraction, last.message)
                if code is not None:
                    break
                if cancel is not None and cancel.is_set():
                    process.cancel()
                    raise PredictionCancelled("Prediction cancelled.")
                time.sleep(0.1)
        except BaseException:
            process.cancel()
            raise
        if process.timed_out:
            raise TimeoutError(f"The prediction did not finish within {timeout_s:g} s and was stopped.\n"
                               + process.error_tail())
        if code != 0 or not output.is_file():
            raise RuntimeError(f"The prediction failed (exit code {code}): {process.error_message()}\n"
                               + process.error_tail())
        image = sitk.ReadImage(str(output))
        image.CopyInformation(process_reference(channels, model))
        if info is not None:
            info.update(process.result or {})
        return image


def process_reference(channels, model: ModelPackage) -> sitk.Image:
    return channels[model.channel_names[0]] if isinstance(channels, dict) else list(channels)[0]


def predict_here(channels, model: ModelPackage, device: str = "auto", tta: bool | None = None,
                 progress: Progress | None = None, channel_names: Sequence[str] | None = None,
                 info: dict | None = None) -> sitk.Image:
    """As ``run_prediction``, in this process: the foreground probability (float32, 0..1) on the channels' grid.

    For a process that is itself a background job (cancel ends it); torch and nnU-Net stay loaded afterwards.
    ``info`` (if given) receives the summary (device used, mirroring, seconds).
    """
    from GliomaProgressionLib.models.worker import predict_images

    if device not in DEVICES:
        raise ValueError(f"The device must be {', '.join(DEVICES)}, got {device!r}.")
    images = _check_channels(channels, model, channel_names)
    probability, summary = predict_images(images, model.folder, device, tta, model.folds, model.configuration,
                                          model.trusted, progress or (lambda fraction, message: None))
    probability.CopyInformation(images[0])
    if info is not None:
        info.update(summary)
    return probability
