"""The README's Python example runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_loss_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    loss = namespace["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    # A random RN50 starts with nearly collinear embeddings: the loss sits near 2·τ·log(N−1).
    assert abs(loss.item() - 2 * torch.log(torch.tensor(3.0)).item() / 30) < 0.05
