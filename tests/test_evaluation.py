"""The DreamBench protocol: metrics, identifier removal, the layout reader, end-to-end `evaluate` and the CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffrl.cli import main
from diffrl.evaluation import (
    DreamBenchError,
    EvaluationConfig,
    EvaluationEncoders,
    cosine_matrix,
    evaluate,
    load_dreambench,
    mean_reference_similarity,
    paired_similarity,
    remove_identifier,
)
from diffrl.models import load_sd_components
from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.tiny import build_tiny_dino

# ---------------------------------------------------------------- metrics on hand-made embeddings


def test_identical_embeddings_score_one() -> None:
    x = torch.randn(3, 8)
    assert torch.diagonal(cosine_matrix(x, 3 * x)).tolist() == pytest.approx([1.0] * 3)
    assert mean_reference_similarity(x[:1], torch.cat([x[:1], 5 * x[:1]])).item() == pytest.approx(1.0)
    assert paired_similarity(x, 2 * x).tolist() == pytest.approx([1.0] * 3)


def test_identical_images_score_one_through_dino(tiny_dino: tuple[Path, dict]) -> None:
    weights, kwargs = tiny_dino
    dino = DINOEncoder.from_pretrained(weights=weights, **kwargs)
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = mean_reference_similarity(dino(images[:1]), dino(images[:1].clone()))
        other = mean_reference_similarity(dino(images[:1]), dino(images[1:]))
    assert same.item() == pytest.approx(1.0, abs=1e-6)
    assert other.item() < 1 - 1e-4


def test_orthogonal_embeddings_score_zero() -> None:
    eye = torch.eye(4)
    assert mean_reference_similarity(eye[:1], eye[1:]).item() == 0.0
    assert paired_similarity(eye[:2], eye[2:]).tolist() == [0.0, 0.0]


def test_pairwise_mean_matches_hand_computation() -> None:
    generated = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    references = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cosines: row 0 -> (1, 0, -1); row 1 -> (1/sqrt2, 1/sqrt2, -1/sqrt2)
    expected = [0.0, (1 / math.sqrt(2)) / 3]
    assert mean_reference_similarity(generated, references).tolist() == pytest.approx(expected, abs=1e-12)
    assert paired_similarity(torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])).item() == pytest.approx(24 / 25)


def test_metric_shape_errors() -> None:
    with pytest.raises(ValueError):
        mean_reference_similarity(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError):
        mean_reference_similarity(torch.ones(2, 3), torch.ones(0, 3))
    with pytest.raises(ValueError):
        paired_similarity(torch.ones(2, 3), torch.ones(3, 3))


# ---------------------------------------------------------------- identifier removal


@pytest.mark.parametrize(
    ("prompt", "token", "expected"),
    [
        ("a sks dog", "sks", "a dog"),
        ("a sks dog in the jungle", "sks", "a dog in the jungle"),
        ("a red sks backpack", "sks", "a red backpack"),
        ("sks dog", "sks", "dog"),
        ("a dog, sks", "sks", "a dog"),
        ("a sks, dog.", "sks", "a, dog."),
        ("sks, a dog", "sks", "a dog"),
        ("a  sks   sks dog ", "sks", "a dog"),
        ("a sksy dog with asks", "sks", "a sksy dog with asks"),
        ("a zwx cat", "zwx", "a cat"),
        ("a (sks) toy", "sks", "a () toy"),
    ],
)
def test_remove_identifier(prompt: str, token: str, expected: str) -> None:
    assert remove_identifier(prompt, token) == expected


def test_remove_identifier_rejects_bad_token() -> None:
    with pytest.raises(ValueError):
        remove_identifier("a sks dog", "")


# ---------------------------------------------------------------- DreamBench layout reader


def test_load_dreambench(dreambench_root: Path) -> None:
    subjects = load_dreambench(dreambench_root)
    assert len(subjects) == 30
    assert sum(len(s.image_paths) for s in subjects) == 158
    by_name = {s.name: s for s in subjects}
    assert by_name["bear_plushie"].class_noun == "stuffed animal"
    assert by_name["pink_sunglasses"].class_noun == "glasses"
    assert {s.name for s in subjects if s.live} == {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}
    assert all(len(s.prompts) == 25 and all(" sks " in p for p in s.prompts) for s in subjects)
    dog, teapot = by_name["dog"], by_name["teapot"]
    assert dog.prompts[0] == "a sks dog in the jungle" and dog.prompts[-1] == "a cube shaped sks dog"
    assert "a sks dog wearing a santa hat" in dog.prompts
    assert "a sks teapot floating in an ocean of milk" in teapot.prompts
    assert not any("wearing" in p for p in teapot.prompts)
    assert dog.instance_prompt == "a sks dog"
    assert all(p.parent == dreambench_root / "dog" and p.is_file() for p in dog.image_paths)


def test_load_dreambench_identifier_and_selection(dreambench_root: Path) -> None:
    subjects = load_dreambench(dreambench_root, identifier="zwx", subjects=["vase", "cat"])
    assert [s.name for s in subjects] == ["vase", "cat"]
    assert subjects[1].prompts[0] == "a zwx cat in the jungle"
    with pytest.raises(DreamBenchError, match="Unknown subject"):
        load_dreambench(dreambench_root, subjects=["unicorn"])


def _copy_layout(root: Path, tmp_path: Path, subjects: tuple[str, ...] = ("dog",)) -> Path:
    copy = tmp_path / "bench"
    copy.mkdir()
    text = (root / "prompts_and_classes.txt").read_text()
    classes = text.split("subject_name,class\n", 1)[1].split("\n\n", 1)
    kept = "\n".join(line for line in classes[0].splitlines() if line.split(",")[0] in subjects)
    (copy / "prompts_and_classes.txt").write_text(text.replace(classes[0], kept))
    for name in subjects:
        shutil.copytree(root / name, copy / name)
    return copy


def test_load_dreambench_errors(dreambench_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DreamBenchError, match="does not exist"):
        load_dreambench(tmp_path / "missing")
    with pytest.raises(DreamBenchError, match="prompts_and_classes.txt"):
        load_dreambench(tmp_path)
    copy = _copy_layout(dreambench_root, tmp_path)
    assert [s.name for s in load_dreambench(copy)] == ["dog"]
    prompts_file = copy / "prompts_and_classes.txt"
    good = prompts_file.read_text()

    prompts_file.write_text(good.replace("dog,dog", "dog dog"))
    with pytest.raises(DreamBenchError, match=r"line \d+.*subject_name,class"):
        load_dreambench(copy)
    prompts_file.write_text(good.replace("'a {0} {1} in the snow'.format(unique_token, class_token),", "a dog in the snow"))
    with pytest.raises(DreamBenchError, match=r"line \d+: 'a dog in the snow'"):
        load_dreambench(copy)
    prompts_file.write_text(good.replace("dog,dog", "dog,dog\nghost,ghost"))
    with pytest.raises(DreamBenchError, match="ghost"):
        load_dreambench(copy)
    prompts_file.write_text(good.split("Live Subject Prompts")[0])
    with pytest.raises(DreamBenchError, match="Live Subject Prompts"):
        load_dreambench(copy)


# ---------------------------------------------------------------- end-to-end evaluate on tiny models

CONFIG = EvaluationConfig(images_per_prompt=2, num_inference_steps=1, prompts_per_subject=2, grid_cell=8)


@pytest.fixture(scope="module")
def encoders(tiny_dino: tuple[Path, dict], tiny_clip_path: Path, tmp_path_factory: pytest.TempPathFactory) -> EvaluationEncoders:
    weights, kwargs = tiny_dino
    heldout, _ = build_tiny_dino(tmp_path_factory.mktemp("heldout") / "dino_seed1.safetensors", seed=1)
    return EvaluationEncoders(
        dino=DINOEncoder.from_pretrained(weights=weights, **kwargs),
        clip=CLIPEncoder.from_pretrained(tiny_clip_path),
        heldout_dino=[DINOEncoder.from_pretrained(weights=heldout, **kwargs)],
    )


def test_evaluate_end_to_end(tiny_sd_path: Path, dreambench_root: Path, encoders: EvaluationEncoders, tmp_path: Path) -> None:
    components = load_sd_components(tiny_sd_path)
    subjects = load_dreambench(dreambench_root, subjects=["dog"])
    report = evaluate(components, subjects, encoders, CONFIG, tmp_path / "a")

    metrics = ["DINO", "CLIP-I", "DINO (held-out)", "CLIP-T"]
    data = json.loads((tmp_path / "a" / "report.json").read_text())
    assert data["metrics"] == report.metrics == metrics
    (subject,) = data["subjects"]
    assert subject["name"] == "dog" and subject["num_references"] == 5
    assert [p["prompt"] for p in subject["prompts"]] == ["a sks dog in the jungle", "a sks dog in the snow"]
    assert [p["text"] for p in subject["prompts"]] == ["a dog in the jungle", "a dog in the snow"]
    assert [p["seed"] for p in subject["prompts"]] == [0, 2]
    for metric in metrics:
        values = [v for p in subject["prompts"] for v in p["scores"][metric]]
        assert len(values) == 4 and all(-1 <= v <= 1 for v in values)
        assert subject["means"][metric] == pytest.approx(sum(values) / 4)
        assert data["overall"][metric] == pytest.approx(subject["means"][metric])
    assert data["overall"]["DINO"] != data["overall"]["DINO (held-out)"]  # the held-out encoder is really used

    markdown = (tmp_path / "a" / "report.md").read_text()
    assert "| DINO | CLIP-I | DINO (held-out) | CLIP-T |" in markdown
    assert f"| dog | dog | 4 | {data['overall']['DINO']:.4f} |" in markdown
    with Image.open(tmp_path / "a" / "grids" / "dog.png") as grid:
        assert grid.size == (5 * 8, 3 * 8)  # 5 references wide; references + 2 prompt rows
    assert sorted(p.name for p in (tmp_path / "a" / "images" / "dog").iterdir()) == ["00_0.png", "00_1.png", "01_0.png", "01_1.png"]
    assert not list((tmp_path / "a").rglob("*.tmp"))

    again = evaluate(components, subjects, encoders, CONFIG, tmp_path / "b")  # deterministic
    assert again.to_dict()["subjects"] == data["subjects"]
    assert (tmp_path / "b" / "grids" / "dog.png").read_bytes() == (tmp_path / "a" / "grids" / "dog.png").read_bytes()

    before = (tmp_path / "a" / "report.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate(components, subjects, encoders, CONFIG, tmp_path / "a")
    assert (tmp_path / "a" / "report.json").read_text() == before
    one_prompt = EvaluationConfig(images_per_prompt=2, num_inference_steps=1, prompts_per_subject=1, grid_cell=8)
    replaced = evaluate(components, subjects, encoders, one_prompt, tmp_path / "a", overwrite=True)
    assert len(replaced.subjects[0].prompts) == 1
    for metric, values in replaced.subjects[0].prompts[0].scores.items():  # the seed schedule does not depend on the set
        assert values == pytest.approx(data["subjects"][0]["prompts"][0]["scores"][metric], abs=1e-6)
    assert json.loads((tmp_path / "a" / "report.json").read_text())["config"]["prompts_per_subject"] == 1
    assert sorted(p.name for p in (tmp_path / "a" / "images" / "dog").iterdir()) == ["00_0.png", "00_1.png"]  # no stale files


def test_rescore_scores_saved_images_with_other_encoders(tiny_sd_path: Path, dreambench_root: Path,
                                                        encoders: EvaluationEncoders, tmp_path: Path) -> None:
    from diffrl.evaluation import rescore

    subjects = load_dreambench(dreambench_root, subjects=["dog"])
    original = evaluate(load_sd_components(tiny_sd_path), subjects, encoders, CONFIG, tmp_path / "a")
    again = rescore(tmp_path / "a", subjects, encoders, tmp_path / "same")  # read back from the 8-bit PNGs
    (before,), (after,) = original.subjects, again.subjects
    assert [p.prompt for p in after.prompts] == [p.prompt for p in before.prompts]
    assert [p.seed for p in after.prompts] == [p.seed for p in before.prompts]
    for old, new in zip(before.prompts, after.prompts):
        for metric in original.metrics:
            assert new.scores[metric] == pytest.approx(old.scores[metric], abs=5e-3)
    other = EvaluationEncoders(dino=encoders.heldout_dino[0])  # another evaluator: only its metric, its values
    swapped = rescore(tmp_path / "a", subjects, other, tmp_path / "swapped")
    assert swapped.metrics == ["DINO"]
    assert swapped.overall["DINO"] == pytest.approx(original.overall["DINO (held-out)"], abs=5e-3)
    assert json.loads((tmp_path / "swapped" / "report.json").read_text())["config"]["images_per_prompt"] == 2

    with pytest.raises(FileExistsError, match="overwrite"):
        rescore(tmp_path / "a", subjects, other, tmp_path / "swapped")
    with pytest.raises(ValueError, match="other than"):
        rescore(tmp_path / "a", subjects, other, tmp_path / "a", overwrite=True)
    (tmp_path / "a" / "images" / "dog" / "01_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="01_1.png: only an evaluation made with save_images=True"):
        rescore(tmp_path / "a", subjects, other, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no report.json"):
        rescore(tmp_path / "nothing", subjects, other, tmp_path / "missing")


# ---------------------------------------------------------------- CLI


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--pretrained", "--dreambench", "--subjects", "--dino-weights", "--heldout-dino-weights", "--clip", "--out"):
        assert option in out
    assert "examples:" in out and "diffrl evaluate --pretrained" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "evaluate" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "diffrl.cli", "evaluate", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--heldout-dino-weights" in result.stdout


def test_cli_evaluate(
    tiny_sd_path: Path,
    tiny_dino: tuple[Path, dict],
    tiny_clip_path: Path,
    dreambench_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights, kwargs = tiny_dino
    argv = [
        "evaluate", "--pretrained", str(tiny_sd_path), "--dreambench", str(dreambench_root), "--subject", "cat",
        "--prompts-per-subject", "1", "--images-per-prompt", "1", "--steps", "1", "--dino-weights", str(weights),
        "--dino-arch-json", json.dumps(kwargs), "--clip", str(tiny_clip_path), "--out", str(tmp_path / "out"), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in data["subjects"]] == ["cat"] and data["metrics"] == ["DINO", "CLIP-I", "CLIP-T"]
    assert "| cat | cat | 1 |" in capsys.readouterr().out
    assert main(argv) == 2  # refuses to overwrite
    assert "already holds an evaluation report" in capsys.readouterr().err
    assert main([*argv[:-4], "--dino-arch-json", "{bad", *argv[-4:], "--overwrite"]) == 2
