#!/usr/bin/env python3
"""Draw the extension and module icons (128x128 RGBA PNG, transparent background).

The icons are drawn programmatically so they can be regenerated and reviewed:

    python tools/make_icons.py            # writes the four icons into the repository
    python tools/make_icons.py --out DIR  # writes them into DIR instead (for previews)

Each icon is rendered with matplotlib at 4x the final size and reduced with a
Lanczos filter (alpha-premultiplied by Pillow), which keeps thin strokes crisp at
128 px. The output is deterministic: no randomness, no timestamps, and the PNG is
written by Pillow without metadata.
"""

import argparse
import io
from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
SUPERSAMPLE = 4

# Palette: mid-tone outline and a light fill read on both Slicer's light and dark themes.
BRAIN_FILL = "#e3e7ec"
BRAIN_EDGE = "#4f5b69"
SULCUS = "#aab3be"
VENTRICLE = "#7d8794"


# ---------------------------------------------------------------------------
# Canvas helpers
# ---------------------------------------------------------------------------

def new_canvas():
    """A square figure whose data coordinates are [0, 1] x [0, 1], transparent."""
    px = SIZE * SUPERSAMPLE
    fig = plt.figure(figsize=(1, 1), dpi=px)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.patch.set_alpha(0.0)
    return fig, ax


def lw(px):
    """Line width in points for a stroke `px` pixels wide in the final 128 px icon."""
    return px * SUPERSAMPLE * 72.0 / (SIZE * SUPERSAMPLE)


def finish(fig):
    """Render the figure and return the downsampled RGBA image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=SIZE * SUPERSAMPLE, transparent=True,
                metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    big = Image.open(buf).convert("RGBA")
    assert big.size == (SIZE * SUPERSAMPLE, SIZE * SUPERSAMPLE), big.size
    return big.resize((SIZE, SIZE), Image.LANCZOS)


def save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------

def brain_outline(cx=0.5, cy=0.5, rx=0.40, ry=0.46, n=720):
    """Closed outline of an axial brain slice: egg-shaped (wider posteriorly),
    gently lobulated, with the interhemispheric notches at front and back."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    # y up = anterior. Posterior half slightly wider than the frontal half.
    widen = 1.0 - 0.07 * np.sin(t)
    r = 1.0 + 0.018 * np.cos(10 * t)            # gentle gyral lobulation
    # interhemispheric notches (anterior at t=pi/2, posterior at t=3pi/2)
    for t0, depth in ((np.pi / 2, 0.085), (3 * np.pi / 2, 0.06)):
        d = np.angle(np.exp(1j * (t - t0)))
        r -= depth * np.exp(-(d / 0.09) ** 2)
    x = cx + rx * r * np.cos(t) * widen
    y = cy + ry * r * np.sin(t)
    return np.column_stack([x, y])


def closed_path(xy):
    verts = np.vstack([xy, xy[:1]])
    codes = [MplPath.MOVETO] + [MplPath.LINETO] * (len(xy) - 1) + [MplPath.CLOSEPOLY]
    return MplPath(verts, codes)


def draw_brain(ax, cx=0.5, cy=0.5, rx=0.40, ry=0.46, fill=BRAIN_FILL, edge=BRAIN_EDGE,
               edge_px=3.0, alpha=1.0, details=True, zorder=1):
    """Axial brain: lobulated outline, midline (falx) and the lateral ventricles."""
    outline = brain_outline(cx, cy, rx, ry)
    path = closed_path(outline)
    patch = PathPatch(path, facecolor=fill, edgecolor=edge, lw=lw(edge_px),
                      alpha=alpha, joinstyle="round", zorder=zorder)
    ax.add_patch(patch)
    if details:
        clip = PathPatch(path, transform=ax.transData, facecolor="none", edgecolor="none")
        ax.add_patch(clip)
        arts = []
        # falx / midline
        arts += ax.plot([cx, cx], [cy + ry * 0.80, cy + ry * 0.45], color=SULCUS,
                        lw=lw(1.6), solid_capstyle="round", alpha=alpha, zorder=zorder + 0.1)
        arts += ax.plot([cx, cx], [cy - ry * 0.86, cy - ry * 0.42], color=SULCUS,
                        lw=lw(1.6), solid_capstyle="round", alpha=alpha, zorder=zorder + 0.1)
        # lateral ventricles: two mirrored crescents
        for s in (-1, 1):
            tt = np.linspace(0, 1, 60)
            vx = cx + s * (0.035 + 0.05 * np.sin(np.pi * tt) ** 1.5) * rx / 0.40
            vy = cy + (0.20 - 0.40 * tt) * ry / 0.46
            arts += ax.plot(vx, vy, color=VENTRICLE, lw=lw(3.2), solid_capstyle="round",
                            alpha=alpha, zorder=zorder + 0.1)
        for a in arts:
            a.set_clip_path(clip)
    return path


def blob(cx, cy, r, lobes=((3, 0.08, 0.3), (5, 0.05, 1.1)), n=400):
    """A smooth irregular closed contour (tumour-like)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = np.ones_like(t)
    for k, amp, ph in lobes:
        rr += amp * np.cos(k * t + ph)
    return np.column_stack([cx + r * rr * np.cos(t), cy + r * rr * np.sin(t)])


def offset_contour(xy, dist, grid=1024):
    """Outward offset of a closed contour by `dist` (uniform margin) via a distance map,
    returned as the list of contour line vertices from matplotlib's contour."""
    from scipy import ndimage

    g = np.linspace(0, 1, grid)
    X, Y = np.meshgrid(g, g)
    inside = MplPath(xy).contains_points(np.column_stack([X.ravel(), Y.ravel()])).reshape(X.shape)
    d = ndimage.distance_transform_edt(~inside) / (grid - 1)
    return X, Y, d - dist


# ---------------------------------------------------------------------------
# Icons
# ---------------------------------------------------------------------------

def icon_dsc_perfusion():
    """DSC signal-time curve with the bolus dip, over a faint brain outline."""
    fig, ax = new_canvas()
    # faint brain: light but opaque, so the dark axes keep their contrast on dark themes
    draw_brain(ax, rx=0.41, ry=0.47, fill="#edf2f7", edge="#a3b1c2", edge_px=2.4,
               details=False, zorder=1)

    # signal: flat baseline, sharp drop at bolus arrival, recirculation, incomplete recovery
    t = np.linspace(0.0, 1.0, 600)
    t0, width = 0.34, 0.075
    tau = np.clip((t - t0) / width, 0.0, None)
    dip = tau ** 2.2 * np.exp(-2.2 * (tau - 1.0))
    dip = dip / dip.max()
    recirc = 0.10 * np.exp(-((t - 0.62) / 0.07) ** 2)
    leak = 0.10 / (1.0 + np.exp(-(t - 0.50) / 0.04))      # T1/T2* leakage: no full recovery
    s = 1.0 - 0.82 * dip - recirc - leak
    x = 0.12 + 0.80 * t
    y = 0.14 + 0.62 * s

    # axes, with a light underlay so they stay visible on dark themes
    for color, width, z in (("white", 5.6, 2.9), ("#37414d", 3.0, 3)):
        ax.plot([0.11, 0.11, 0.93], [0.86, 0.12, 0.12], color=color, lw=lw(width),
                solid_joinstyle="miter", solid_capstyle="round", zorder=z,
                alpha=0.9 if color == "white" else 1.0)
    # area between baseline and curve (what CBV integrates), warm and translucent
    base = 0.14 + 0.62 * 1.0
    ax.fill_between(x, y, base, where=t > t0 - 0.01, color="#f28c28", alpha=0.55, lw=0, zorder=2)
    ax.plot([x[0], x[-1]], [base, base], color="#f28c28", lw=lw(1.4), ls=(0, (2, 2)), zorder=2)
    # curve: white underlay for contrast on any background, then the signal
    ax.plot(x, y, color="white", lw=lw(7.0), solid_capstyle="round", zorder=4, alpha=0.9)
    ax.plot(x, y, color="#1565c0", lw=lw(4.2), solid_capstyle="round",
            solid_joinstyle="round", zorder=5)
    return finish(fig)


def _heat_halo(ax, clip_path, cx, cy):
    """Predicted-progression probability as an inferno heat map, biased to one side."""
    n = 512
    g = np.linspace(0, 1, n)
    X, Y = np.meshgrid(g, g)
    # anisotropic Gaussian, elongated along the white matter towards the midline/posterior
    ang = np.deg2rad(35)
    dx, dy = X - (cx - 0.05), Y - (cy - 0.03)
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    p = np.exp(-((u / 0.20) ** 2 + (v / 0.13) ** 2))
    rgba = plt.get_cmap("inferno")(0.45 + 0.55 * p)
    rgba[..., 3] = np.clip((p - 0.06) / 0.94, 0, 1) ** 0.7 * 0.95
    im = ax.imshow(rgba, extent=(0, 1, 0, 1), origin="lower", interpolation="bilinear", zorder=2)
    im.set_clip_path(PathPatch(clip_path, transform=ax.transData))


def _tumour(ax, cx, cy, r):
    """Enhancing rim (bright) around a dark necrotic core."""
    outer = blob(cx, cy, r)
    ax.add_patch(PathPatch(closed_path(outer), facecolor="#fff4d6", edgecolor="#5a2a00",
                           lw=lw(1.6), zorder=4))
    inner = blob(cx + 0.005, cy - 0.004, r * 0.55, lobes=((3, 0.10, 0.9), (4, 0.05, 0.2)))
    ax.add_patch(PathPatch(closed_path(inner), facecolor="#3a2a35", edgecolor="none", zorder=5))
    return outer


def icon_glioma_progression(with_ctv=False):
    """Axial brain with a tumour and the predicted-progression heat-map halo."""
    fig, ax = new_canvas()
    path = draw_brain(ax, zorder=1)
    cx, cy = 0.66, 0.60
    _heat_halo(ax, path, cx, cy)
    outer = _tumour(ax, cx, cy, 0.085)
    if with_ctv:
        X, Y, f = offset_contour(outer, 0.13)
        cs = ax.contour(X, Y, f, levels=[0.0], colors=["#00b8d4"], linewidths=lw(2.6),
                        linestyles=[(0, (3.0, 1.6))], zorder=6)
        cs.set_clip_path(PathPatch(path, transform=ax.transData))
    # redraw the brain edge on top so the halo never blurs the outline
    ax.add_patch(PathPatch(path, facecolor="none", edgecolor=BRAIN_EDGE, lw=lw(3.0), zorder=7))
    return finish(fig)


def icon_ctv_planner():
    """Nested target contours: red GTV, dashed CTV (margin clipped to the brain)."""
    fig, ax = new_canvas()
    path = draw_brain(ax, fill="#eef1f4", zorder=1, details=False)
    clip = PathPatch(path, transform=ax.transData, facecolor="none", edgecolor="none")
    ax.add_patch(clip)
    # midline, subtle
    ax.plot([0.5, 0.5], [0.08, 0.93], color=SULCUS, lw=lw(1.6), zorder=1.1)
    gtv = blob(0.62, 0.58, 0.12, lobes=((3, 0.10, 0.4), (5, 0.05, 1.3)))
    # CTV: uniform margin around the GTV, clipped to the brain -> touches the skull side
    X, Y, f = offset_contour(gtv, 0.17)
    inside_brain = path.contains_points(np.column_stack([X.ravel(), Y.ravel()])).reshape(X.shape)
    fill = np.where((f <= 0) & inside_brain, 1.0, np.nan)
    ctv_fill = ax.contourf(X, Y, np.nan_to_num(fill, nan=0.0), levels=[0.5, 1.5],
                           colors=["#00b8d4"], alpha=0.18, zorder=2)
    ctv_fill.set_clip_path(clip)
    cs = ax.contour(X, Y, f, levels=[0.0], colors=["#0091a7"], linewidths=lw(3.0),
                    linestyles=[(0, (3.2, 1.8))], zorder=3)
    cs.set_clip_path(clip)
    # GTV: filled red with solid edge
    ax.add_patch(PathPatch(closed_path(gtv), facecolor="#e53935", edgecolor="#8e0000",
                           lw=lw(2.4), alpha=0.95, zorder=4))
    ax.add_patch(PathPatch(path, facecolor="none", edgecolor=BRAIN_EDGE, lw=lw(3.0), zorder=5))
    return finish(fig)


ICONS = {
    "DSCPerfusion/Resources/Icons/DSCPerfusion.png": icon_dsc_perfusion,
    "GliomaProgression/Resources/Icons/GliomaProgression.png": icon_glioma_progression,
    "CTVPlanner/Resources/Icons/CTVPlanner.png": icon_ctv_planner,
    # Extension icon: the progression map plus a dashed CTV, i.e. the whole workflow.
    "Resources/Icons/GliomaProgression.png": lambda: icon_glioma_progression(with_ctv=True),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="write into this folder (flat file names) instead of the repository")
    args = parser.parse_args(argv)
    for rel, draw in ICONS.items():
        img = draw()
        if args.out is None:
            dest = REPO / rel
        else:
            dest = args.out / rel.replace("/", "_")
        save(img, dest)
        print(f"wrote {dest} {img.size[0]}x{img.size[1]} {img.mode}")


if __name__ == "__main__":
    main()
