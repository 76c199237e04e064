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

from seqmnist.bench import PlainRNN
from seqmnist.data import MNIST


def accuracy(model: PlainRNN, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    data = MNIST.load(args.data_dir)
    torch.manual_seed(12345)
    model = PlainRNN(200)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = torch.from_numpy(np.random.default_rng([12345, epoch]).permutation(len(data.train_x)))
        for i in range(0, len(order), 100):
            index = order[i : i + 100]
            loss = -torch.log(model(data.train_x[index]).gather(1, data.train_y[index, None])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_acc = accuracy(model, data.train_x, data.train_y)
        val_acc = accuracy(model, data.val_x, data.val_y)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch:>3}/{args.epochs}  train_acc {train_acc:.4f}  val_acc {val_acc:.4f}  {seconds:.1f}s")


if __name__ == "__main__":
    main()
