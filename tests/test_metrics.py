import torch
from torch import nn

from mnist_pipeline.data import Split
from mnist_pipeline.metrics import confusion_matrix, evaluate, misclassified


class Fixed(nn.Module):
    """Predicts class (row sum of the image) % 3 with a large margin."""

    def forward(self, x):
        cls = x.flatten(1).sum(1).round().long() % 3
        return nn.functional.one_hot(cls, 3).float() * 10


def test_confusion_matrix_counts_pairs():
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_evaluate_reports_accuracy_per_class_and_confusion():
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    for i, ones in enumerate([0, 1, 2, 0, 1, 1]):  # predictions 0,1,2,0,1,1
        images[i, 0, :ones] = 255
    labels = torch.tensor([0, 1, 2, 1, 1, 2])
    ev = evaluate(Fixed(), Split(images, labels), 3, batch_size=4)
    assert ev.accuracy == 4 / 6
    assert ev.per_class_accuracy == [1.0, 2 / 3, 0.5]
    assert ev.confusion == [[1, 0, 0], [1, 2, 0], [0, 1, 1]]
    assert ev.predictions.tolist() == [0, 1, 2, 0, 1, 1]
    assert 0 < ev.loss < 10


def test_misclassified_lists_the_first_wrong_images_and_counts_all():
    preds, labels = torch.tensor([0, 1, 2, 0, 1, 1]), torch.tensor([0, 1, 2, 1, 1, 2])
    assert misclassified(preds, labels, 1) == ([{"index": 3, "prediction": 0, "label": 1}], 2)
    assert misclassified(preds, labels, 10)[0][1] == {"index": 5, "prediction": 1, "label": 2}
    assert misclassified(labels, labels, 10) == ([], 0)

