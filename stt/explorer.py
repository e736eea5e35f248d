"""An interactive correspondence explorer for JupyterLab (ipywidgets), with static fallbacks.

Pick a DAVIS sequence, a reference frame, a query frame and a query pixel: see the query
pixel's affinity over the reference frame for two models side by side; scrub the propagated
masks of those models through the sequence. Under papermill or CI (``interactive=False``) the
same drawing functions produce static figures instead of widgets.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from .datasets import DAVIS, resize_short_side, to_tensor
from .features import build_feature_model
from .propagation import normalize_features
from .viz import overlay


class CorrespondenceExplorer:
    """Two models' affinities and propagated masks on one DAVIS split.

    Args:
        davis_root: a DAVIS folder.
        models: {label: model spec} (a name such as ``random-r18`` or a checkpoint path); two are shown.
        prediction_dirs: {label: folder holding ``<seq>/%05d.png`` predictions} (``stt evaluate``'s
            ``predictions``), for the mask scrubber; optional.
        short_side: resolution of the feature computation.
    """

    def __init__(self, davis_root, models: dict, prediction_dirs: dict | None = None, short_side: int = 240):
        self.ds = DAVIS(davis_root)
        self.labels = list(models)
        self.models = {k: build_feature_model(v)[0] for k, v in models.items()}
        self.pred_dirs = {k: Path(v) for k, v in (prediction_dirs or {}).items()}
        self.short_side = short_side
        self._cache: dict = {}

    def _sequence(self, name: str):
        if name not in self._cache:
            frames, gt = self.ds.load(name)
            self._cache = {name: (frames, gt, {})}  # one sequence at a time keeps memory small
        return self._cache[name]

    def _features(self, name: str, label: str, t: int) -> torch.Tensor:
        frames, _, feats = self._sequence(name)
        key = (label, t)
        if key not in feats:
            x = resize_short_side(to_tensor(frames[t : t + 1]), self.short_side, self.models[label].stride)
            with torch.no_grad():
                feats[key] = normalize_features(self.models[label](x))[0]
        return feats[key]

    def affinity_figure(self, name: str, t_ref: int, t_query: int, y: float, x: float, temperature: float = 0.07):
        """The query pixel (fractions y, x of the frame) in frame ``t_query`` and, per model, the softmax
        of its affinity over every cell of frame ``t_ref`` (with temperature ``temperature``)."""
        frames, gt, _ = self._sequence(name)
        fig, axes = plt.subplots(1, 1 + len(self.labels), figsize=(4.2 * (1 + len(self.labels)), 3))
        H, W = frames.shape[1:3]
        axes[0].imshow(overlay(frames[t_query], gt[t_query], alpha=0.3))
        axes[0].scatter([x * W], [y * H], c="red", s=60, marker="x")
        axes[0].set_title(f"{name}: query in frame {t_query}", fontsize=9)
        for ax, label in zip(axes[1:], self.labels):
            fq, fr = self._features(name, label, t_query), self._features(name, label, t_ref)
            h, w = fq.shape[-2:]
            qy, qx = min(h - 1, int(y * h)), min(w - 1, int(x * w))
            aff = torch.softmax(torch.einsum("c,chw->hw", fq[:, qy, qx], fr).flatten() / temperature, 0).view(h, w)
            up = torch.nn.functional.interpolate(aff[None, None], size=(H, W), mode="bilinear")[0, 0]
            ax.imshow(frames[t_ref])
            ax.imshow(up, cmap="magma", alpha=0.6)
            py, px = np.unravel_index(int(aff.argmax()), (h, w))
            ax.scatter([(px + 0.5) * W / w], [(py + 0.5) * H / h], c="cyan", s=40, marker="+")
            ax.set_title(f"{label}: affinity over frame {t_ref} (+: best match)", fontsize=9)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        return fig

    def masks_figure(self, name: str, t: int):
        """Ground truth and each model's propagated mask at frame ``t``."""
        frames, gt, _ = self._sequence(name)
        labels = [k for k in self.labels if k in self.pred_dirs]
        fig, axes = plt.subplots(1, 1 + len(labels), figsize=(4.2 * (1 + len(labels)), 3))
        axes = np.atleast_1d(axes)
        axes[0].imshow(overlay(frames[t], gt[t]))
        axes[0].set_title(f"{name} frame {t}: ground truth", fontsize=9)
        for ax, label in zip(axes[1:], labels):
            png = self.pred_dirs[label] / name / f"{t:05d}.png"
            pred = np.array(Image.open(png)) if png.is_file() else np.zeros_like(gt[t])
            ax.imshow(overlay(frames[t], pred))
            ax.set_title(f"{label}" + ("" if png.is_file() else " (no prediction)"), fontsize=9)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        return fig

    def widget(self):
        """The interactive explorer (JupyterLab): sliders redraw the two figures."""
        import ipywidgets as W
        from IPython.display import display

        seq = W.Dropdown(options=self.ds.names, description="sequence")
        n = len(self._sequence(self.ds.names[0])[0])
        t_ref = W.IntSlider(0, 0, n - 1, description="reference")
        t_q = W.IntSlider(min(5, n - 1), 0, n - 1, description="query frame")
        qy = W.FloatSlider(0.5, min=0, max=0.999, step=0.01, description="query y")
        qx = W.FloatSlider(0.5, min=0, max=0.999, step=0.01, description="query x")
        scrub = W.IntSlider(0, 0, n - 1, description="mask frame", layout=W.Layout(width="60%"))
        out_aff, out_mask = W.Output(), W.Output()

        def on_seq(change):
            m = len(self._sequence(seq.value)[0]) - 1
            for s in (t_ref, t_q, scrub):
                s.max = m
                s.value = min(s.value, m)
            draw_aff()
            draw_mask()

        def draw_aff(*_):
            with out_aff:
                out_aff.clear_output(wait=True)
                display(self.affinity_figure(seq.value, t_ref.value, t_q.value, qy.value, qx.value))
                plt.close("all")

        def draw_mask(*_):
            with out_mask:
                out_mask.clear_output(wait=True)
                display(self.masks_figure(seq.value, scrub.value))
                plt.close("all")

        seq.observe(on_seq, "value")
        for s in (t_ref, t_q, qy, qx):
            s.observe(draw_aff, "value")
        scrub.observe(draw_mask, "value")
        draw_aff()
        draw_mask()
        return W.VBox([W.HBox([seq, t_ref, t_q]), W.HBox([qy, qx]), out_aff, scrub, out_mask])
