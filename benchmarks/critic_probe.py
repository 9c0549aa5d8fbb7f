"""Does DPG's critic learn? Train DPG on the emoji zoo with the DINO reward at the library's defaults, then score its
critic on held-out transitions per timestep band.

    python benchmarks/critic_probe.py --json runs/critic_probe.json          # the acceptance run (zoo, guide_dog)
    python benchmarks/critic_probe.py --tiny --steps 4 --json /tmp/probe.json  # tiny RANDOM models: a smoke run

The run is `diffrl.training.Trainer` with ``method="dpg"``, ``rewards={"dino": 1}`` and every critic setting at its
default (`diffrl.objectives.DPGConfig`); only the steps, the actor's learning rate (the paper table's) and the subject
are set here. After training, ``--heldout-states`` new noised states of the subject's images (a generator of their own,
uniform over the schedule) are collected with the final policy, and for each timestep band of the critic:

- ``r2``: R^2 of Q against the TD targets on those transitions (`critic_diagnostics.band_fit`), in the band's units;
- ``grad_cosine``: median over states of cos(d Q / d a, d r / d a) at a = mu(s), r the exact DINO reward;
- ``lookforward_cosine``: the same cosine for -||x0_hat - x0||^2 in place of Q (what the authors' critic reduces to),
  a reference point that needs no learning;
- ``pair_r2``, ``regression_r2``, ``target_std``, ``rmse``, ``pair_std`` (`critic_diagnostics.band_fit`): how well
  Q ranks the actions of one state, how well the critic network fits its own target (with the default
  ``critic_form="reward_value"``: the reward alone, while ``r2`` also scores the value of the next state), and the
  spreads behind R^2.

The JSON's headline ``grad_cosine`` and ``r2`` are medians over the bands in [300, 900) (acceptance: both >= 0.5),
next to ``actor_grad_ratio`` (||d lam w Q / d theta|| / ||d eps-MSE / d theta||), the per-band figures, the budget and
the wall time; ``target`` holds the same figures for the target critic (the Polyak average of the trained one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.objectives import critic_diagnostics  # noqa: E402
from diffrl.rewards import look_forward  # noqa: E402
from diffrl.training import TrainConfig  # noqa: E402
from diffrl.training.trainer import Trainer  # noqa: E402

HEADLINE_BANDS = range(3, 9)  # t in [300, 900) with the critic's 10 bands of 100 timesteps


@dataclass
class ProbeConfig:
    """Attributes:
    json: where to write the result.
    subject: zoo subject.
    steps: DPG actor steps before the probe.
    lr_actor: the actor's learning rate (the paper table's).
    heldout_states: noised states collected for the held-out scores.
    seed: training seed (the held-out states use another).
    threads: torch threads.
    tiny: tiny random models instead of the zoo (a smoke run; meaningless numbers).
    overrides: ``TrainConfig`` fields to change for an ablation, e.g. ``{"gamma": 0.9}`` (CLI: ``--set gamma=0.9``).
    """

    json: Path
    subject: str = "guide_dog"
    steps: int = 200
    lr_actor: float = 1e-4
    heldout_states: int = 512
    seed: int = 0
    threads: int = 2
    tiny: bool = False
    overrides: dict = field(default_factory=dict)


def train_config(probe: ProbeConfig, output_dir: Path) -> TrainConfig:
    """The DPG run: zoo (or tiny) models, the DINO reward, the library's critic defaults."""
    if probe.tiny:
        from diffrl.models.tiny import build_tiny_dino, build_tiny_sd
        from diffrl.zoo.registry import SUBJECTS_ROOT

        dino, kwargs = build_tiny_dino(output_dir / "tiny" / "dino.safetensors")
        models = dict(pretrained=str(build_tiny_sd(output_dir / "tiny" / "sd")), dino_weights=str(dino),
                      dino_kwargs=kwargs, instance_dir=str(SUBJECTS_ROOT / probe.subject))
    else:
        from diffrl.zoo.registry import SUBJECTS_ROOT, load

        zoo = load("emoji")
        models = dict(pretrained=str(zoo.sd), dino_weights=str(zoo.dino.file), dino_arch=zoo.dino.model_name,
                      dino_kwargs={k: v for k, v in zoo.dino.kwargs.items() if k != "num_classes"},
                      instance_dir=str(SUBJECTS_ROOT / probe.subject))
    from diffrl.zoo import SUBJECTS

    noun = next(glyph.noun for glyph in SUBJECTS if glyph.name == probe.subject)
    settings = dict(
        **models, instance_prompt=f"a sks {noun}", output_dir=str(output_dir / "run"), method="dpg",
        rewards={"dino": 1.0}, max_steps=probe.steps, lr_actor=probe.lr_actor, seed=probe.seed, diagnose_every=0,
    )
    return TrainConfig(**{**settings, **probe.overrides})


def heldout(trainer: Trainer, probe: ProbeConfig) -> dict:
    """Per-band R^2, gradient cosines (critic and look-forward) and the actor-gradient ratio on new states, for the
    trained critic and (under ``"target"``) for its Polyak average, the target critic."""
    loss = trainer.loss
    generator = torch.Generator(device=trainer.accelerator.device).manual_seed(probe.seed + 10_000)
    rounds = -(-probe.heldout_states // loss.env.batch_size[0])
    data = []
    for index in range(rounds):
        state = loss.transitions.noised_states(trainer.collector.collect(index), generator)
        data.append((state, loss.transitions.collect(state, generator)))
    result = score_critic(loss, data)
    names = ["critic"] + ([] if loss.value_network is None else ["value_network"])
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(swapped(getattr(loss, f"{name}_params"), getattr(loss, f"target_{name}_params")))
        result["target"] = {k: v for k, v in score_critic(loss, data).items() if k != "actor_grad_ratio"}
    return result


@contextlib.contextmanager
def swapped(params, other):
    """``params`` hold the values of ``other`` inside the block (restored after)."""
    saved = params.detach().clone()
    with torch.no_grad():
        params.update_(other.detach())
    try:
        yield
    finally:
        with torch.no_grad():
            params.update_(saved)


def score_critic(loss, data: list) -> dict:
    """The probe's figures of the critic in ``loss.critic_params`` on held-out ``(state, group)`` pairs."""
    per_band: dict[int, dict[str, list[float]]] = {}
    ratios = []
    pooled = torch.cat([group for _, group in data])  # R^2 and spreads over all held-out states of a band at once
    for band, fit in critic_diagnostics.band_fit(loss, pooled).items():
        per_band.setdefault(band, {}).update({key: [value] for key, value in fit.items()})
    for index, (state, _) in enumerate(data):
        grad_q, grad_r = critic_diagnostics.action_gradients(loss, state)
        action = state["action"].detach().clone().requires_grad_(True)
        abar = loss.env.schedule.abar(state["timestep"])
        error = -(look_forward(state["latents"], action, abar) - state["x0"]).pow(2).sum()
        (grad_lookforward,) = torch.autograd.grad(error, action)
        cosine = torch.nn.functional.cosine_similarity
        critic_cos = cosine(grad_q.flatten(1), grad_r.flatten(1), dim=1)
        if loss.value_network is not None:  # the reward model's own gradient, without V(s'(s, a))
            grad_model = critic_diagnostics.reward_model_gradient(loss, state)
            for i, band in enumerate(loss.critic.band(state["timestep"]).tolist()):
                cos_model = cosine(grad_model.flatten(1), grad_r.flatten(1), dim=1)
                per_band.setdefault(band, {}).setdefault("reward_model_cosine", []).append(float(cos_model[i]))
        lookforward_cos = cosine(grad_lookforward.flatten(1), grad_r.flatten(1), dim=1)
        for i, band in enumerate(loss.critic.band(state["timestep"]).tolist()):
            per_band.setdefault(band, {}).setdefault("grad_cosine", []).append(float(critic_cos[i]))
            per_band[band].setdefault("lookforward_cosine", []).append(float(lookforward_cos[i]))
        if index < 4:
            ratios.append(critic_diagnostics.actor_gradient_ratio(loss, state))
    bands = {
        band: {"r2": statistics.fmean(v.get("r2", [float("nan")])),
               "grad_cosine": statistics.median(v["grad_cosine"]),
               "lookforward_cosine": statistics.median(v["lookforward_cosine"]), "states": len(v["grad_cosine"]),
               **({"reward_model_cosine": statistics.median(v["reward_model_cosine"])} if "reward_model_cosine" in v else {}),
               **{key: statistics.fmean(v[key]) for key in ("regression_r2", "target_std", "rmse", "pair_std", "pair_r2")
                  if key in v}}
        for band, v in sorted(per_band.items())
    }
    headline = [bands[b] for b in HEADLINE_BANDS if b in bands]
    return {
        "grad_cosine": statistics.median(b["grad_cosine"] for b in headline),
        "r2": statistics.median(b["r2"] for b in headline),
        "lookforward_cosine": statistics.median(b["lookforward_cosine"] for b in headline),
        "pair_r2": statistics.median(b.get("pair_r2", float("nan")) for b in headline),
        "regression_r2": statistics.median(b.get("regression_r2", float("nan")) for b in headline),
        "reward_model_cosine": statistics.median(b.get("reward_model_cosine", float("nan")) for b in headline),
        "actor_grad_ratio": statistics.median(ratios),
        "bands": bands,
    }


def run(probe: ProbeConfig) -> dict:
    torch.set_num_threads(probe.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="critic-probe-") as tmp:
        config = train_config(probe, Path(tmp))
        trainer = Trainer(config)
        history = []
        while trainer.step < config.max_steps:
            history.append(trainer.train_step())
        trained = time.perf_counter() - start
        result = heldout(trainer, probe)
        trainer.run_dir.release()
    result.update(
        passed=bool(result["grad_cosine"] >= 0.5 and result["r2"] >= 0.5),
        train_s=round(trained, 1),
        wall_s=round(time.perf_counter() - start, 1),
        final_train_logs={k: v for k, v in history[-1].items()},
        probe=json.loads(json.dumps(asdict(probe), default=str)),
        dpg=asdict(trainer.loss.config),
        critic_states=config.critic_states,
    )
    atomic_write_text(probe.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("grad_cosine", "r2", "lookforward_cosine", "actor_grad_ratio", "passed",
                                             "train_s", "wall_s")}, indent=2))
    print(f"target (Polyak-averaged) critic: grad_cosine {result['target']['grad_cosine']:+.3f}  r2 "
          f"{result['target']['r2']:+.3f}")
    for band, scores in result["bands"].items():
        print(f"band {band}: t in [{band * 100}, {band * 100 + 100}): r2 {scores['r2']:+.3f}  grad_cosine "
              f"{scores['grad_cosine']:+.3f}  lookforward_cosine {scores['lookforward_cosine']:+.3f}  pair_r2 "
              f"{scores.get('pair_r2', float('nan')):+.3f}  regression_r2 {scores.get('regression_r2', float('nan')):+.3f}  target std {scores.get('target_std', float('nan')):.4f} "
              f"rmse {scores.get('rmse', float('nan')):.4f}  pair std {scores.get('pair_std', float('nan')):.4f}  "
              f"({scores['states']} states)")
    return result


def parse_args(argv: list[str] | None = None) -> ProbeConfig:
    defaults = ProbeConfig(json=Path("runs/critic_probe.json"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(defaults).items():
        flag = f"--{name.replace('_', '-')}"
        if name == "overrides":
            parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                                help="a TrainConfig field to change (repeatable; the value is read as JSON)")
        elif isinstance(value, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"default: {value}")
    args = vars(parser.parse_args(argv))
    args["overrides"] = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args["overrides"])}
    return ProbeConfig(**args)


if __name__ == "__main__":
    run(parse_args())
