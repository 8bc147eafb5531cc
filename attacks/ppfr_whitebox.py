"""`ppfr_whitebox`: the attack of an attacker who knows the PPFR-FD mechanism (ALGORITHMS §7.4,
§1 "Attacker knowledge (v2)").

Two variants, both registered:

- ``ppfr_whitebox`` (analytic + refine): undo the masking as far as its structure allows, then a
  U-Net (the pix2pix generator of §7.1, trained with L1 only) refines the analytic image. Steps:

  1. *Identify each masked channel's content.* With ``adjacent_sum`` mixing, masked channel ``i``
     is ``N(N(c_a) + N(c_b))``: the self-normalised sum of two self-normalised frequency maps, the
     pair ``{a, b} = {π₁(π₂(i)), π₁(π₂(i)+1)}``. A small classifier, trained on the attacker's own
     simulation over its public faces (it knows the mechanism, so it knows every secret of the
     pairs it simulates), predicts which frequency *groups* a channel holds; a Hungarian
     assignment (``scipy.optimize.linear_sum_assignment`` on the classifier's log-probabilities,
     each channel taking two slots and each group as many slots as it has ring positions) picks a
     consistent assignment — this undoes π₂ and, since it names the frequencies directly, π₁ too
     (the ring's rotation and orientation never need to be known). A white-box attacker of a
     ``fixed_key`` deployment reads the pairs from the key instead (matching is then exact); a
     black-box attacker of a ``fixed_key`` deployment pools the log-probabilities of all stolen
     maps (they share one key) into one assignment (``pool_fixed_key``).
  2. *Invert the mixing.* Each channel gives ``g_A + g_B = s_i · d_i``; the group maps ``g`` are
     the least-squares solution over all channels (the circulant system is invertible for odd C;
     with groups it is over-determined, so a few misclassified channels are outvoted). ``s_i``,
     the scale the second self-normalisation removed, is taken from the prior:
     ``s² = 2 + 2ρ_AB`` with ``ρ`` the groups' mean correlation on public faces.
  3. *Rescale* every frequency by its prior per-image std/mean (public BDCT maps): the first
     self-normalisation removed them.
  4. *Inverse BDCT* of the AC channels by least squares (conjugate gradient on
     ``‖BDCT(Up(x))[AC] − ĉ‖²``), which also inverts the ×8 bilinear upsampling of §0.1 when the
     maps were upsampled; the lost DC leaves one constant per image (upsampled maps) or per block
     (plain maps), set to the public faces' mean.
  5. *Refine* with a U-Net trained on (analytic reconstruction of the simulated pairs' inputs,
     face) — the pairs the attack's ``knowledge`` allows. The U-Net learns a residual correction
     of the analytic image; ``refine='auto'`` [ASSUMP] keeps it only when it beats the analytic
     image on a held-out share of the attacker's own pairs (measured on ORL quick: with 100
     public faces the analytic image alone reached SSIM .94 and a refiner trained on them .93).

- ``ppfr_whitebox.simulated``: the U-Net alone, trained on simulated (masked map, face) pairs
  (§7.4 "simulate exact (m, x) pairs and train a U-Net"), like ``cgan`` without the GAN term.

What the analytic step can and cannot recover (documented finding; ``[ASSUMP]`` choices):

- *Frequency groups, not always frequencies.* On ×8-upsampled maps (§0.1, every preset) each
  8×8 block is a bilinear patch of a 3×3 pixel neighbourhood, so many AC channels are the same
  filter response up to a constant factor; after self-normalisation they are identical maps.
  Content identifies only these groups (measured on ORL 32 px: 48 non-zero channels in 10 groups,
  one of 32 members); which member of a group sits where is unidentifiable and irrelevant to the
  image. Groups are found on the public faces (mean correlation > ``group_threshold``); on plain
  8×8-block maps most groups are single frequencies.
- *Scales.* Both self-normalisations remove per-image, per-channel mean and std: the analytic
  image carries the prior scales (the face's own contrast per frequency is lost), and the
  mixing-scale ``s_i`` is a prior estimate. The refining U-Net learns what is left.
- *DC.* PPFR-FD drops it: the global brightness (upsampled) or each block's mean (plain maps).
- *Mix modes.* The analytic step handles ``adjacent_sum`` (and any mode with a white-box key for
  ``adjacent_sum``); for ``random_pair_sum``/``random_orthogonal`` it is skipped
  (``info["analytic"]`` says why) and the U-Net works on the masked maps as in the simulated
  variant.
- *Mixtures* (Masking+MixUp): the stolen map is a weighted sum of masked maps of several faces;
  the analytic step treats it as one masked map and the refining U-Net, trained on the mixed
  simulated pairs, learns the slot-0 face.

``channel_matching_accuracy`` in ``Reconstruction.info``: the share of channels whose group
pair the assignment got exactly right (``slot_matching_accuracy``: the share of the 2·C
channel slots it got right), measured on a held-out part of the attacker's own simulation made
the way the deployment draws its secrets (per sample, or one key pooled over the maps); it
cannot be measured on the stolen maps, whose secrets the attacker lacks. 1.0 when a white-box
key gave the pairs. ``per_sample_matching_accuracy``: the per-map classifier alone. Applies to defenses
that publish a PPFR-FD mechanism (``Defense.mechanism()["family"] == "ppfr_fd"``: PPFR-FD and the
masking mixups); other cells are ``n/a`` with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from attacks.base import Attack
from bench.backbones.pix2pix import UnetGenerator, auto_num_downs
from bench.core.context import Context, seeded
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.errors import ConfigError
from bench.core.registry import ATTACKS
from bench.core.training import (Standardizer, check_leak, check_positive, crop_to, pad_to, predict,
                                 resize, train_epochs)
from defenses.bdct import bdct_image
from defenses.ppfr_fd import PpfrMasker, PpfrOptions, self_normalise

FAMILY = "ppfr_fd"


# -- the mechanism's structure ---------------------------------------------------------------------
def masker_from(mechanism: dict[str, Any]) -> PpfrMasker:
    """The attacker's own PPFR-FD simulator from the public mechanism (its key is irrelevant:
    the attacker passes explicit secrets to :meth:`PpfrMasker.apply_with`)."""
    return PpfrMasker(PpfrOptions(keep_channels=list(mechanism.get("keep_channels", [])),
                                  perm_mode="per_sample",
                                  mix_mode=str(mechanism.get("mix_mode", "adjacent_sum")),
                                  upsample=bool(mechanism.get("upsample", True))))


def ring_pairs(perm1: Tensor, perm2: Tensor) -> Tensor:
    """Frequency (channel-list index) pairs ``[..., C, 2]`` held by each masked channel under
    ``adjacent_sum``: channel ``i`` holds ring positions ``π₂(i)`` and ``π₂(i)+1``, which hold
    frequencies ``π₁`` of them."""
    n = perm1.shape[-1]
    r = perm2
    a = torch.gather(perm1, -1, r)
    b = torch.gather(perm1, -1, (r + 1) % n)
    return torch.stack([a, b], -1)


@dataclass
class Prior:
    """Statistics of clean BDCT channels on public faces (the attacker's aux set)."""

    groups: Tensor  # [C] group id per channel; -1 = identically zero
    n_groups: int
    rho: Tensor  # [G, G] mean correlation between the groups' normalised maps
    std: Tensor  # [C] mean per-image std of each channel
    mean: Tensor  # [C] mean per-image spatial mean of each channel
    pixel_mean: float  # mean brightness of the public faces (the lost DC)

    @staticmethod
    def fit(masker: PpfrMasker, images: Tensor, threshold: float) -> "Prior":
        c = bdct_image(images.float(), upsample=masker.options.upsample)[:, masker.channels]
        std, mean = torch.std_mean(c, dim=(2, 3), correction=0)
        u = self_normalise(c).flatten(2)
        corr = torch.einsum("bik,bjk->ij", u, u) / (u.shape[2] * len(u))
        nonzero = std.amax(0) > 1e-6
        groups = torch.full((c.shape[1],), -1, dtype=torch.long)
        g = 0
        for f in range(c.shape[1]):  # greedy: a channel joins the first group it matches
            if not nonzero[f] or groups[f] >= 0:
                continue
            members = (corr[f] > threshold) & nonzero & (groups < 0)
            members[f] = True
            groups[members] = g
            g += 1
        onehot = F.one_hot(groups.clamp_min(0), g).float() * nonzero[:, None]
        counts = onehot.sum(0).clamp_min(1)
        rho = (onehot.T @ corr @ onehot) / (counts[:, None] * counts[None, :])
        rho.fill_diagonal_(1.0)
        return Prior(groups, g, rho.clamp(-1, 1), std.mean(0), mean.mean(0),
                     float(to_gray(images).mean()))


def to_gray(x: Tensor) -> Tensor:
    from defenses.bdct import to_gray as _gray

    return _gray(x.float())


def pair_groups(pairs: Tensor, groups: Tensor) -> Tensor:
    """Frequency pairs ``[..., 2]`` → group pairs (−1 = the zero group)."""
    return groups[pairs]


def group_counts(gpairs: Tensor, n_groups: int) -> Tensor:
    """Group pairs ``[..., 2]`` → counts ``[..., G+1]`` (last column: the zero group)."""
    idx = torch.where(gpairs < 0, torch.full_like(gpairs, n_groups), gpairs)
    return F.one_hot(idx, n_groups + 1).sum(-2).float()


# -- the channel classifier --------------------------------------------------------------------------
def channel_features(m: Tensor, side: int = 16) -> Tensor:
    """Per-channel features of masked maps ``[N, C, H, W]`` → ``[N, C, F]``: the map shrunk to
    ``side`` (area) and its log power spectrum — what distinguishes one filter response from
    another (orientation, order) regardless of where the face is."""
    n, c, h, w = m.shape
    x = m.reshape(n * c, 1, h, w).float()
    s = resize(x, (min(side, h), min(side, w)))
    spec = torch.log1p(torch.fft.rfft2(x, norm="ortho").abs())
    spec = resize(spec, (min(side, h), min(side, spec.shape[-1])))
    return torch.cat([s.flatten(1), spec.flatten(1)], 1).reshape(n, c, -1)


class ChannelClassifier(nn.Module):
    """MLP on :func:`channel_features` → log-probabilities over the G groups and the zero group
    (soft labels: the share of each group in the channel's pair)."""

    def __init__(self, n_features: int, n_out: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_out))
        self.register_buffer("mu", torch.zeros(n_features))
        self.register_buffer("sd", torch.ones(n_features))

    def forward(self, f: Tensor) -> Tensor:
        return F.log_softmax(self.net((f - self.mu) / self.sd), -1)


def train_classifier(feats: Tensor, counts: Tensor, hidden: int, steps: int, lr: float,
                     gen: torch.Generator) -> ChannelClassifier:
    """Full-batch-ish Adam on soft cross-entropy (targets: counts / 2)."""
    x = feats.reshape(-1, feats.shape[-1])
    t = (counts / 2).reshape(-1, counts.shape[-1])
    net = ChannelClassifier(x.shape[1], t.shape[1], hidden)
    net.mu.copy_(x.mean(0))
    net.sd.copy_(x.std(0).clamp_min(1e-4))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    batch = min(len(x), 2048)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = -(t[idx] * net(x[idx])).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def match_channels(score: Tensor) -> Tensor:
    """One-to-one matching of observed channels to frequencies maximising ``score [C, C]``
    (e.g. a classifier's log-probabilities, or minus a statistic's distance): ``perm`` with
    observed channel ``i`` ↔ frequency ``perm[i]`` (``linear_sum_assignment``)."""
    rows, cols = linear_sum_assignment(-score.double().numpy())
    out = torch.empty(score.shape[0], dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return out


def hungarian_pairs(logp: Tensor, slots: Tensor, double_share: float = 0.75) -> Tensor:
    """Consistent group pairs for one map's channels: ``logp [C, G+1]`` (log-probabilities over the
    groups and the zero group), ``slots [G+1]`` how many of the 2·C channel slots each group fills
    (twice its ring positions). Each channel takes two slots; ``linear_sum_assignment`` maximises
    the summed log-probability. A linear assignment cannot see that a channel takes one group
    twice, so [ASSUMP] a channel may hold its most likely group twice only when the classifier
    gives that group more than ``double_share`` of it (else its second slot may not take it).
    Returns ``[C, 2]`` group ids (−1 = zero group)."""
    c, k = logp.shape
    cols = torch.repeat_interleave(torch.arange(k), slots.long())
    assert len(cols) == 2 * c, (len(cols), c)
    lp = torch.log_softmax(logp.double(), -1)
    cost = -lp.repeat_interleave(2, 0)[:, cols]  # rows: (channel, slot 0|1)
    q, top = lp.exp().max(-1)
    forbid = (cols[None, :] == top[:, None]) & (q[:, None] <= double_share)  # [C, 2C]
    cost[1::2][forbid] = 1e6
    rows, assigned = linear_sum_assignment(cost.numpy())
    out = cols[torch.as_tensor(assigned[np.argsort(rows)])].view(c, 2)
    return torch.where(out == k - 1, torch.full_like(out, -1), out)


# -- inversion -----------------------------------------------------------------------------------
def solve_groups(m: Tensor, gpairs: Tensor, prior: Prior, scales: Tensor | None = None) -> Tensor:
    """Least-squares group maps ``[N, G, H, W]`` from masked maps ``m [N, C, H, W]`` and their
    channels' group pairs ``gpairs [N, C, 2]`` (ALGORITHMS §1 step 4 inverted; the circulant
    system is square and invertible for odd C when every frequency is its own group).
    ``scales [N, C]``: the std each channel had before the second self-normalisation, when known
    (tests: exact inversion); else the prior's ``sqrt(2 + 2ρ)``."""
    n, c, h, w = m.shape
    G = prior.n_groups
    cnt = group_counts(gpairs, G)[..., :G]  # [N, C, G]
    if scales is None:
        var = torch.einsum("ncg,gk,nck->nc", cnt, prior.rho, cnt)
        s = var.clamp_min(0).sqrt()  # 2 + 2ρ for two groups, 4 for one group twice, 1 with zero
    else:
        s = scales.float()
    rhs = (s[..., None] * m.reshape(n, c, h * w).float())
    sol = torch.linalg.lstsq(cnt, rhs, driver="gelsd" if cnt.device.type == "cpu" else None).solution
    return sol.reshape(n, G, h, w)


def frequencies_from_groups(g: Tensor, prior: Prior) -> Tensor:
    """Group maps → every kept channel with its prior scale and offset ``[N, C, H, W]``."""
    idx = prior.groups.clamp_min(0)
    u = g[:, idx] * (prior.groups >= 0).float()[None, :, None, None]
    return u * prior.std[None, :, None, None] + prior.mean[None, :, None, None]


def inverse_masked_bdct(c: Tensor, masker: PpfrMasker, side: tuple[int, int], pixel_mean: float,
                        iters: int = 60) -> Tensor:
    """Gray image ``[N, 1, H, W]`` whose kept BDCT channels (after the ×8 upsampling when the
    mechanism upsamples) best match ``c`` in least squares: conjugate gradient on the normal
    equations, the adjoint by autograd (the operator is linear). Starting from 0 the solution
    has no component in the operator's null space (the lost DC), which is then set to
    ``pixel_mean`` (upsampled: one constant per image; plain maps: per block)."""
    up = masker.options.upsample
    chans = masker.channels
    n = len(c)

    def A(x: Tensor) -> Tensor:
        return bdct_image(x, upsample=up)[:, chans]

    def At(y: Tensor) -> Tensor:
        x = torch.zeros(n, 1, *side, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((A(x) * y).sum(), x)
        return g

    b = At(c.float())
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dim=(1, 2, 3), keepdim=True)
    for _ in range(iters):
        ap = At(A(p))
        alpha = rs / (p * ap).sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-20)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dim=(1, 2, 3), keepdim=True)
        if float(rs_new.max()) < 1e-12:
            break
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    if up:
        return x - x.mean(dim=(1, 2, 3), keepdim=True) + pixel_mean
    blocks = F.avg_pool2d(x, 8)
    return x - F.interpolate(blocks, scale_factor=8, mode="nearest") + pixel_mean


def analytic_reconstruction(m: Tensor, gpairs: Tensor, prior: Prior, masker: PpfrMasker,
                            side: tuple[int, int], cg_iters: int = 60,
                            batch: int = 128) -> Tensor:
    """Steps 2–4: masked maps and their channels' group pairs → gray images in [0, 1]."""
    outs = []
    for i in range(0, len(m), batch):
        g = solve_groups(m[i:i + batch], gpairs[i:i + batch], prior)
        c = frequencies_from_groups(g, prior)
        outs.append(inverse_masked_bdct(c, masker, side, prior.pixel_mean, cg_iters).clamp(0, 1))
    return torch.cat(outs) if outs else m.new_zeros((0, 1) + tuple(side))


# -- the attack --------------------------------------------------------------------------------
class PpfrWhiteboxAttack(Attack):
    """PPFR-FD white-box attack (ALGORITHMS §7.4): analytic inversion of the masking (channel
    identification + Hungarian matching, mixing inversion, prior rescaling, inverse BDCT) refined
    by a U-Net, or (``analytic=False``) a U-Net on simulated (masked, face) pairs. Applies only to
    defenses with a PPFR-FD mechanism. See the module docstring for what is recoverable."""

    family = "analytic"  # ALGORITHMS §15 (white-box analytic); the representative where it applies
    floor_note = "n/a on none (inverts PPFR-FD masks)"

    @dataclass
    class Options(Attack.Options):
        analytic: bool = True  # False: the simulated-pairs U-Net (ppfr_whitebox.simulated)
        epochs: int = 30  # [ASSUMP] U-Net (refiner / simulated) epochs, L1, Adam
        batch_size: int = 16  # [ASSUMP]
        lr: float = 2e-4  # pix2pix's Adam lr (§7.1)
        ngf: int = 32  # [ASSUMP] U-Net width (pix2pix: 64)
        num_downs: int = 0  # 0 = log2(padded image side), as cgan
        classifier_steps: int = 400  # [ASSUMP] Adam steps of the channel classifier
        classifier_hidden: int = 256  # [ASSUMP]
        classifier_lr: float = 3e-3  # [ASSUMP]
        classifier_rounds: int = 2  # [ASSUMP] simulated maskings of each public face
        holdout: float = 0.2  # share of public faces held out to measure channel matching
        group_threshold: float = 0.99  # [ASSUMP] channels this correlated form one group
        pool_fixed_key: bool = True  # fixed_key mechanism, no key: pool all stolen maps
        cg_iters: int = 60  # conjugate-gradient iterations of the inverse BDCT
        refine: str = "auto"  # [ASSUMP] auto (validated on held-out pairs) | always | never

        def validate(self) -> None:
            Attack.Options.validate(self)
            check_positive("attacks.ppfr_whitebox", epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, ngf=self.ngf, classifier_steps=self.classifier_steps,
                           classifier_hidden=self.classifier_hidden,
                           classifier_lr=self.classifier_lr,
                           classifier_rounds=self.classifier_rounds, cg_iters=self.cg_iters)
            if self.num_downs < 0 or 0 < self.num_downs < 5:
                raise ConfigError(f"attacks.ppfr_whitebox.num_downs must be 0 (auto) or >= 5, "
                                  f"got {self.num_downs}")
            if not 0 < self.holdout < 1:
                raise ConfigError(f"attacks.ppfr_whitebox.holdout must be in (0, 1), got {self.holdout}")
            if self.refine not in ("auto", "always", "never"):
                raise ConfigError(f"attacks.ppfr_whitebox.refine must be auto, always or never, "
                                  f"got {self.refine!r}")
            if not 0 < self.group_threshold <= 1:
                raise ConfigError(f"attacks.ppfr_whitebox.group_threshold must be in (0, 1], "
                                  f"got {self.group_threshold}")

    def not_applicable(self, defense: Any) -> str | None:
        mech = defense.mechanism() if hasattr(defense, "mechanism") else None
        if not mech or mech.get("family") != FAMILY:
            return (f"ppfr_whitebox attacks PPFR-FD masks; defense "
                    f"{getattr(defense, 'name', type(defense).__name__)} publishes no PPFR-FD "
                    f"mechanism")
        return None

    # -- analytic front end --------------------------------------------------------------------------
    def _analytic(self, leak: Leak, ctx: Context) -> tuple[Tensor, Tensor, dict[str, Any]] | str:
        """Analytic images of ``leak.train_inputs`` and ``leak.inputs`` and the info, or a reason
        why the analytic step cannot run on this leak."""
        o = self.options
        mech = leak.extra.get("mechanism")
        if not mech or mech.get("family") != FAMILY:
            return "the leak carries no PPFR-FD mechanism"
        if mech.get("mix_mode") != "adjacent_sum":
            return f"analytic inversion implemented for adjacent_sum only, not {mech.get('mix_mode')}"
        masker = masker_from(mech)
        C = masker.num_channels
        if leak.inputs.shape[1] != C:
            return f"leak has {leak.inputs.shape[1]} channels, the mechanism {C}"
        faces = leak.train_targets.float()
        side = tuple(faces.shape[-2:])
        uniq = _unique_faces(faces)
        gen = ctx.generator(self.name, "simulate")
        n_hold = max(1, int(round(len(uniq) * o.holdout)))
        order = torch.randperm(len(uniq), generator=gen)
        fit_faces, hold_faces = uniq[order[n_hold:]], uniq[order[:n_hold]]
        prior = Prior.fit(masker, fit_faces, o.group_threshold)
        G = prior.n_groups

        def simulate(x: Tensor, rounds: int, fixed: bool = False) -> tuple[Tensor, Tensor]:
            ms, ps = [], []
            for _ in range(rounds):
                b = len(x)
                if fixed:
                    p1 = torch.randperm(C, generator=gen).expand(b, C)
                    p2 = torch.randperm(C, generator=gen).expand(b, C)
                else:
                    p1 = torch.argsort(torch.rand(b, C, generator=gen), 1)
                    p2 = torch.argsort(torch.rand(b, C, generator=gen), 1)
                ms.append(masker.apply_with(x, p1, p2))
                ps.append(ring_pairs(p1, p2))
            return torch.cat(ms), torch.cat(ps)

        sim_m, sim_p = simulate(fit_faces, o.classifier_rounds)
        counts = group_counts(pair_groups(sim_p, prior.groups), G)
        slots = group_counts(pair_groups(ring_pairs(torch.arange(C), torch.arange(C)),
                                         prior.groups), G).sum(0)  # [G+1], sums to 2C
        with seeded(ctx, self.name, "classifier"):
            clf = train_classifier(channel_features(sim_m), counts, o.classifier_hidden,
                                   o.classifier_steps, o.classifier_lr, gen)

        @torch.no_grad()
        def logp(m: Tensor) -> Tensor:
            return torch.cat([clf(channel_features(m[i:i + 64])) for i in range(0, len(m), 64)])

        def assign(m: Tensor, pooled: bool) -> Tensor:
            lp = logp(m)
            if pooled:
                one = hungarian_pairs(lp.sum(0), slots)
                return one.expand(len(m), C, 2)
            return torch.stack([hungarian_pairs(row, slots) for row in lp])

        def accuracy(pred: Tensor, true_pairs: Tensor) -> tuple[float, float]:
            """Share of channels whose pair is right; share of the 2·C slots that are."""
            t = group_counts(pair_groups(true_pairs, prior.groups), G)
            pc = group_counts(pred, G)
            return (float((pc == t).all(-1).float().mean()),
                    float(torch.minimum(pc, t).sum(-1).mean() / 2))

        hold_m, hold_p = simulate(hold_faces, 1)
        info: dict[str, Any] = {"groups": G, "group_sizes": torch.bincount(
            prior.groups[prior.groups >= 0], minlength=G).tolist(),
            "zero_channels": int((prior.groups < 0).sum()),
            "per_sample_matching_accuracy": accuracy(assign(hold_m, False), hold_p)[0]}
        keyed = mech.get("perm_mode") == "fixed_key"
        secrets = leak.secrets or {}
        if keyed and "perm1" in secrets and "perm2" in secrets:
            # white box: the deployment's key gives every channel's pair
            pairs = pair_groups(ring_pairs(secrets["perm1"], secrets["perm2"]), prior.groups)
            train_g = pairs.expand(len(leak.train_inputs), C, 2)
            test_g = pairs.expand(len(leak.inputs), C, 2)
            info["matching"] = "key"
            info["channel_matching_accuracy"] = info["slot_matching_accuracy"] = 1.0
        else:
            pooled = keyed and o.pool_fixed_key
            hm, hp = simulate(hold_faces, 1, fixed=True) if pooled else (hold_m, hold_p)
            acc, slot_acc = accuracy(assign(hm, pooled), hp)
            info["matching"] = "pooled_hungarian" if pooled else "hungarian"
            info["channel_matching_accuracy"] = acc
            info["slot_matching_accuracy"] = slot_acc
            # the train pairs were simulated with one key (the deployment's or the attacker's):
            # pool them separately from the stolen maps
            train_g = assign(leak.train_inputs, pooled)
            test_g = assign(leak.inputs, pooled)
            if pooled:
                info["estimated_pairs"] = test_g[0].tolist()
        train_a = analytic_reconstruction(leak.train_inputs, train_g, prior, masker, side, o.cg_iters)
        test_a = analytic_reconstruction(leak.inputs, test_g, prior, masker, side, o.cg_iters)
        return train_a, test_a, info

    # -- U-Net (refiner or simulated-pairs decoder) ---------------------------------------------------
    def _unet(self, train_in: Tensor, train_x: Tensor, test_in: Tensor, ctx: Context,
              residual: bool = False,
              held: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict[str, float]]:
        """Train a U-Net with L1 on ``(train_in, train_x)`` and apply it to ``test_in``.
        ``residual``: the inputs are analytic images in [0, 1] and the U-Net learns a correction
        added to them (at initialisation it returns about the analytic image). ``held``: pairs
        kept out of training, whose L1 after each epoch goes to the training curves."""
        o = self.options
        device = ctx.device
        out_c, H, W = train_x.shape[1:]
        num_downs = o.num_downs or auto_num_downs((H, W))
        side = max(2 ** num_downs, 32)
        if side < max(H, W):
            raise ConfigError(f"attacks.ppfr_whitebox.num_downs={o.num_downs} is too small for "
                              f"{H}x{W} images; use 0 (auto) or >= {auto_num_downs((H, W))}")
        grid = (side, side)
        norm = Standardizer(train_in)
        tr, te = norm(train_in), norm(test_in)
        target = train_x.float() * 2 - 1

        def cond(r: Tensor) -> Tensor:
            return pad_to(resize(r.to(device), (H, W)), grid)

        with seeded(ctx, self.name, "unet"):
            net = UnetGenerator(tr.shape[1], out_c, num_downs, o.ngf, use_dropout=False).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=o.lr, betas=(0.5, 0.999))
            net.train()

            def forward(r: Tensor, base: Tensor) -> Tensor:
                out = crop_to(net(cond(r)), (H, W))
                if residual:
                    out = (out + resize(base.to(device), (H, W)).float() * 2 - 1).clamp(-1, 1)
                return out

            def step(idx: Tensor) -> dict[str, Tensor]:
                opt.zero_grad(set_to_none=True)
                loss = F.l1_loss(forward(tr[idx], train_in[idx]), target[idx].to(device))
                loss.backward()
                opt.step()
                return {"l1": loss / 2}

            def held_out() -> dict[str, float]:
                # eval mode and no_grad: no BatchNorm statistic, weight or generator is touched
                net.eval()
                with torch.no_grad():
                    h_in, h_x = held
                    out = forward(norm(h_in).to(device), h_in)
                    l1 = F.l1_loss(out, h_x.float().to(device) * 2 - 1) / 2
                net.train()
                return {"l1": float(l1)}

            losses = train_epochs(self.name, len(tr), o.epochs, o.batch_size, step,
                                  ctx.generator(self.name, "shuffle"), ctx,
                                  held_out=held_out if held is not None else None)
            net.eval()
            both = torch.cat([te, test_in.float()], 1)
            k = te.shape[1]
            images = predict(lambda rb: ((forward(rb[:, :k], rb[:, k:]) + 1) / 2).clamp(0, 1),
                             both, max(o.batch_size, 32))
        return images, losses

    def _refine(self, train_a: Tensor, train_x: Tensor, test_a: Tensor,
                ctx: Context) -> tuple[Tensor, dict[str, Any]]:
        """Step 5: the residual U-Net refiner, per ``refine`` (``auto``: trained on all but a
        held-out share of the pairs and kept only if it beats the analytic image there — the
        attacker's own validation, no victim data)."""
        o = self.options
        out_c = train_x.shape[1]
        analytic = test_a.expand(-1, out_c, -1, -1) if test_a.shape[1] != out_c else test_a
        if o.refine == "never":
            return analytic.clamp(0, 1), {"refine": "never"}
        if o.refine == "always":
            images, losses = self._unet(train_a, train_x, test_a, ctx, residual=True)
            return images, {"refine": "always", "final_l1": losses.get("l1")}
        gen = ctx.generator(self.name, "refine_split")
        order = torch.randperm(len(train_a), generator=gen)
        n_val = max(1, int(round(len(train_a) * o.holdout)))
        val, fit = order[:n_val], order[n_val:]
        both = torch.cat([train_a[val], test_a])
        refined, losses = self._unet(train_a[fit], train_x[fit], both, ctx, residual=True,
                                     held=(train_a[val], train_x[val]))
        base = train_a[val].expand(-1, out_c, -1, -1) if train_a.shape[1] != out_c else train_a[val]
        l1_refined = float((refined[:n_val] - train_x[val]).abs().mean())
        l1_analytic = float((base - train_x[val]).abs().mean())
        use = l1_refined < l1_analytic
        info = {"refine": "used" if use else "rejected", "val_l1_refined": l1_refined,
                "val_l1_analytic": l1_analytic, "final_l1": losses.get("l1")}
        return (refined[n_val:] if use else analytic.clamp(0, 1)), info

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        check_leak(self.name, leak.train_inputs, leak.train_targets, leak.inputs)
        info: dict[str, Any] = {"knowledge": leak.extra.get("knowledge", self.knowledge),
                                "pairs": leak.extra.get("pairs"), "epochs": o.epochs,
                                "variant": "analytic+refine" if o.analytic else "simulated"}
        if o.analytic:
            out = self._analytic(leak, ctx)
            if isinstance(out, str):
                info["analytic"] = f"skipped: {out}"
            else:
                train_a, test_a, ainfo = out
                info["analytic"] = "ok"
                info.update(ainfo)
                images, rinfo = self._refine(train_a, leak.train_targets, test_a, ctx)
                info.update(rinfo)
                return Reconstruction(images, info=info)
        images, losses = self._unet(leak.train_inputs, leak.train_targets, leak.inputs, ctx)
        info["final_l1"] = losses.get("l1")
        return Reconstruction(images, info=info)

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        """The U-Net :meth:`run` trains (on the analytic gray image, or on the masked maps)."""
        o = self.options
        out_c, H, W = image_shape
        num_downs = o.num_downs or auto_num_downs((H, W))
        side = max(2 ** num_downs, 32)
        c_in = 1 if o.analytic else in_shape[0]
        net = UnetGenerator(c_in, out_c, num_downs, o.ngf, use_dropout=False)
        return {"unet": ModelSpec(net, (c_in, side, side))}


def _unique_faces(x: Tensor) -> Tensor:
    """Public faces without the repeats a multi-round leak makes (``leak_rounds``)."""
    flat = x.reshape(len(x), -1)
    _, idx = np.unique(flat.numpy().round(6), axis=0, return_index=True)
    return x[torch.as_tensor(np.sort(idx))]


ATTACKS.register("ppfr_whitebox")(PpfrWhiteboxAttack)
ATTACKS.register("ppfr_whitebox", variant="simulated", analytic=False)(PpfrWhiteboxAttack)
