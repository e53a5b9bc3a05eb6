"""Train a small NumPy-only network on scikit-learn's handwritten digits, once per norm layer.

    python -m pip install ".[examples]" && python examples/train_digits.py

Network: dense 64->64, a normalization layer (the hidden 64 features viewed as 8 channels x 8
positions), ReLU, dense 64->10, softmax cross-entropy; plain SGD.  Prints the test accuracy of
each layer.
"""

import argparse

import numpy as np

import numbanorm as nn

LAYERS = {
    "none": lambda: None,
    "BatchNorm": lambda: nn.BatchNorm(8, dtype=np.float64),
    "InstanceNorm": lambda: nn.InstanceNorm(8, affine=True, dtype=np.float64),
    "LayerNorm": lambda: nn.LayerNorm((8, 8), dtype=np.float64),
    "GroupNorm": lambda: nn.GroupNorm(4, 8, dtype=np.float64),
    "RMSNorm": lambda: nn.RMSNorm((8, 8), dtype=np.float64),
    "SwitchableNorm": lambda: nn.SwitchableNorm(8, dtype=np.float64),
}


def load_digits(seed=0):
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = data.data.astype(np.float64) / 16.0
    y = data.target
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(0.75 * len(y))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def _softmax_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(len(labels)), labels].mean()
    grad = np.exp(log_p)
    grad[np.arange(len(labels)), labels] -= 1.0
    return loss, grad / len(labels)


class Net:
    def __init__(self, norm, seed=0):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0, np.sqrt(2 / 64), (64, 64))
        self.b1 = np.zeros(64)
        self.w2 = rng.normal(0, np.sqrt(2 / 64), (64, 10))
        self.b2 = np.zeros(10)
        self.norm = norm

    def forward(self, x):
        self.x = x
        h = x @ self.w1 + self.b1
        if self.norm is not None:
            h = self.norm(h.reshape(-1, 8, 8)).reshape(-1, 64)
        self.h = h
        self.a = np.maximum(h, 0)
        return self.a @ self.w2 + self.b2

    def backward_and_step(self, grad_logits, lr):
        grad_w2, grad_b2 = self.a.T @ grad_logits, grad_logits.sum(axis=0)
        grad_h = (grad_logits @ self.w2.T) * (self.h > 0)
        if self.norm is not None:
            grad_h = self.norm.backward(grad_h.reshape(-1, 8, 8)).reshape(-1, 64)
            for name, param in self.norm.params.items():
                param -= lr * self.norm.grads[name]
        self.w1 -= lr * (self.x.T @ grad_h)
        self.b1 -= lr * grad_h.sum(axis=0)
        self.w2 -= lr * grad_w2
        self.b2 -= lr * grad_b2


def train(layer="BatchNorm", epochs=15, batch=32, lr=0.1, seed=0, data=None):
    """Train one network; returns (per-epoch mean training losses, test accuracy)."""
    (x_train, y_train), (x_test, y_test) = data or load_digits(seed)
    net = Net(LAYERS[layer](), seed)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        if net.norm is not None:
            net.norm.train()
        order = rng.permutation(len(y_train))
        epoch_losses = []
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            loss, grad = _softmax_cross_entropy(net.forward(x_train[idx]), y_train[idx])
            net.backward_and_step(grad, lr)
            epoch_losses.append(loss)
        losses.append(float(np.mean(epoch_losses)))
    if net.norm is not None:
        net.norm.eval()
    accuracy = float((net.forward(x_test).argmax(axis=1) == y_test).mean())
    return losses, accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load_digits(args.seed)
    print("| layer | final training loss | test accuracy |\n|---|---|---|")
    for layer in LAYERS:
        losses, accuracy = train(layer, args.epochs, seed=args.seed, data=data)
        print(f"| {layer} | {losses[-1]:.4f} | {accuracy:.3f} |")


if __name__ == "__main__":
    main()
