"""SGD vs SAM vs F-SAM in JAX (flax nnx + optax) on real Fashion-MNIST with noisy training labels.

    pip install 'friendly-sam[jax]'
    python examples/jax_fashion_mnist.py                        # 60k images, 40 % label noise, 10 epochs
    python examples/jax_fashion_mnist.py --train-size 2000 --epochs 2 --noise 0.2   # seconds

A small MLP (784-256-256-10 by default) trained with a jit-compiled step per optimizer; F-SAM and SAM are
``friendly_sam.jax.fsam`` / ``sam`` over the same base (SGD, momentum 0.9, weight decay), driven through
optax.contrib.sam's one-call protocol (``update(..., grad_fn=...)``). Symmetric label noise: exactly
``round(noise * N)`` training labels replaced by one of the *other* nine classes (as ``friendly_sam.data``);
test labels stay clean. Data: the gzipped IDX files in ``--data`` (Debian: dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from friendly_sam.jax import fsam, sam

DATA = Path("/usr/share/datasets/fashion-mnist")
OPTIMIZERS = ("sgd", "sam", "fsam")


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (unsigned bytes) as a numpy array, its size checked against its header."""
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[:3] != b"\0\0\x08" or data[3] == 0:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise ValueError(f"{path}: truncated or oversized IDX file (header says shape {dims})")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")[:size]
    labels = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz")[:size]
    return (images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.2860) / 0.3530, labels.astype(
        np.int32
    )


def symmetric_noise(labels: np.ndarray, rate: float, seed: int, classes: int = 10) -> np.ndarray:
    """Exactly ``round(rate * N)`` labels, chosen at random, replaced by a random *other* class."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    chosen = rng.choice(len(labels), size=int(np.floor(rate * len(labels) + 0.5)), replace=False)
    noisy[chosen] = (labels[chosen] + rng.integers(1, classes, size=len(chosen))) % classes
    return noisy


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 256) -> None:
        self.hidden1 = nnx.Linear(784, width, rngs=rngs)
        self.hidden2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden2(jax.nn.relu(self.hidden1(x)))))


def make_optimizer(name: str, args: argparse.Namespace) -> optax.GradientTransformationExtraArgs:
    base = optax.chain(optax.add_decayed_weights(args.weight_decay), optax.sgd(args.lr, momentum=0.9))
    if name == "sam":
        return sam(base, rho=args.rho)
    if name == "fsam":
        return fsam(base, rho=args.rho, sigma=args.sigma, lmbda=args.lmbda)
    return optax.with_extra_args_support(base)


def train_one(name: str, seed: int, data: dict, args: argparse.Namespace) -> dict:
    """Train the MLP with one optimizer and seed; its clean test accuracy."""
    graphdef, params = nnx.split(MLP(nnx.Rngs(seed), args.width))
    tx = make_optimizer(name, args)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()

    @jax.jit
    def step(p, state, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, state = tx.update(g, state, p, grad_fn=lambda q, _: jax.grad(loss_fn)(q, x, y))
        return optax.apply_updates(p, updates), state, loss

    @jax.jit
    def correct(p, x, y):
        return jnp.sum(jnp.argmax(nnx.merge(graphdef, p)(x), -1) == y)

    x_train, y_train = data["train"]
    state, rng, start = tx.init(params), np.random.default_rng(seed), time.perf_counter()
    steps_per_epoch = len(x_train) // args.batch_size
    for _ in range(args.epochs):
        order = rng.permutation(len(x_train))[: steps_per_epoch * args.batch_size].reshape(
            steps_per_epoch, -1
        )
        for rows in order:
            params, state, loss = step(params, state, x_train[rows], y_train[rows])
    x_test, y_test = data["test"]
    hits = sum(
        int(correct(params, x_test[i : i + 1000], y_test[i : i + 1000])) for i in range(0, len(x_test), 1000)
    )
    return {
        "optimizer": name,
        "seed": seed,
        "test_accuracy": hits / len(x_test),
        "last_loss": float(loss),
        "seconds": time.perf_counter() - start,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the gzipped IDX files")
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--noise", type=float, default=0.4, help="fraction of wrong training labels")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=256, help="hidden units per layer")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--rho", type=float, default=0.1, help="SAM and F-SAM neighbourhood radius")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--lmbda", type=float, default=0.6)
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if not (0.0 <= args.noise < 0.9):
        parser.error(f"--noise {args.noise}: use a fraction in [0, 0.9)")
    if args.train_size < args.batch_size:
        parser.error(f"--train-size {args.train_size} is smaller than one batch ({args.batch_size})")
    missing = [p.name for p in (args.data / "train-images-idx3-ubyte.gz",) if not p.exists()]
    if missing:
        parser.error(
            f"no Fashion-MNIST in {args.data} ({missing[0]} missing): apt-get install dataset-fashion-mnist"
        )
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    x_train, y_train = load(args.data, "train", args.train_size)
    data = {"test": load(args.data, "t10k", args.test_size)}
    results = []
    for seed in args.seeds:
        data["train"] = (x_train, symmetric_noise(y_train, args.noise, seed))
        for name in args.optimizers:  # interleaved by seed, so a busy machine hurts all alike
            results.append(train_one(name, seed, data, args))
            r = results[-1]
            print(
                f"{name:5s} seed {seed}: test accuracy {r['test_accuracy']:.4f}  ({r['seconds']:.1f} s)",
                flush=True,
            )
    summary = {
        name: {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "seeds": len(accs),
        }
        for name in args.optimizers
        for accs in [[r["test_accuracy"] for r in results if r["optimizer"] == name]]
    }
    for name, s in summary.items():
        print(
            f"{name:5s} test accuracy {100 * s['mean']:.2f} ± {100 * s['std']:.2f} % over {s['seeds']} seed(s)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "summary": summary},
                indent=1,
            )
        )
    return results


if __name__ == "__main__":
    main()
