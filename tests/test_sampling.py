"""`diffrl.sampling` and the ``diffrl sample`` command."""

from __future__ import annotations

import torch
from PIL import Image

from diffrl.cli import main
from diffrl.models import load_sd_components
from diffrl.sampling import generate


def test_generate_is_seeded(tiny_sd_path):
    components = load_sd_components(tiny_sd_path)
    first = generate(components, ["a dog", "a cat"], num_inference_steps=3, seed=1)
    again = generate(components, ["a dog", "a cat"], num_inference_steps=3, seed=1)
    other = generate(components, ["a dog", "a cat"], num_inference_steps=3, seed=2)
    assert first.shape == (2, 3, 16, 16) and 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-3


def test_sample_command_writes_images_and_refuses_to_overwrite(tiny_sd_path, tmp_path, capsys):
    out = tmp_path / "samples"
    argv = ["sample", "--pretrained", str(tiny_sd_path), "--prompt", "a sks dog", "--num-images", "2", "--steps", "2", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "grid.png"]
    assert Image.open(out / "00.png").size == (16, 16)
    before = (out / "00.png").read_bytes()
    assert main([*argv, "--seed", "5"]) == 2
    assert "already exists" in capsys.readouterr().out
    assert (out / "00.png").read_bytes() == before
    assert main([*argv, "--seed", "5", "--overwrite"]) == 0
    assert (out / "00.png").read_bytes() != before
