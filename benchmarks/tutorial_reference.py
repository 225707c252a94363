"""The reference: the training and test loop of W&B's PyTorch tutorial, kept as the tutorial writes it.

DataLoader over torchvision's MNIST with transforms.ToTensor(), shuffle=True, pin_memory=True, num_workers=2;
wandb.watch(model, criterion, log="all", log_freq=10); loss logged every 25 batches with step = examples seen;
then the test pass. The only changes: the seed is an argument, the data root is an argument (MNIST cannot be
downloaded here), the second conv takes kernels[0] input channels (the tutorial hard-codes 16, which is kernels[0]
with its defaults), and the per-log print is dropped (it goes to a terminal nobody reads in a benchmark).
The tutorial's test() also exports ONNX; the copy of the tutorial we compare against stops before that part,
so the reference leaves it out, which only makes the reference faster.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms
import wandb
from tqdm.auto import tqdm

device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def get_data(root, slice=5, train=True):
    full_dataset = torchvision.datasets.MNIST(root=root, train=train, transform=transforms.ToTensor(), download=False)
    return torch.utils.data.Subset(full_dataset, indices=range(0, len(full_dataset), slice))


def make_loader(dataset, batch_size):
    return torch.utils.data.DataLoader(dataset=dataset, batch_size=batch_size, shuffle=True, pin_memory=True,
                                       num_workers=2)


class ConvNet(nn.Module):
    def __init__(self, kernels, classes=10):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, kernels[0], kernel_size=5, stride=1, padding=2), nn.ReLU(),
                                    nn.MaxPool2d(kernel_size=2, stride=2))
        self.layer2 = nn.Sequential(nn.Conv2d(kernels[0], kernels[1], kernel_size=5, stride=1, padding=2), nn.ReLU(),
                                    nn.MaxPool2d(kernel_size=2, stride=2))
        self.fc = nn.Linear(7 * 7 * kernels[-1], classes)

    def forward(self, x):
        out = self.layer1(x)
        out = self.layer2(out)
        out = out.reshape(out.size(0), -1)
        return self.fc(out)


def make(config, root):
    train, test = get_data(root, config.slice, train=True), get_data(root, config.slice, train=False)
    train_loader = make_loader(train, batch_size=config.batch_size)
    test_loader = make_loader(test, batch_size=config.batch_size)
    model = ConvNet(config.kernels, config.classes).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    return model, train_loader, test_loader, criterion, optimizer


def train(model, loader, criterion, optimizer, config):
    wandb.watch(model, criterion, log="all", log_freq=10)
    example_ct = 0
    batch_ct = 0
    for epoch in tqdm(range(config.epochs)):
        for _, (images, labels) in enumerate(loader):
            loss = train_batch(images, labels, model, optimizer, criterion)
            example_ct += len(images)
            batch_ct += 1
            if ((batch_ct + 1) % 25) == 0:
                train_log(loss, example_ct, epoch)
    return example_ct


def train_batch(images, labels, model, optimizer, criterion):
    images, labels = images.to(device), labels.to(device)
    outputs = model(images)
    loss = criterion(outputs, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def train_log(loss, example_ct, epoch):
    wandb.log({"epoch": epoch, "loss": loss}, step=example_ct)


def test(model, test_loader):
    model.eval()
    with torch.no_grad():
        correct, total = 0, 0
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
        wandb.log({"test_accuracy": correct / total})
    return correct / total


def model_pipeline(hyperparameters, root, seed, wandb_dir):
    """Returns (model, accuracy, examples seen, train seconds)."""
    torch.manual_seed(seed)
    with wandb.init(project="pytorch-demo", config=hyperparameters, mode="offline", dir=wandb_dir):
        config = wandb.config
        model, train_loader, test_loader, criterion, optimizer = make(config, root)
        t0 = time.perf_counter()
        examples = train(model, train_loader, criterion, optimizer, config)
        seconds = time.perf_counter() - t0
        accuracy = test(model, test_loader)
    return model, accuracy, examples, seconds


def main(argv=None) -> int:
    """The tutorial as a whole script, cold: `python benchmarks/tutorial_reference.py --root DIR` (DIR/MNIST/raw
    holds the four IDX files, as torchvision's download leaves them). Its defaults are the tutorial's."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--root", required=True, help="torchvision MNIST root (DIR/MNIST/raw/*-ubyte)")
    p.add_argument("--slice", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wandb-dir", default=".")
    a = p.parse_args(argv)
    config = dict(epochs=a.epochs, classes=10, kernels=[16, 32], batch_size=128, learning_rate=0.005, dataset="MNIST",
                  architecture="CNN", slice=a.slice)
    _model, accuracy, examples, seconds = model_pipeline(config, a.root, a.seed, a.wandb_dir)
    print(json.dumps({"test_accuracy": accuracy, "examples": examples, "train_s": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
