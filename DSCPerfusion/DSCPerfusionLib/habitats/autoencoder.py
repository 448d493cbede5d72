"""The curve autoencoder of Yun et al. 2023: a 1-D convolutional encoder to 5 latent features, two fully
connected decoder layers back to the 60-point curve, trained with the mean squared error.

Sizes are kept small so that a CPU trains it on a cohort in minutes: two convolutions (8 and 16 channels,
kernel 5, each followed by ReLU and max-pooling by 2) and a linear layer to the latent features; decoder
latent -> 64 -> n_points. Inputs are scaled by one affine map shared by all curves (offset = 1st, range =
99th - 1st percentile of the training curves, Yun's min-max scaling made robust to a few extreme voxels), stored
with the weights. Training is deterministic for a seed on CPU (its own random generator for the weights'
initialisation and the batch order). Weights are exchanged as a dict of numpy arrays (``encoder.npz``), never
pickled.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

SCALE_KEYS = ("input.offset", "input.range")
DEFAULT_BATCH_SIZE = 256
LEARNING_RATE = 3e-3
ENCODE_BATCH = 8192


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: the network is so small that threads only add overhead (on
    2 busy cores, training ran 10x slower with 2 threads than with 1), then restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TrainingCancelled(RuntimeError):
    """Raised when ``should_stop`` asks training to stop."""


class CurveAutoencoder(nn.Module):
    """1-D convolutional encoder (curve -> ``latent`` features) and two fully connected decoder layers."""

    def __init__(self, n_points: int = 60, latent: int = 5):
        super().__init__()
        if n_points < 8 or latent < 1:
            raise ValueError(f"The autoencoder needs at least 8 curve points and 1 latent feature, got {n_points} "
                             f"and {latent}.")
        self.n_points, self.latent = int(n_points), int(latent)
        self.features = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        )
        self.to_latent = nn.Linear(16 * (n_points // 4), latent)
        self.decoder = nn.Sequential(nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, n_points))

    def encode(self, curves: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.features(curves[:, None, :]).flatten(1))

    def forward(self, curves: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(curves))


def _checked_curves(curves: np.ndarray, n_points: int | None = None) -> np.ndarray:
    values = np.asarray(curves, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] < 1 or (n_points is not None and values.shape[1] != n_points):
        expected = n_points if n_points is not None else "P"
        raise ValueError(f"The curves must be an (N, {expected}) array, got shape {np.shape(curves)}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("The curves contain NaN or infinite values.")
    return values


def _scale(curves: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    return (curves - weights["input.offset"]) / weights["input.range"]


def train_autoencoder(
    curves: np.ndarray,
    *,
    epochs: int,
    seed: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    latent: int = 5,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, np.ndarray]:
    """Train on curves (N, P) float for ``epochs`` epochs; the weights and input scaling as numpy arrays.

    ``progress(fraction, message)`` after each epoch; ``should_stop()`` True ends training with
    ``TrainingCancelled``. Same curves, epochs and seed give the same weights (CPU).
    """
    values = _checked_curves(curves)
    if values.shape[0] < 2:
        raise ValueError("At least 2 curves are needed to train the autoencoder.")
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}.")
    low, high = np.percentile(values, [1.0, 99.0])
    scaling = {"input.offset": np.array(low, np.float32), "input.range": np.array(max(high - low, 1e-6), np.float32)}
    data = torch.from_numpy(_scale(values, scaling).astype(np.float32))
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = CurveAutoencoder(values.shape[1], latent)
    with one_thread():
        _fit(model, data, generator, int(epochs), int(batch_size), progress, should_stop)
    state = {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}
    return {**state, **scaling}


def _fit(model: CurveAutoencoder, data: torch.Tensor, generator: torch.Generator, epochs: int, batch_size: int,
         progress: Callable[[float, str], None] | None, should_stop: Callable[[], bool] | None) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_function = nn.MSELoss()
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for batch in torch.randperm(data.shape[0], generator=generator).split(batch_size):
            if should_stop is not None and should_stop():
                raise TrainingCancelled("Training of the curve autoencoder was cancelled.")
            optimiser.zero_grad()
            loss = loss_function(model(data[batch]), data[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * batch.numel()
        if progress is not None:
            progress((epoch + 1) / epochs, f"Autoencoder epoch {epoch + 1}/{epochs}: MSE {total / data.shape[0]:.5f}")


def expected_shapes(n_points: int, latent: int) -> dict[str, tuple[int, ...]]:
    """The array shapes of a weights dict for ``CurveAutoencoder(n_points, latent)`` (scaling included)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in CurveAutoencoder(n_points, latent).state_dict().items()}
    return {**shapes, **{key: () for key in SCALE_KEYS}}


def architecture_of(weights: dict[str, np.ndarray]) -> tuple[int, int]:
    """(n_points, latent) of a weights dict, refused in one sentence when it is not a CurveAutoencoder's."""
    try:
        n_points = int(np.shape(weights["decoder.2.weight"])[0])
        latent = int(np.shape(weights["to_latent.weight"])[0])
        expected = expected_shapes(n_points, latent)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError("The encoder weights are not those of the curve autoencoder.") from None
    if set(weights) != set(expected) or any(np.shape(weights[k]) != shape for k, shape in expected.items()):
        raise ValueError("The encoder weights do not have the arrays and shapes of the curve autoencoder.")
    if not all(np.all(np.isfinite(np.asarray(weights[k], dtype=np.float64))) for k in expected):
        raise ValueError("The encoder weights contain NaN or infinite values.")
    if not float(weights["input.range"]) > 0:
        raise ValueError("The encoder's input range is not positive.")
    return n_points, latent


def _model_from(weights: dict[str, np.ndarray]) -> CurveAutoencoder:
    n_points, latent = architecture_of(weights)
    model = CurveAutoencoder(n_points, latent)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()
                           if k not in SCALE_KEYS})
    return model.eval()


def encode(curves: np.ndarray, weights: dict[str, np.ndarray], batch_size: int = ENCODE_BATCH) -> np.ndarray:
    """Latent features (N, latent) float32 of curves (N, n_points), in batches without gradients."""
    model = _model_from(weights)
    values = _scale(_checked_curves(curves, model.n_points), weights).astype(np.float32)
    output = np.empty((values.shape[0], model.latent), np.float32)
    with torch.no_grad(), one_thread():
        for start in range(0, values.shape[0], batch_size):
            output[start:start + batch_size] = model.encode(torch.from_numpy(values[start:start + batch_size])).numpy()
    return output


def reconstruct(curves: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """The autoencoder's reconstruction (N, n_points) float32 of curves, in curve units (for checks)."""
    model = _model_from(weights)
    values = _scale(_checked_curves(curves, model.n_points), weights).astype(np.float32)
    with torch.no_grad(), one_thread():
        scaled = model(torch.from_numpy(values)).numpy()
    return scaled * weights["input.range"] + weights["input.offset"]
