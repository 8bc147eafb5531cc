"""`adamixup`: Masking+AdaMixUp — PPFR-FD masking, then MixUp with k chosen per batch by a policy
network trained with REINFORCE (ALGORITHMS §3, [H §4.1, Eqs. 1–8, Fig. 2b, Table 3]).

Per training batch (the recognizer loop calls :meth:`AdaMixup.train_step`):

(a) policy step, recognizer fixed (Eq. 7): ``k ~ π_φ(masked batch)``; mix; reward
    ``a·L1 + b·L2`` with L1 the FR loss of the mixed batch under the current recognizer and L2 the
    loss under FRNet1, a copy of the recognizer after one SGD step on L1 (discarded after use);
    REINFORCE ascent ``−(R − baseline)·log π(k)`` with Adam.
(b) recognizer step, policy fixed (Eq. 6): a fresh ``k ~ π_φ``, a fresh mixture; the mixed-label
    ArcFace loss is returned to the recognizer's optimiser. The k of (b) is counted: the shares are
    ``record["k_share"]`` ([H] Table 3).

The policy is a ResNet-18 (timm) whose stem takes the masked channels, pooled over space *and
batch* → ``[1, width]`` → FC → softmax over the k set. Test-time recognition uses the unmixed
masked maps; the leak mixes with k drawn from the learned k histogram ([H §5.1]).

[ASSUMP] choices (options, ALGORITHMS §3/§11): ``policy_every=1`` (alternate every iteration),
Adam lr 1e-4, reward baseline off (``baseline_momentum=0``; 0.9 gives an EMA baseline), one k per
batch, ``policy_widths`` (the quick preset uses a narrower ResNet-18). FRNet1's SGD step uses the
recognizer's learning rate at the current epoch and its weight decay, without momentum (a fresh
copy has no momentum buffer, so its first SGD-momentum step is exactly this one). L1 and L2 are
computed in training mode (dropout and batch statistics), as the loss the recognizer minimises.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import RecognizerConfig
from bench.core.context import Context
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import DEFENSES
from bench.data.facedata import FaceData
from bench.recognition import build_backbone, lr_at
from defenses.mixing import Mixed, RandomSource, check_cap, check_k
from defenses.mixup import MixingDefense
from defenses.ppfr_fd import PpfrMasker, PpfrOptions


@dataclass
class AdaMixOptions(PpfrOptions):
    """PPFR-FD's options (§1) plus AdaMixUp's (§3)."""

    k_values: tuple[int, ...] = (2, 3, 4, 5, 6)  # the candidate set K
    cap: float = 0.55
    a: float = 1.0  # weight of L1 in the reward (Eq. 5)
    b: float = 1.0  # weight of L2 in the reward (Eq. 5)
    policy_lr: float = 1e-4  # [ASSUMP] Adam
    policy_every: int = 1  # [ASSUMP] a policy step every n recognizer steps
    baseline_momentum: float = 0.0  # [ASSUMP] 0 = no reward baseline; 0.9 = EMA baseline
    policy_widths: tuple[int, ...] = (64, 128, 256, 512)  # ResNet-18 stage widths
    secure_rng: bool = False  # os.urandom for mixing draws (§2)
    leak_rounds: int = 1  # [ASSUMP] mixtures of each auxiliary face the attacker simulates

    def validate(self) -> None:
        PpfrOptions.validate(self)
        ks = list(self.k_values)
        if not ks or len(set(ks)) != len(ks):
            raise ConfigError(f"adamixup k_values must be distinct values in 2..10, got {ks}")
        for k in ks:
            check_k(k, "k_values entry")
        check_cap(self.cap, min(ks))
        if self.policy_lr <= 0:
            raise ConfigError(f"adamixup policy_lr must be > 0, got {self.policy_lr}")
        if self.policy_every < 1:
            raise ConfigError(f"adamixup policy_every must be >= 1, got {self.policy_every}")
        if not 0 <= self.baseline_momentum < 1:
            raise ConfigError(f"adamixup baseline_momentum must be in [0, 1), got {self.baseline_momentum}")
        if len(self.policy_widths) != 4 or min(self.policy_widths) < 1:
            raise ConfigError(f"adamixup policy_widths needs four positive widths, got {self.policy_widths}")
        if self.leak_rounds < 1:
            raise ConfigError(f"adamixup leak_rounds must be >= 1, got {self.leak_rounds}")


class KPolicy(nn.Module):
    """ResNet-18 on the masked batch, pooled over H, W and the batch → FC → logits over K."""

    def __init__(self, in_chans: int, in_side: int, n_actions: int,
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        cfg = RecognizerConfig(backbone="resnet18", widths=tuple(widths))
        self.backbone = build_backbone(cfg, in_chans, in_side)  # 3×3 s1 stem for small maps
        self.fc = nn.Linear(widths[-1], n_actions)

    def forward(self, m: Tensor) -> Tensor:
        f = self.backbone(m).mean(dim=(0, 2, 3), keepdim=False)  # one state per batch: [width]
        return self.fc(f[None])[0]


def init_policy(policy: nn.Module, gen: torch.Generator) -> nn.Module:
    """(Re-)initialise every random parameter of ``policy`` from ``gen`` alone, with the schemes
    the modules are built with: convolutions Kaiming-normal (fan-out, ReLU; timm's ResNet init),
    linear layers PyTorch's default (Kaiming-uniform a=√5, bias U(±1/√fan_in)); BatchNorm keeps
    its constant init. Modules are visited in ``named_modules`` order, so the weights are a
    function of the generator's seed only."""
    for module in policy.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1]) if module.weight.shape[1] else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=gen)
    return policy


def reinforce_step(policy: nn.Module, opt: torch.optim.Optimizer, m: Tensor,
                   reward_fn: Callable[[int], float], gen: torch.Generator,
                   baseline: float = 0.0) -> tuple[int, float, Tensor]:
    """One REINFORCE ascent step on ``E_{j~π}[R(j)]`` (Eqs. 7–8): sample an action, score it,
    minimise ``−(R − baseline)·log π(j)``. Returns the action, its reward and π before the step."""
    logp = F.log_softmax(policy(m), dim=0)
    probs = logp.detach().exp().cpu()
    j = int(torch.multinomial(probs, 1, generator=gen))
    reward = float(reward_fn(j))
    loss = -(reward - baseline) * logp[j]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return j, reward, probs


def _register_variants(cls: type) -> type:
    for lo, hi in ((2, 4), (2, 5), (2, 6)):
        DEFENSES.register("adamixup", variant=f"k{lo}-{hi}", k_values=tuple(range(lo, hi + 1)))(cls)
    return cls


@_register_variants
class AdaMixup(MixingDefense):
    """Masking+AdaMixUp (ALGORITHMS §3): PPFR-FD masking + MixUp whose k a REINFORCE-trained
    policy picks per batch to maximise the recognizer's loss, alternating with the recognizer."""

    space = "masked"
    Options = AdaMixOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.masker = PpfrMasker(self.options)
        self.k_values = tuple(self.options.k_values)
        self.policy: KPolicy | None = None
        self.policy_opt: torch.optim.Optimizer | None = None
        self._rcfg: RecognizerConfig | None = None  # the recognizer's lr schedule, for FRNet1
        self._steps_per_epoch = 1
        self._step = 0
        self._baseline: float | None = None
        self._rewards: list[float] = []
        self._probs_first: Tensor | None = None  # π(k) at the first and last step, for the record
        self._probs_last: Tensor | None = None

    # -- representation ---------------------------------------------------------------------------
    def represent(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.masker(x, gen)

    def view(self, r: Tensor) -> Tensor:
        return self.masker.view(r)

    def attacker_copy(self, gen: torch.Generator) -> MixingDefense:
        """The black-box attacker's simulator (ALGORITHMS §1 v2): under PPFR-FD's ``fixed_key``
        a copy with a fresh key drawn from ``gen`` (the trained policy and k histogram are
        shared); else ``self`` (no deployment secret)."""
        from defenses.ppfr_fd import with_fresh_key

        return with_fresh_key(self, gen)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["policy_opt"] = None  # rebuilt by train_recognizer; never needed after training
        return state

    # -- fit: the policy network --------------------------------------------------------------------
    def fit(self, data: FaceData, ctx: Context) -> None:
        """Build the policy and its optimiser; capture the recognizer's schedule as plain values
        (the defense is pickled: no Context or data is kept)."""
        with torch.no_grad():
            shape = self.represent(data.train.take(torch.arange(2)), torch.Generator().manual_seed(0)).shape
        with torch.random.fork_rng(devices=[]):  # building draws from the global RNG: discarded
            policy = KPolicy(shape[1], min(shape[2:]), len(self.k_values), self.options.policy_widths)
        self.policy = init_policy(policy, ctx.generator("adamixup-policy", self.name))
        rcfg = ctx.recognizer or RecognizerConfig()
        self._rcfg = dataclasses.replace(rcfg)
        n = len(data.train)
        self._steps_per_epoch = max(1, n // min(rcfg.batch_size, n))

    def train_recognizer(self, data: FaceData, ctx: Context) -> Any:
        if self.policy is None:
            raise TrainingError("adamixup: fit() must run before the recognizer is trained")
        self.policy.to(ctx.device).train()
        # Built here, not in fit: a fresh Adam has no state, and a stored defense holds no
        # optimizer object (the store's safe loader only admits tensors and plain containers).
        self.policy_opt = torch.optim.Adam(self.policy.parameters(), lr=self.options.policy_lr)
        self._step, self._baseline, self._rewards = 0, None, []
        self._probs_first = self._probs_last = None
        try:
            return super().train_recognizer(data, ctx)
        finally:
            self.policy.cpu()

    # -- one recognizer step, with the policy step before it ------------------------------------------
    def train_step(self, model: Any, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        if self.policy is None or self._rcfg is None:
            raise TrainingError("adamixup: fit() must run before the recognizer is trained")
        src = self._source(gen)
        m = self.represent(x, src.generator()).detach()
        self.policy.to(m.device)
        if self._step % self.options.policy_every == 0:
            self.policy_step(model, m, y, src)  # (a)
        self._step += 1
        with torch.no_grad():  # (b): φ fixed
            probs = F.softmax(self.policy(m), dim=0).cpu()
        self._probs_first = self._probs_first if self._probs_first is not None else probs
        self._probs_last = probs
        k = self.k_values[int(torch.multinomial(probs, 1, generator=src.generator()))]
        self.k_counts[k] += 1
        mixed = self.mix(m, y, k, src)
        return model.mixed_loss(mixed.z, mixed.gt, mixed.co)

    def policy_step(self, model: Any, m: Tensor, y: Tensor, src: RandomSource) -> tuple[int, float]:
        """(a): REINFORCE on the reward ``a·L1 + b·L2`` with the recognizer fixed."""
        assert self.policy is not None and self.policy_opt is not None

        def reward(j: int) -> float:
            return self.reward(model, self.mix(m, y, self.k_values[j], src))

        beta = self.options.baseline_momentum
        baseline = self._baseline if beta > 0 and self._baseline is not None else 0.0
        j, r, _ = reinforce_step(self.policy, self.policy_opt, m, reward, src.generator(), baseline)
        self._baseline = r if self._baseline is None else beta * self._baseline + (1 - beta) * r
        self._rewards.append(r)
        return self.k_values[j], r

    def reward(self, model: Any, mixed: Mixed) -> float:
        """``a·L1 + b·L2`` (Eqs. 3–5). FRNet1 is a throw-away copy of the live recognizer after
        one SGD step on L1, so the live weights, their gradients and BN statistics are untouched."""
        fr1 = copy.deepcopy(model)
        params = [p for p in fr1.parameters() if p.requires_grad]
        l1 = fr1.mixed_loss(mixed.z, mixed.gt, mixed.co)
        grads = torch.autograd.grad(l1, params)
        lr, wd = self.current_lr(), self._rcfg.weight_decay if self._rcfg else 0.0
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * (g + wd * p))
            l2 = fr1.mixed_loss(mixed.z, mixed.gt, mixed.co)
        return self.options.a * l1.item() + self.options.b * l2.item()

    def current_lr(self) -> float:
        """The recognizer's lr at the current epoch (its loop calls train_step once per batch)."""
        if self._rcfg is None:
            return 0.0
        return lr_at(self._rcfg, self._step // self._steps_per_epoch)

    # -- leak / record ------------------------------------------------------------------------------
    def leak_k(self, src: RandomSource) -> int:
        """k for the simulated leak: drawn from the learned k histogram ([H §5.1])."""
        counts = torch.tensor([float(self.k_counts[k]) for k in self.k_values])
        probs = counts if counts.sum() > 0 else torch.ones(len(self.k_values))
        return self.k_values[int(torch.multinomial(probs, 1, generator=src.generator()))]

    def make_record(self) -> dict[str, Any]:
        rec = super().make_record()
        total = sum(self.k_counts.values()) or 1
        rec["k_counts"] = {str(k): int(self.k_counts[k]) for k in self.k_values}
        rec["k_share"] = {str(k): self.k_counts[k] / total for k in self.k_values}
        rec["k_values"] = list(self.k_values)
        for when, p in (("first", self._probs_first), ("last", self._probs_last)):
            if p is not None:
                rec[f"policy_probs_{when}"] = {str(k): float(v) for k, v in zip(self.k_values, p)}
        if self._rewards:
            rec["reward_first"] = self._rewards[0]
            rec["reward_mean"] = sum(self._rewards) / len(self._rewards)
        return rec
