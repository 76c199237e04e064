"""The seed's recipe written the plain PyTorch way, as a whole program: the baseline of bench/epoch.py.

nn.RNN without bias, a Linear readout, the averaged softmax, autograd, SGD with
lr 0.01 and batch 100; after each epoch, accuracy on the whole training and
validation sets, each as a single tensor. Usage:

    python bench/plain_pytorch.py --epochs 2
"""

import argparse
import time

import numpy as np
import torch

from seqmnist.bench import PlainRNN, our_model
from seqmnist.data import MNIST
from seqmnist.model import ModelSpec
from seqmnist.readouts import MeanSoftmax

READOUT = MeanSoftmax()


def accuracy(model: PlainRNN, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (READOUT.scores(model(x)).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    data = MNIST.load(args.data_dir)
    train_x, val_x = (images.float() / 256 for images in (data.train_x, data.val_x))  # as mnist.pkl.gz
    model = PlainRNN(our_model(ModelSpec()))  # the seed's model (no bias) as nn.RNN and nn.Linear
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = torch.from_numpy(np.random.default_rng([12345, epoch]).permutation(len(train_x)))
        for i in range(0, len(order), 100):
            index = order[i : i + 100]
            loss = READOUT.loss(model(train_x[index]), data.train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_acc = accuracy(model, train_x, data.train_y)
        val_acc = accuracy(model, val_x, data.val_y)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch:>3}/{args.epochs}  train_acc {train_acc:.4f}  val_acc {val_acc:.4f}  {seconds:.1f}s")


if __name__ == "__main__":
    main()
