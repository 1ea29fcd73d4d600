"""Segmentation metrics (mIoU, mAcc, aAcc) from a confusion matrix, as a table and a figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.table import Table
from torch import Tensor
from torchmetrics import Metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class SegmentationMetrics(Metric):
    """Confusion-matrix metrics in the mmseg convention.

    IoU_k = TP / (TP + FP + FN) and Acc_k = TP / (TP + FN) per class; mIoU and mAcc are the
    nan-means, so a class absent from both prediction and ground truth (IoU NaN) or from the
    ground truth (Acc NaN) does not count, while a class that is only predicted scores IoU 0.
    aAcc is the pixel accuracy. The only state is the (K, K) confusion matrix, summed across
    processes, so the metrics are exact under DDP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: ground truth, columns: prediction
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds: class map (B, H, W) or logits/probabilities (B, K, H, W); target: (B, H, W)."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds shape {tuple(preds.shape)} does not match target shape "
                f"{tuple(target.shape)}; expected (B, H, W) class maps or (B, K, H, W) logits"
            )
        valid = target != self.ignore_index
        preds, target = preds[valid].long(), target[valid].long()
        k = self.num_classes
        for name, labels in (("target", target), ("preds", preds)):
            bad = labels[(labels < 0) | (labels >= k)]
            if bad.numel():
                raise ValueError(
                    f"{name} contains class {bad[0].item()}, outside [0, {k}) and not "
                    f"ignore_index={self.ignore_index}"
                )
        # one pass over the pixels: each (gt, pred) pair is a bin of the flattened matrix
        self.confmat += torch.bincount(target * k + preds, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, Tensor]:
        cm = self.confmat.float()
        tp = cm.diagonal()
        gt, pred = cm.sum(1), cm.sum(0)
        iou = tp / (gt + pred - tp)  # 0 / 0 = NaN for classes absent from both
        acc = tp / gt  # NaN for classes absent from the ground truth
        return {
            "mIoU": iou.nanmean(),
            "mAcc": acc.nanmean(),
            "aAcc": tp.sum() / cm.sum(),
            "IoU": iou,
            "Acc": acc,
            "confmat": self.confmat.clone(),
        }


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def metrics_table(
    results: dict[str, Tensor], class_names: Sequence[str], title: str = "Segmentation metrics"
) -> Table:
    """Per-class IoU and Acc in %, "-" for absent classes, mean row and aAcc in the caption."""
    ious, accs = results["IoU"].tolist(), results["Acc"].tolist()
    if len(class_names) != len(ious):
        raise ValueError(f"got {len(class_names)} class names for {len(ious)} classes")
    table = Table(title=title, caption=f"aAcc {_percent(float(results['aAcc']))}")
    table.add_column("Class")
    table.add_column("IoU (%)", justify="right")
    table.add_column("Acc (%)", justify="right")
    for name, iou, acc in zip(class_names, ious, accs, strict=True):
        table.add_row(name, _percent(iou), _percent(acc))
    table.add_section()
    table.add_row(
        "mean", _percent(float(results["mIoU"])), _percent(float(results["mAcc"])), style="bold"
    )
    return table


def confusion_matrix_figure(confmat: Tensor, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (row k: where the pixels of class k went)."""
    # imported here: only evaluation draws figures, and Figure renders with Agg without pyplot,
    # so no global backend is changed
    from matplotlib.figure import Figure

    k = len(class_names)
    cm = confmat.double().cpu()
    cm = (cm / cm.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = min(max(6.0, 0.5 * k), 40.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize="small")
    ax.set_yticks(range(k), class_names, fontsize="small")
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 20:  # cell values stay legible only for few classes
        for i in range(k):
            for j in range(k):
                color = "white" if cm[i, j] > 0.5 else "black"
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", color=color, size=7)
    return fig


def save_confusion_matrix_png(
    confmat: Tensor, class_names: Sequence[str], path: str | Path, dpi: int = 100
) -> Path:
    """Write the row-normalised confusion matrix to ``path`` (PNG); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confusion_matrix_figure(confmat, class_names).savefig(path, dpi=dpi)
    return path
