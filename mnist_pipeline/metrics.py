"""Evaluation of a classifier on a split: loss, accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mnist_pipeline.config import INFERENCE_BATCH
from mnist_pipeline.data import Split, to_float


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    predictions: torch.Tensor  # int64 [N]
    count: int
    logits: torch.Tensor  # float32 [N, classes], on CPU

    def summary(self) -> dict:
        """The JSON view: a class absent from the test split has no accuracy (null; NaN is not JSON)."""
        per_class = [None if math.isnan(a) else a for a in self.per_class_accuracy]
        return {"test_loss": self.loss, "test_accuracy": self.accuracy, "test_count": self.count,
                "per_class_accuracy": per_class, "confusion_matrix": self.confusion}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = INFERENCE_BATCH,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for uint8 images [N, 28, 28], in batches, on CPU at the end.

    Runs in the channels_last layout: oneDNN's NCHW inference path is several times slower on CPU here."""
    model.eval().to(memory_format=torch.channels_last)
    out = [model(to_float(images[i : i + batch_size]).to(device).contiguous(memory_format=torch.channels_last)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def evaluate(model: nn.Module, split: Split, classes: int, batch_size: int = INFERENCE_BATCH,
             device: torch.device | str = "cpu") -> Evaluation:
    logits = predict_logits(model, split.images, batch_size, device)
    labels = split.labels
    loss = nn.functional.cross_entropy(logits, labels).item()
    preds = logits.argmax(1)
    cm = confusion_matrix(labels, preds, classes)
    support = cm.sum(1)
    per_class = [int(cm[c, c]) / int(support[c]) if support[c] else float("nan") for c in range(classes)]
    return Evaluation(loss=loss, accuracy=int((preds == labels).sum()) / len(labels), per_class_accuracy=per_class,
                      confusion=cm.tolist(), predictions=preds, count=len(labels), logits=logits)


def misclassified(predictions: torch.Tensor, labels: torch.Tensor, limit: int) -> tuple[list[dict], int]:
    """The first `limit` misclassified images as {index, prediction, label} (index into the split), and how many
    there are in all."""
    wrong = (predictions != labels).nonzero().flatten()
    return ([{"index": int(i), "prediction": int(predictions[i]), "label": int(labels[i])} for i in wrong[:limit]],
            len(wrong))
