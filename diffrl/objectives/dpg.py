"""Deterministic policy gradients for personalisation (arXiv 2407.06642): a critic Q_phi and a DreamBooth actor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from torch import Tensor, nn
from torchrl.objectives import SoftUpdate

from diffrl.agents.actor import UNetActor
from diffrl.agents.critic import QCritic
from diffrl.collectors.critic import (
    DPG_INPUT_KEYS,
    CriticTransitionCollector,
    CriticTransitionConfig,
)
from diffrl.envs.denoising import DenoisingEnv
from diffrl.forward_process import look_forward
from diffrl.objectives.base import (
    DiffusionLoss,
    check_reference_env,
    check_unguided,
    check_weight,
    metric,
)
from diffrl.objectives.weighting import ACTOR_WEIGHTINGS, actor_weight

EXPLORATION_SPACES = ("x0", "eps")
CRITIC_FORMS = ("reward_value", "q")
ACTOR_READS = ("online", "target")


@dataclass
class DPGConfig:
    """Attributes:
    gamma: discount in ``[0, 1]`` of the Bellman target (per inference step).
    lam: lambda, the weight of ``-w(t) Q(s, mu(s))`` in the actor loss (after the warm-up and ramp).
    bootstrap: ``True``: y = r + gamma (1 - done) Q_target(s', mu(s')); ``False``: y = r, the one-step regressor of
        the authors' released code.
    critic_form: how the bootstrapped Q(s, a) = r(s, a) + gamma Q(s', mu(s')) is represented.
        ``"reward_value"``: Q(s, a) = R_phi(s, a) + gamma (1 - done) V_psi(s'(s, a)), where R_phi (the ``critic``)
        regresses the immediate reward, V_psi (the ``value`` network) the policy's cumulative reward from a state by
        TD on the policy's own transitions, V(s) ~ r(s, mu(s)) + gamma V_target(s'), and s'(s, a) is the scheduler's
        step: the action reaches V through the exact, differentiable dynamics. ``"q"``: one network regressed on
        y = r + gamma (1 - done) Q_target(s', mu(s')) (the paper's literal form; it must infer V(s') from (s, a)).
        Without ``bootstrap`` both are R_phi alone.
    eps_weight: weight of the DreamBooth eps-MSE on the instance batch (the paper uses 1).
    base_weight: weight of ``mse(mu(s), mu_base(s))``, the squared distance of the actor's action to the frozen base
        policy's at the same noised states (``reference_actor`` of `DPGLoss`): for two Gaussian steps of one std the
        KL between them is proportional to it, so it anchors the policy to the base model where the eps-MSE on its
        own samples (the prompt task's anchor) would follow the policy. 0: no base policy is read.
    prior_weight: weight of the prior-preservation eps-MSE (used when the batch has ``"prior"``).
    exploration_std: std of the Gaussian exploration noise of the critic's behaviour actions.
    exploration_space: ``"x0"``: the noise has ``exploration_std`` in x0_hat space (latent units), i.e. eps-space std
        ``exploration_std * sqrt(abar_t / (1 - abar_t))``, one perturbation size at every noise level; ``"eps"``:
        ``exploration_std`` in eps space (which x0_hat amplifies by sqrt((1 - abar_t) / abar_t), x14.6 at t = 999).
    exploration_actions: K behaviour actions per noised state, besides the policy's own action mu(s).
    (The critic's noised states per actor step are the batch size of the loss's ``env``.)
    replay_size: capacity of the replay buffer in noised states (each with its K + 1 transitions).
    critic_batch_size: noised states per critic update (each with its K + 1 transitions).
    critic_updates: critic updates per actor step (the first inside ``forward``, the others `auxiliary_updates`).
    warmup_steps: actor steps (collected batches) before the actor reads Q: meanwhile the actor follows the
        eps-MSE alone and the critic learns from the collected transitions.
    lam_ramp_steps: after the warm-up, lambda grows linearly from 0 to `lam` over this many steps.
    actor_weighting: w(t) of the actor's Q term (`diffrl.objectives.weighting.actor_weight`): ``"gamma_t"`` (the
        paper's gamma^t), ``"snr"`` or ``"none"``.
    pair_weight: weight of the paired-action term of the critic loss, which regresses Q(s, b_k) - Q(s, mu(s)) on
        y_k - y_0 for the K behaviour actions of one state: the state's value cancels, what is left is how Q
        changes with the action (the part the actor reads).
    normalization_rate: rate of the critic's per-band value statistics (`QCritic.update_statistics`).
    tau: Polyak rate of the target critic, ``target <- (1 - tau) target + tau critic`` per critic update.
    actor_reads: which critic the actor's Q term reads: ``"online"`` (the trained networks, as DDPG) or
        ``"target"`` (their Polyak average: the same TD fit, with the step-to-step noise of SGD averaged out).
    reward_scale: multiplies the env's reward in the critic target.
    """

    gamma: float = 0.9986
    lam: float = 1.0
    bootstrap: bool = True
    critic_form: str = "reward_value"
    eps_weight: float = 1.0
    base_weight: float = 0.0
    prior_weight: float = 1.0
    exploration_std: float = 0.1
    exploration_space: str = "x0"
    exploration_actions: int = 8
    replay_size: int = 256
    critic_batch_size: int = 32
    critic_updates: int = 16
    warmup_steps: int = 25
    lam_ramp_steps: int = 25
    actor_weighting: str = "gamma_t"
    pair_weight: float = 10.0
    normalization_rate: float = 0.01
    tau: float = 0.005
    actor_reads: str = "online"
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        for name in ("lam", "eps_weight", "base_weight", "prior_weight", "exploration_std", "pair_weight", "reward_scale"):
            check_weight(name, getattr(self, name))
        for name in ("exploration_actions", "replay_size", "critic_batch_size", "critic_updates"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        for name in ("warmup_steps", "lam_ramp_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}.")
        if self.exploration_space not in EXPLORATION_SPACES:
            raise ValueError(f"exploration_space must be one of {list(EXPLORATION_SPACES)}, got {self.exploration_space!r}.")
        if self.actor_reads not in ACTOR_READS:
            raise ValueError(f"actor_reads must be one of {list(ACTOR_READS)}, got {self.actor_reads!r}.")
        if self.critic_form not in CRITIC_FORMS:
            raise ValueError(f"critic_form must be one of {list(CRITIC_FORMS)}, got {self.critic_form!r}.")
        if self.actor_weighting not in ACTOR_WEIGHTINGS:
            raise ValueError(f"actor_weighting must be one of {list(ACTOR_WEIGHTINGS)}, got {self.actor_weighting!r}.")
        if not 0.0 < self.normalization_rate <= 1.0:
            raise ValueError(f"normalization_rate must be in (0, 1], got {self.normalization_rate}.")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau (the soft target update rate) must be in (0, 1], got {self.tau}.")
        if self.critic_batch_size > self.replay_size:
            raise ValueError(f"critic_batch_size ({self.critic_batch_size}) must not exceed replay_size ({self.replay_size}).")

    @property
    def uses_value(self) -> bool:
        """Whether Q is split into a reward model and a state-value network (``value`` of `DPGLoss`)."""
        return self.bootstrap and self.critic_form == "reward_value"


class DPGLoss(DiffusionLoss):
    """Actor-critic loss of deterministic policy gradients on noised reference latents, with a replay buffer.

    Each ``forward(td)``, on ``td = transitions.loss_input(batch)`` (`diffrl.collectors.CriticTransitionCollector`,
    which the trainer calls: the loss itself draws nothing and touches no buffer):

    1. **Noised state.** s_t = ``td["instance"]``'s x0 noised by the reference env (the same draws of t and eps as
       `DreamBoothLoss` for the same seed and batch); mu(s_t) = the U-Net's action, with gradients.
    2. **Collected transitions** ``td["transitions"]`` (no gradients), for the critic: M = ``env.batch_size`` noised
       states of the batch's x0 (cycled), at uniformly random schedule steps; for each, the policy's action b_0 =
       mu(s) and K behaviour actions b_k = mu(s) + noise (`DPGConfig.exploration_space`), each stepped by ``env``:
       reward r(s, b_k), next state s'_k and, for ``critic_form="q"`` with the Bellman backup, the policy's next
       action mu(s'_k). These draws (steps, noise, exploration, replay sampling) come from the loss's own generator
       ``rng``: the reference env's stream is left exactly as DreamBooth's. The group is scored by the critic before
       it trains on it (``critic_r2_fresh``); it has joined the replay buffer, sampled as ``td["replay"]``.
    3. **Critic loss** on the ``critic_batch_size`` replay states ``td["replay"]``, in fp32 (autocast off). The
       TD target is y_k = reward_scale r_k + gamma (1 - done_k) Q_target(s'_k, mu(s'_k)), with Q_target(s', mu(s'))
       = V_target(s') for ``critic_form="reward_value"``. The critic network regresses its target z_k (y_k for
       ``"q"``; the scaled reward for ``"reward_value"``, whose V regresses y_0 of the policy's own transition):
       the per-band statistics move towards z (PopArt), ``loss_critic = mse(net_norm(s, b_k), z_norm_k) +
       pair_weight * mse(net_norm(s, b_k) - net_norm(s, b_0), z_norm_k - z_norm_0) [+ mse(V_norm(s), y_norm_0)]``
       in each band's normalised units (`QCritic`).
    4. **Actor loss** ``eps_weight * mse(mu(s), eps) + prior_weight * prior_mse [+ base_weight * mse(mu(s),
       mu_base(s))] - lam_t * mean(w(t) Q(s, mu(s)))``, the critic (`DPGConfig.actor_reads`) read with detached
       parameters; lam_t = 0 during the warm-up, then ramps to `lam`.

    The next action mu(s'_k) is the policy's at collection time (the replay capacity bounds its age); the trainer runs
    ``critic_updates - 1`` more critic updates per actor step through `auxiliary_loss`.

    Logged: ``"reward"`` (mean r(s, mu(s)) of the policy's own action), ``"reward_explore"`` (mean r of the
    behaviour actions b_1..b_K), ``"q_value"``, ``"td_target"``, ``"td_error"``, ``"critic_r2"`` (replay sample) and
    ``"critic_r2_fresh"`` (the new group, before the critic trains on it), ``"value_r2"`` (V, reward_value form),
    ``"lam"``, ``"eps_mse"``, ``"prior_mse"``, ``"base_mse"`` (with ``base_weight > 0``).

    Args:
        env: a reference-mode `DenoisingEnv` with a per-step reward (typically ``num_inference_steps=999``, the
            t -> t-1 chain of SD v1): it steps the critic's transitions; its batch size is M, the critic's noised
            states per actor step.
        actor: ``UNetActor(unet, guidance_scale=1.0)``.
        critic: the `QCritic` of Q(s, a), or of R(s, a) with ``critic_form="reward_value"``; a target copy is
            created.
        value_network: V(s) of ``critic_form="reward_value"``, a `QCritic` reading the state (``inputs=("latents",)``,
            plus ``"x0"`` for rewards that compare with the reference); default: one of the critic's size, reading
            ``"x0"`` too when the critic does. A target copy is created.
        config: hyperparameters.
        reference_env: the reference-mode env that noises the actor's x0 (default: ``env``, then with the same batch
            size). Pass the env a `DreamBoothLoss` of the same seed would use to make the two runs see the same noised
            states.
        text_encoder: the text encoder when it is trained too.
        seed: seed of the loss's generator (exploration noise, replay sampling); default: the env's seed + 1.
        reference_actor: the frozen base policy (``UNetActor(base_unet, guidance_scale=1.0)``), required when
            ``config.base_weight > 0``; it is not trained and not part of the loss's state.
    """

    critic: QCritic
    critic_params: TensorDictParams
    target_critic_params: TensorDictParams
    value_network: QCritic | None
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        env: DenoisingEnv,
        actor: UNetActor,
        critic: QCritic,
        config: DPGConfig | None = None,
        *,
        value_network: QCritic | None = None,
        reference_env: DenoisingEnv | None = None,
        text_encoder: nn.Module | None = None,
        seed: int | None = None,
        reference_actor: UNetActor | None = None,
    ) -> None:
        check_reference_env(env, "DPGLoss")
        check_unguided(actor, "DPGLoss")
        if env.reward_fn is None:
            raise ValueError("DPGLoss learns a critic of the env's reward: build the env with `reward=...`.")
        if env.config.reward_mode != "per_step":
            raise ValueError(f"DPGLoss needs per-step rewards r(s_t, a): got reward_mode={env.config.reward_mode!r}.")
        config = config or DPGConfig()
        if config.base_weight > 0:
            if reference_actor is None:
                raise ValueError("DPGConfig.base_weight > 0 anchors the actor to the frozen base policy: pass "
                                 "reference_actor=UNetActor(base_unet, guidance_scale=1.0).")
            check_unguided(reference_actor, "DPGLoss's reference_actor")
        for name, network in (("critic", critic), ("value_network", value_network)):
            if network is not None and network.latent_shape != tuple(env.latent_shape):
                raise ValueError(f"{name} latent_shape {network.latent_shape} != env latent shape {tuple(env.latent_shape)}.")
        if config.uses_value and value_network is None:  # V reads the state (and the reference when R reads it)
            value_network = QCritic(critic.latent_shape, critic.text_proj.in_features,
                                    inputs=("latents", "x0") if "x0" in critic.inputs else ("latents",))
            value_network.to(next(critic.parameters()).device)
        if value_network is not None:
            if not config.uses_value:
                raise ValueError("value_network is used only with bootstrap=True and critic_form='reward_value'.")
            if set(value_network.inputs) & {"x0_hat", "action", "lookforward_error"}:
                raise ValueError(f"The value network V(s) reads the state only: build it with inputs=('latents',) (and "
                                 f"'x0' for rewards that compare with the reference), got {list(value_network.inputs)}.")
        super().__init__(env, actor, reference_env=reference_env, text_encoder=text_encoder, same_batch_size=False)
        self.config = config
        self.__dict__["reference_actor"] = reference_actor if config.base_weight > 0 else None  # frozen, not a submodule
        self.convert_to_functional(critic, "critic", create_target_params=True)
        if value_network is None:
            self.value_network = None
        else:
            self.convert_to_functional(value_network, "value_network", create_target_params=True)
        self.target_updater = SoftUpdate(self, tau=self.config.tau)  # every target_*_params
        self.rng = torch.Generator(device=env.device)  # every draw of the collector below
        self.rng.manual_seed(env.rng.initial_seed() + 1 if seed is None else seed)
        self.__dict__["transitions"] = CriticTransitionCollector(env, actor, CriticTransitionConfig(
            config.exploration_std, config.exploration_space, config.exploration_actions, config.replay_size,
            config.critic_batch_size, next_action=config.bootstrap and self.value_network is None), self.rng)
        self.register_buffer("collected_batches", torch.zeros((), dtype=torch.int64))

    def critic_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the critic and, with ``critic_form="reward_value"``, of the value network."""
        tables = [self.critic_params] + ([] if self.value_network is None else [self.value_network_params])
        return [p for table in tables for p in table.values(True, True) if isinstance(p, nn.Parameter) and p.requires_grad]

    @property
    def auxiliary_updates(self) -> int:
        """Critic-only updates the trainer runs after each actor step (`auxiliary_loss`)."""
        return self.config.critic_updates - 1

    # ---------------------------------------------------------------- critic
    @contextlib.contextmanager
    def _fp32(self) -> Iterator[None]:
        """The critic and its TD targets in fp32, also under mixed precision (bf16 cannot resolve Q's small steps)."""
        with torch.autocast(device_type=self.env.device.type, enabled=False):
            yield

    def _inputs(self, state: TensorDictBase, action: Tensor | None) -> dict[str, Tensor | None]:
        latents, timestep = state["latents"].float(), state["timestep"]
        x0 = state.get("x0", None)
        inputs = dict(latents=latents, timestep=timestep, prompt_embeds=state["prompt_embeds"].float(), action=None,
                      x0_hat=None, x0=None if x0 is None else x0.float())
        if action is not None:
            abar = self.env.schedule.abar(timestep).to(latents)
            inputs.update(action=action.float(), x0_hat=look_forward(latents, action.float(), abar))
        return inputs

    def _network(self, name: str, params: TensorDictBase, state: TensorDictBase, action: Tensor | None = None,
                 normalized: bool = False) -> Tensor:
        """``"critic"`` at (s, a) or ``"value_network"`` at s with ``params`` (fp32), ``[B]``: in reward units, or in
        the network's band-normalised units with ``normalized``."""
        network = getattr(self, name)
        with self._fp32(), params.to_module(network, preserve_module_state=False):
            inputs = self._inputs(state, action)
            return network.normalized(**inputs) if normalized else network(**inputs)

    def _normalize(self, name: str, values: Tensor, timestep: Tensor) -> Tensor:
        """``values`` ``[N]`` in the band-normalised units of network ``name``."""
        with torch.no_grad(), getattr(self, f"{name}_params").to_module(getattr(self, name), preserve_module_state=False):
            return getattr(self, name).normalize(values, timestep)

    def next_state(self, state: TensorDictBase, action: Tensor) -> TensorDict:
        """s'(s, a): the scheduler's step from ``state`` (with ``"step"``) under ``action``, differentiable in the
        action: ``"latents"`` (the step's mean: x_{t_prev} itself on a deterministic schedule), ``"timestep"``,
        ``"done"`` ``[B]`` and the state's ``"prompt_embeds"`` (and ``"x0"``)."""
        following = self.env.schedule.distribution(action.float(), state["step"], state["latents"].float())
        _, timestep, done = self.env.following_step(state["step"])
        out = TensorDict(latents=following.mean, timestep=timestep, done=done, prompt_embeds=state["prompt_embeds"],
                         batch_size=state.batch_size)
        if "x0" in state.keys():
            out["x0"] = state["x0"]
        return out

    def q_value(self, state: TensorDictBase, action: Tensor, *, target: bool = False) -> Tensor:
        """Q(s, a) ``[B]`` in reward units (fp32), differentiable in ``action`` and the state, not in the critic's
        parameters; ``target``: the target networks' Q. With a value network, R(s, a) + gamma (1 - done) V(s'(s, a))
        (`next_state`: ``state`` needs ``"step"``)."""
        q = self._network("critic", (self.target_critic_params if target else self.critic_params).detach(), state, action)
        if self.value_network is None:
            return q
        following = self.next_state(state, action)
        params = (self.target_value_network_params if target else self.value_network_params).detach()
        return q + self.config.gamma * (~following["done"]).float() * self._network("value_network", params, following)

    def actor_q(self, state: TensorDictBase, action: Tensor) -> Tensor:
        """The Q the actor maximises ``[B]``: `q_value` of the critic named by `DPGConfig.actor_reads`."""
        return self.q_value(state, action, target=self.config.actor_reads == "target")

    # ----------------------------------------------------------- critic loss
    @staticmethod
    def rows(group: TensorDictBase) -> TensorDict:
        """The group's ``[N, K+1]`` transitions as ``[N * (K+1)]`` critic rows (state repeated per action; row
        ``n * (K+1)`` is state n's own action mu(s))."""
        n, k1 = group["action"].shape[:2]

        def repeat(value: Tensor) -> Tensor:
            return value.unsqueeze(1).expand(n, k1, *value.shape[1:]).reshape(n * k1, *value.shape[1:])

        rows = TensorDict(
            latents=repeat(group["latents"]),
            timestep=repeat(group["timestep"]),
            x0=repeat(group["x0"]),
            prompt_embeds=repeat(group["prompt_embeds"]),
            action=group["action"].flatten(0, 1),
            reward=group["reward"].flatten(0, 1),
            batch_size=[n * k1],
        )
        following = group["next"].reshape(n * k1)
        rows["next"] = following.update({"x0": rows["x0"], "prompt_embeds": rows["prompt_embeds"]})
        return rows

    def _next_value(self, following: TensorDictBase, target: bool) -> Tensor:
        """gamma (1 - done) Q(s', mu(s')) ``[N]`` at stored next states: V(s') with a value network, else the critic
        at the stored next action; the target networks' with ``target``, no gradients."""
        with torch.no_grad():
            if self.value_network is not None:
                params = self.target_value_network_params if target else self.value_network_params
                value = self._network("value_network", params, following)
            else:
                params = self.target_critic_params if target else self.critic_params
                value = self._network("critic", params, following, following["action"])
        return self.config.gamma * (~following["done"]).float() * value

    def td_target(self, rows: TensorDictBase) -> Tensor:
        """y = reward_scale * r + gamma * (1 - done) * Q_target(s', mu(s')) ``[N]`` (r only without bootstrap)."""
        reward = self.config.reward_scale * rows["reward"].float()
        return reward + self._next_value(rows["next"], target=True) if self.config.bootstrap else reward

    def q_and_target(self, rows: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Q(s, b) of the critic and the TD target y, ``[N]`` each in reward units (no gradients), on transitions
        ``rows``; with a value network Q is read at the stored next state (equal to s'(s, b) on a deterministic
        schedule)."""
        with torch.no_grad():
            prediction, _, fitted = self.critic_fit(rows, update_statistics=False)
            return self.q_from_prediction(rows, prediction), self.q_target(rows, fitted)

    def q_from_prediction(self, rows: TensorDictBase, prediction: Tensor) -> Tensor:
        """Q(s, b) ``[N]`` in reward units (no gradients) from the critic's normalised prediction on ``rows``
        (`critic_fit`): denormalised, plus gamma (1 - done) V(s') with a value network."""
        with torch.no_grad(), self.critic_params.to_module(self.critic, preserve_module_state=False):
            q = self.critic.denormalize(prediction.detach(), rows["timestep"])
        return q + self._next_value(rows["next"], target=False) if self.value_network is not None else q

    def q_target(self, rows: TensorDictBase, fitted: Tensor) -> Tensor:
        """The TD target y of Q ``[N]`` given the critic network's raw regression target ``fitted`` (`critic_fit`):
        ``fitted`` itself, or with a value network (whose critic regresses the reward) `td_target`."""
        return fitted if self.value_network is None else self.td_target(rows)

    def critic_fit(self, rows: TensorDictBase, update_statistics: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The critic's prediction in its bands' normalised units (with gradients), its regression target in the
        same units and raw, each ``[N]``. The target is the TD target y (`td_target`), or with a value network the
        scaled reward alone (the critic is then R_phi). With ``update_statistics`` the critic's per-band statistics
        first move towards the targets (PopArt)."""
        if self.value_network is None:
            target = self.td_target(rows)
        else:
            target = self.config.reward_scale * rows["reward"].float()
        if update_statistics:
            self._update_statistics("critic", target, rows["timestep"])
        prediction = self._network("critic", self.critic_params, rows, rows["action"], normalized=True)
        return prediction, self._normalize("critic", target, rows["timestep"]), target

    def value_fit(self, rows: TensorDictBase, target: Tensor, update_statistics: bool) -> tuple[Tensor, Tensor]:
        """V_norm(s) (with gradients) and its normalised TD target, ``[N]`` each, on the policy's own transitions
        ``rows`` (index 0 of each replay entry) with their TD targets ``target`` = r(s, mu(s)) + gamma (1 - done)
        V_target(s') (`td_target`)."""
        if update_statistics:
            self._update_statistics("value_network", target, rows["timestep"])
        prediction = self._network("value_network", self.value_network_params, rows, normalized=True)
        return prediction, self._normalize("value_network", target, rows["timestep"])

    def _update_statistics(self, name: str, target: Tensor, timestep: Tensor) -> None:
        """PopArt step on network ``name``, the same output rescaling on its target copy, whose statistics then
        equal the network's: both keep their outputs, and the soft update mixes heads expressed in the same units."""
        network, params = getattr(self, name), getattr(self, f"{name}_params")
        target_params = getattr(self, f"target_{name}_params")
        with torch.no_grad():
            with params.to_module(network, preserve_module_state=False):
                rescaling = network.update_statistics(target, timestep, self.config.normalization_rate)
            with target_params.to_module(network, preserve_module_state=False):
                network.rescale_output(*rescaling)
            for stat in ("value_mean", "value_sq_mean", "value_count"):
                target_params[stat].copy_(params[stat])

    def critic_loss(self, group: TensorDictBase) -> TensorDict:
        """``loss_critic`` on replay entries ``[N]`` (see the class docstring) and its metrics."""
        n, k1 = group["action"].shape[:2]
        rows = self.rows(group)
        prediction, target_norm, target = self.critic_fit(rows, update_statistics=True)
        loss = nn.functional.mse_loss(prediction, target_norm)
        q_pairs, y_pairs = prediction.view(n, k1), target_norm.view(n, k1)
        loss = loss + self.config.pair_weight * nn.functional.mse_loss(q_pairs[:, 1:] - q_pairs[:, :1],
                                                                       y_pairs[:, 1:] - y_pairs[:, :1])
        metrics = {"critic_r2": metric(r_squared(prediction.detach(), target_norm))}
        target = self.q_target(rows, target)
        if self.value_network is not None:  # y = r + gamma (1 - done) V_target(s') of every row; V fits the own actions'
            own = torch.arange(n, device=rows.device) * k1
            value, value_target = self.value_fit(rows[own], target[own], update_statistics=True)
            loss = loss + nn.functional.mse_loss(value, value_target)
            metrics["value_r2"] = metric(r_squared(value.detach(), value_target))
        q_value = self.q_from_prediction(rows, prediction)  # Q without a second forward, against y above
        return TensorDict(
            {"loss_critic": loss, "q_value": metric(q_value), "td_target": metric(target),
             "td_error": metric((q_value - target).abs()), **metrics},
            batch_size=[],
        )

    def auxiliary_loss(self, replay: TensorDictBase) -> TensorDict:
        """One more critic update's loss, on a fresh replay sample (``transitions.sample()``; the trainer steps the
        critic only)."""
        return self.critic_loss(replay)

    # --------------------------------------------------------------- forward
    def current_lam(self) -> float:
        """lambda after ``collected_batches`` actor steps: 0 during the warm-up, then a linear ramp to `lam`."""
        done = int(self.collected_batches) - self.config.warmup_steps
        if done < 0:
            return 0.0
        return self.config.lam * min(1.0, (done + 1) / max(self.config.lam_ramp_steps, 1))

    def forward(self, td: TensorDictBase) -> TensorDict:
        """The losses of one actor step on ``td = transitions.loss_input(batch)`` (keys `DPG_INPUT_KEYS`)."""
        missing = [key for key in DPG_INPUT_KEYS if key not in td.keys()]
        if missing:
            raise KeyError(f"DPGLoss reads {list(DPG_INPUT_KEYS)} (missing {missing}): pass "
                           "loss.transitions.loss_input(batch), which collects the critic's transitions for the batch.")
        batch, group = td["instance"], td["transitions"]
        self.check_batch(batch)
        state = self.actor(self.noised_state(batch))
        action = state["action"]
        with torch.no_grad():  # the fresh group, before the critic has trained on it
            fresh_r2 = r_squared(*self.critic_fit(self.rows(group), update_statistics=False)[:2])
        out = self.critic_loss(td["replay"]).to_dict()

        lam = self.current_lam()
        eps_mse = self.eps_mse(state)
        loss_actor = self.config.eps_weight * eps_mse
        if self.reference_actor is not None:
            with torch.no_grad():
                base_action = self.reference_actor(state.exclude("action"))["action"]
            base_mse = nn.functional.mse_loss(action, base_action)
            loss_actor = loss_actor + self.config.base_weight * base_mse
            out["base_mse"] = metric(base_mse)
        if lam > 0:
            abar = self.env.schedule.abar(state["timestep"]).to(action)
            weight = actor_weight(self.config.actor_weighting, state["timestep"], abar, self.config.gamma)
            q_actor = self.actor_q(state, action)
            loss_actor = loss_actor - lam * (weight * q_actor).mean()
        self.collected_batches += 1
        out.update(
            reward=metric(group["reward"][:, 0]),
            reward_explore=metric(group["reward"][:, 1:]),
            critic_r2_fresh=metric(fresh_r2),
            lam=torch.tensor(lam),
            eps_mse=metric(eps_mse),
        )
        out["loss_actor"] = self.add_prior(loss_actor, batch, out, self.config.prior_weight)
        return TensorDict(out, batch_size=[])


def r_squared(prediction: Tensor, target: Tensor) -> Tensor:
    """1 - SSE / SST of ``prediction`` ``[N]`` against ``target`` ``[N]`` (0-d). On band-normalised values (see
    `QCritic`) this is close to the mean within-band R^2: the band means are already removed."""
    residual = (prediction - target).pow(2).sum()
    total = (target - target.mean()).pow(2).sum()
    return 1 - residual / total
