"""The digits example trains: a short run per layer lowers the loss and beats chance widely."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the example needs scikit-learn (the examples extra)")

_path = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
_spec = importlib.util.spec_from_file_location("train_digits", _path)
train_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_digits)


@pytest.mark.parametrize("layer", [name for name in train_digits.LAYERS if name != "none"])
def test_short_training_run_learns(layer):
    data = train_digits.load_digits(seed=0)
    losses, accuracy = train_digits.train(layer, epochs=3, seed=0, data=data)
    assert losses[-1] < 0.7 * losses[0]
    assert accuracy > 0.8  # chance is 0.1
