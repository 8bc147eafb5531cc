"""`carlini`: the decoupling attack on mixtures of Carlini et al. (S&P'21) (ALGORITHMS §7.3,
[CODE carlini/privacy@instahide:research/instahide_attack_2020/]; our own code, scaled to the
harness's sizes).

Threat model (issue 11): the server receives every mixed training batch with its mixed labels, so
each private face appears in many encodings. The leak of a mixing defense carries that stream
(``Leak.extra["stream"]``: encodings, per-slot identity labels and coefficients; see
:meth:`defenses.mixup.MixingDefense.leak`) and the attacker's own simulation of the mechanism on
its public faces (``extra["train_stream"]``, membership known). Steps:

(a) Similarity. A small CNN ([ASSUMP] instead of the public code's WideResNet-28: a siamese tower
    of three stride-2 conv3×3-BN-ReLU stages → global pool, and a pair head MLP on
    ``(|f_a − f_b|, f_a·f_b)``, so scoring all E² pairs costs E tower passes) is trained with
    BCE on pairs of the attacker's own encodings: positives share a source face, negatives share
    none. Input: ``|e|`` for InstaHide (signs removed), ``e`` for MixUp, standardised per channel.
    Weights are averaged (EMA 0.99) as in the public code. [ASSUMP] pairs whose label sets are
    disjoint cannot share a source: their distance is set to the maximum (the server sees labels).
(b) Clusters. From every encoding as a seed, grow a set greedily (first addition random among the
    ``nearest_first`` nearest, then the node with the lowest summed distance to the set, only among
    encodings carrying a label the set shares) to half the expected size; keep the tightest growths
    whose overlap with every kept cluster is under ``overlap``; stop at the expected number of
    private faces. [ASSUMP] the attacker knows that number (``stream["n_private"]``: the size of the
    victim's training set, which the server sees as the rows per epoch). A second pass grows each
    kept cluster to the expected size E·k̄/N.
    The labels the attack reads are what the server sees (``server_labels``, below).
(c) Assignment. Cluster label = majority label of its members. [ASSUMP] instead of the public
    code's second network, the encoding × cluster distance is the mean pair distance to the
    cluster's ``assign_nearest`` nearest members. Each encoding's slots (largest λ first) are
    assigned greedily to the nearest cluster carrying the slot's label (never twice the same
    cluster); an encoding with a slot no cluster matches is left out of the solve.
(d) Solve. ``M = Σ λ_i P_{c_i}``; residual ``sign(M)·|e| − M`` (the smaller in magnitude of
    ``|e| − M`` and ``−(|e| + M)``) for InstaHide, ``e − M`` for MixUp; loss
    ``mean(residual²) + reg·mean(1 − |P|)``; Adam lr 0.01, ``solve_steps`` steps from P = 0.
    [ASSUMP] the regulariser assumes pixels in [−1, 1]: it is used (0.05, with P clamped to
    [−1, 1]) in the pixel space only; frequency and masked tensors are solved in per-channel
    standardised units (scales from the attacker's own unmixed public representations) with no
    regulariser. Without it the MixUp loss is linear least squares, whose minimiser ``solver="auto"``
    computes in closed form (ridge 1e-6) instead of by Adam. [ASSUMP] for the ×8-upsampled BDCT
    only the highest-energy channels holding ``solve_energy`` of the public representations' energy
    are solved (the rest are set to the public mean): at 0.99999 this keeps a handful of the 64
    channels and changes the inverse by < 1e-3 SSIM on ORL, at a tenth of the cost.
    InstaHide leaves one exact symmetry per element (flipping that element in every image):
    [ASSUMP] each element takes the sign that agrees with the public mean representation.
(e) Images. Pixel space: ``(P + 1)/2``. Full BDCT (MixUp-FD / InstaHide-FD): analytic inverse
    BDCT (area-downsampled back from the ×8 upsampled image), clamped to [0, 1]. Masked spaces
    (Masking+MixUp, AdaMixUp): a ResRec decoder (attacks/decoders.py) trained with L1 on the
    attacker's public (masked, unmixed → image) pairs (``extra["unmixed_train_inputs"]``).
    Note: with PPFR-FD's default ``perm_mode='per_sample'`` every encoding of a face is masked with
    fresh permutations, so no fixed masked tensor P exists; the solve then returns a blend and the
    chain is expected to fail (which is the defense's point, measured rather than assumed).

What the server sees of the labels (issue 20; ``server_labels``). The mixing defenses mix each
training batch with itself ([H] §4.1 "the mixed images used in this work come from the same
batch"; §2 step 1), so every slot of a mixture is a *private training face*, never a public one
(unlike InstaHide's cross-dataset mode, whose public slots carry no label); the server knows each
one's training class because it trains on it: "labels are represented by weighted one-hot
vectors, [...] the non-zero value is [...] the randomly generated weighting coefficients" ([H]
§4.1). The mixed-label ArcFace (§0.3) is a function of that vector alone (two slots of one class
give the same loss terms as one slot with their summed weight), so a deployment needs to send no
more: the server sees, per encoding, the classes present and their summed weights — not which
slot (the batch's own face, slot 0) holds which class, nor two slots of one class apart.
``server_labels="mixed"`` (default) runs the attack on exactly that (:func:`server_view`: each
encoding's (class, weight) pairs in decreasing weight); ``"per_slot"`` reads the stream's per-slot
labels in slot order, as the harness stores them — more than a server sees (the attack before
issue 20). ``info["server_labels"]`` and ``info["server_sees"]`` record it.

Rows: ``Reconstruction.images[i]`` reconstructs ``leak.inputs[i]`` = stream encoding ``i``
(round 0), whose slot 0 holds test face ``i``. With ``server_labels="mixed"`` the attacker cannot
tell slot 0 from the others: row ``i`` is the recovered image of the cluster assigned to the
encoding's heaviest class (its dominant face) [ASSUMP]; with ``"per_slot"`` the cluster assigned
to slot 0 (which the slot order gives away).

``assignment="oracle"`` (variant ``carlini.oracle``, ``uses_oracle``): the clusters are the true
memberships from ``Leak.oracle["stream_members"]`` (the pipeline hands the oracle only to attacks
declaring ``uses_oracle``): an upper bound, labelled ``upper_bound`` in ``Reconstruction.info``.
The oracle reads per-slot membership, so it keeps the per-slot view. After the reconstruction is
fixed, :meth:`CarliniAttack.diagnose` scores it against the ground truth (cluster purity,
best-match SSIM/PSNR per private face and the share above ``ssim_threshold``, slot-0 mapping
accuracy: the share of rows whose cluster is the row's own face) into ``Reconstruction.info``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.base import Attack
from bench.core.context import Context, seeded
from bench.core.contract import Leak, ModelSpec, Reconstruction
from bench.core.errors import ConfigError, TrainingError
from bench.core.registry import ATTACKS
from bench.core.training import (Standardizer, check_positive, predict, train_epochs,
                                 train_l1_decoder)

ASSIGNMENTS = ("learned", "oracle")
SOLVERS = ("auto", "adam", "lstsq")
SERVER_LABELS = ("mixed", "per_slot")
#: What the server of a mixing defense sees of an encoding's labels (recorded with every cell).
SERVER_SEES = ("the weighted one-hot label of each encoding ([H] 4.1): the training classes it "
               "mixes and their summed weights; no slot order, no slot of a public face")


# -- (a) similarity network -------------------------------------------------------------------------
class SimilarityNet(nn.Module):
    """Siamese tower (3 × conv3×3 s2-BN-ReLU → global average pool) and a pair head on
    ``(|f_a − f_b|, f_a·f_b)`` giving the logit of "share a source"."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.tower = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, 1))

    def embed(self, x: Tensor) -> Tensor:
        return self.tower(x)

    def pair(self, fa: Tensor, fb: Tensor) -> Tensor:
        return self.head(torch.cat([(fa - fb).abs(), fa * fb], -1)).squeeze(-1)

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        return self.pair(self.embed(xa), self.embed(xb))


def member_sets(members: Tensor) -> list[set[int]]:
    return [set(int(m) for m in row if m >= 0) for row in members]


def train_similarity(x: Tensor, members: Tensor, width: int, steps: int, batch: int, lr: float,
                     ema: float, gen: torch.Generator, device: torch.device,
                     progress_ctx: Context) -> tuple[SimilarityNet, float]:
    """BCE on balanced pairs of the attacker's own encodings ``x`` (positives share a member)."""
    sets = member_sets(members)
    by_source: dict[int, list[int]] = {}
    for e, s in enumerate(sets):
        for m in s:
            by_source.setdefault(m, []).append(e)
    pos = [(a, b) for enc in by_source.values() for i, a in enumerate(enc) for b in enc[i + 1:]]
    if not pos:
        raise TrainingError("carlini: the attacker's simulated stream has no two encodings "
                            "sharing a face; more simulation rounds are needed")
    pos_t = torch.tensor(pos, dtype=torch.long)
    net = SimilarityNet(x.shape[1], width).to(device)
    avg = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    half = max(1, batch // 2)
    n = len(x)

    def step(_: Tensor) -> dict[str, Tensor]:
        p = pos_t[torch.randint(len(pos_t), (half,), generator=gen)]
        neg = []
        while len(neg) < half:
            a, b = torch.randint(n, (2,), generator=gen).tolist()
            if a != b and not (sets[a] & sets[b]):
                neg.append((a, b))
        pairs = torch.cat([p, torch.tensor(neg, dtype=torch.long)])
        flip = torch.rand(len(pairs), generator=gen) < 0.5  # symmetric in (a, b)
        pairs[flip] = pairs[flip].flip(1)
        y = torch.cat([torch.ones(half), torch.zeros(half)]).to(device)
        logits = net(x[pairs[:, 0]].to(device), x[pairs[:, 1]].to(device))
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pa, pn in zip(avg.parameters(), net.parameters()):
                pa.mul_(ema).add_(pn, alpha=1 - ema)
            for ba, bn in zip(avg.buffers(), net.buffers()):
                ba.copy_(bn)
        acc = ((logits > 0).float() == y).float().mean()
        return {"bce": loss.detach(), "acc": acc}

    losses = train_epochs("carlini-similarity", steps, 1, 1, step, gen, progress_ctx,
                          lr_option="sim_lr")
    avg.eval()
    return avg, float(losses.get("acc", float("nan")))


@torch.no_grad()
def pair_distances(net: SimilarityNet, x: Tensor, device: torch.device, chunk: int = 64) -> Tensor:
    """``[E, E]`` distance ``1 − P(same source)``, symmetrised, 0 on the diagonal."""
    f = predict(lambda b: net.embed(b.to(device)), x, 128).to(device)
    rows = []
    for i in range(0, len(f), chunk):
        fa = f[i:i + chunk, None, :].expand(-1, len(f), -1)
        rows.append(torch.sigmoid(net.pair(fa, f[None].expand(len(fa), -1, -1))).cpu())
    d = 1.0 - torch.cat(rows)
    d = (d + d.T) / 2
    d.fill_diagonal_(0.0)
    return d


def label_sets(labels: Tensor) -> list[set[int]]:
    return [set(int(v) for v in row if v >= 0) for row in labels]


def disjoint_label_mask(labels: Tensor) -> Tensor:
    """``[E, E]`` True where two encodings carry no common label (they cannot share a source)."""
    lab = labels.clone()
    n_lab = int(lab.max()) + 1 if (lab >= 0).any() else 1
    onehot = torch.zeros(len(lab), n_lab)
    for j in range(lab.shape[1]):
        ok = lab[:, j] >= 0
        onehot[ok.nonzero().flatten(), lab[ok, j]] = 1.0
    return (onehot @ onehot.T) == 0


# -- (b) clusters ----------------------------------------------------------------------------------
def grow_clusters(dist: Tensor, labels: Tensor, n_clusters: int, size: int, nearest_first: int = 3,
                  overlap: float = 0.5, gen: torch.Generator | None = None) -> list[list[int]]:
    """Greedy cluster growth (§7.3 step 2). ``dist [E, E]`` pair distances (inf/large where two
    encodings cannot share a source), ``labels [E, k]`` per-slot labels (−1 padded). Returns
    ``n_clusters`` member lists (fewer only if the stream is too small)."""
    gen = gen or torch.Generator().manual_seed(0)
    e = len(dist)
    lab_sets = label_sets(labels)
    n_lab = int(labels.max()) + 1 if (labels >= 0).any() else 1
    carries = torch.zeros(n_lab, e, dtype=torch.bool)
    for i, s in enumerate(lab_sets):
        for v in s:
            carries[v, i] = True
    big = float(dist[torch.isfinite(dist)].max()) + 1.0 if torch.isfinite(dist).any() else 1.0
    d = torch.where(torch.isfinite(dist), dist, torch.full_like(dist, big))
    size0 = max(2, min(size, math.ceil(size / 2)))

    def grow(members: list[int], common: set[int], target: int) -> list[int]:
        members = list(members)
        total = d[members].sum(0)
        while len(members) < target:
            allowed = carries[sorted(common)].any(0) if common else torch.ones(e, dtype=torch.bool)
            score = total.clone()
            score[~allowed] = float("inf")
            score[members] = float("inf")
            j = int(score.argmin())
            if not math.isfinite(float(score[j])):
                break
            members.append(j)
            total += d[j]
            common = (common & lab_sets[j]) or common
        return members

    growths: list[tuple[float, list[int]]] = []
    for s in torch.randperm(e, generator=gen).tolist():
        row = d[s].clone()
        row[s] = float("inf")
        few = row.topk(min(nearest_first, e - 1), largest=False).indices
        first = int(few[torch.randint(len(few), (1,), generator=gen)])
        common = lab_sets[s] & lab_sets[first]
        if not common:
            continue
        members = grow([s, first], common, size0)
        sub = d[members][:, members]
        tight = float(sub.sum() / max(1, len(members) * (len(members) - 1)))
        growths.append((tight, members))
    growths.sort(key=lambda t: t[0])
    # Keep the tightest growths, each grown to the full expected size (the second pass) before
    # its overlap with the kept clusters is checked, so two half-size growths of one source
    # (possibly disjoint) are not both kept; relax the rule only if clusters are missing.
    kept: list[list[int]] = []
    full: dict[int, list[int]] = {}
    for limit in (overlap, 1.0 - 1e-9):
        for i, (_, members) in enumerate(growths):
            if len(kept) >= n_clusters:
                break
            if i not in full:
                common = (lab_sets[members[0]] & lab_sets[members[1]]) or lab_sets[members[0]]
                full[i] = grow(members, common, size)
            ms = set(full[i])
            if any(len(ms & set(k)) >= limit * len(ms) for k in kept):
                continue
            kept.append(full[i])
    return kept


def cluster_labels(clusters: list[list[int]], labels: Tensor) -> list[int]:
    """Majority label of each cluster's members (−1 when none)."""
    out = []
    for members in clusters:
        counts: dict[int, int] = {}
        for m in members:
            for v in label_sets(labels[m:m + 1])[0]:
                counts[v] = counts.get(v, 0) + 1
        out.append(max(counts, key=lambda v: counts[v]) if counts else -1)
    return out


def assign(dist: Tensor, clusters: list[list[int]], clabels: list[int], labels: Tensor,
           coeffs: Tensor, nearest: int = 5) -> Tensor:
    """§7.3 step 3: ``[E, k]`` cluster index per slot (−1 when unassigned). Slots in order of
    decreasing λ take the nearest cluster carrying their label, each cluster at most once."""
    e = len(dist)
    dc = torch.empty(e, len(clusters))
    for c, members in enumerate(clusters):
        sub = dist[:, members]
        dc[:, c] = sub.topk(min(nearest, len(members)), dim=1, largest=False).values.mean(1)
    clab = torch.tensor(clabels)
    out = torch.full(labels.shape, -1, dtype=torch.long)
    for i in range(e):
        used: set[int] = set()
        for j in coeffs[i].argsort(descending=True).tolist():
            v = int(labels[i, j])
            if v < 0:
                continue
            cand = (clab == v).nonzero().flatten().tolist()
            cand = [c for c in cand if c not in used]
            if not cand:
                continue
            best = min(cand, key=lambda c: float(dc[i, c]))
            out[i, j] = best
            used.add(best)
    return out


def server_view(labels: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """What the server sees of per-slot ``labels [E, k]`` and ``coeffs [E, k]`` (−1 / 0 padded):
    each encoding's weighted one-hot label (module docstring) as (class, summed weight) pairs in
    decreasing weight (ties: smaller class first), −1 / 0 padded to ``k``. Slot order is gone and
    two slots of one class are one entry."""
    out_l = torch.full_like(labels, -1)
    out_c = torch.zeros_like(coeffs)
    for i, (row_l, row_c) in enumerate(zip(labels.tolist(), coeffs.tolist())):
        weight: dict[int, float] = {}
        for v, c in zip(row_l, row_c):
            if v >= 0 and c > 0:
                weight[v] = weight.get(v, 0.0) + c
        for j, (v, c) in enumerate(sorted(weight.items(), key=lambda t: (-t[1], t[0]))):
            out_l[i, j], out_c[i, j] = v, c
    return out_l, out_c


# -- (d) solve -------------------------------------------------------------------------------------
def mixing_matrix(slots: Tensor, coeffs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Dense ``A [E', n]`` with ``A[e, c] = Σ λ`` over e's slots assigned to c, for the encodings
    whose every slot is assigned; and those encodings' indices."""
    real = coeffs > 0
    ok = ((slots >= 0) | ~real).all(1) & real.any(1)
    rows = ok.nonzero().flatten()
    a = torch.zeros(len(rows), n)
    for j in range(slots.shape[1]):
        s, c = slots[rows, j], coeffs[rows, j]
        m = s >= 0
        a.index_put_((torch.arange(len(rows))[m], s[m]), c[m], accumulate=True)
    return a, rows


def solve(a: Tensor, t: Tensor, signs: bool, steps: int, lr: float, reg: float, clamp: bool,
          solver: str = "auto", device: torch.device | str = "cpu") -> tuple[Tensor, float]:
    """Unknown originals ``P [n, D]`` from encodings ``t [E, D] ≈ A P`` (±1 per element when
    ``signs``). Returns P and the final mean squared residual."""
    a, t = a.to(device), t.to(device)
    n = a.shape[1]
    if solver == "lstsq" or (solver == "auto" and not signs and reg == 0 and not clamp):
        gram = a.T @ a + 1e-6 * torch.eye(n, device=device)
        p = torch.linalg.solve(gram, a.T @ t)
        return p.cpu(), float(((t - a @ p) ** 2).mean())
    p = torch.zeros(n, t.shape[1], device=device, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr)
    target = t.abs() if signs else t
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        pc = p.clamp(-1, 1) if clamp else p
        m = a @ pc
        r = torch.where(m >= 0, target, -target) - m if signs else target - m
        loss = (r ** 2).mean()
        total = loss + reg * (1 - pc.abs()).mean() if reg else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    out = (p.clamp(-1, 1) if clamp else p).detach()
    return out.cpu(), float(loss.detach())


# -- the attack ------------------------------------------------------------------------------------
def _variants(cls: type) -> type:
    ATTACKS.register("carlini")(cls)
    ATTACKS.register("carlini", variant="oracle", assignment="oracle")(cls)
    return cls


@_variants
class CarliniAttack(Attack):
    """Carlini et al.'s decoupling attack on mixtures (ALGORITHMS §7.3); module docstring."""

    family = "decoupling"  # ALGORITHMS §15 (issue 19: attack metadata, do not drop)
    floor_note = "n/a on none (decouples mixtures)"


    requires = ("stream", "train_stream")

    @dataclass
    class Options(Attack.Options):
        assignment: str = "learned"  # learned | oracle (upper bound, needs Leak.oracle)
        server_labels: str = "mixed"  # mixed (what a server sees) | per_slot (module docstring)
        sim_width: int = 32  # [ASSUMP] small CNN (public code: WideResNet-28)
        sim_steps: int = 400  # [ASSUMP]
        sim_batch: int = 64
        sim_lr: float = 1e-3  # [ASSUMP] Adam
        sim_ema: float = 0.99
        nearest_first: int = 3  # first addition random among the nearest few
        overlap: float = 0.5  # a kept cluster overlaps every other kept one by less than this
        assign_nearest: int = 5  # members averaged in the encoding × cluster distance
        solver: str = "auto"  # auto (closed form when the loss is linear least squares) | adam | lstsq
        solve_steps: int = 1000
        solve_lr: float = 0.01
        reg_weight: float = 0.05  # pixel space only (module docstring)
        solve_energy: float = 0.99999  # ×8-upsampled BDCT: channels solved (module docstring)
        epochs: int = 60  # masked spaces: epochs of the masked → image ResRec decoder
        decoder_width: int = 32
        ssim_threshold: float = 0.5  # "recovered" in the diagnostics [ASSUMP]

        def validate(self) -> None:
            Attack.Options.validate(self)
            if self.assignment not in ASSIGNMENTS:
                raise ConfigError(f"attacks.carlini.assignment must be one of {ASSIGNMENTS}, "
                                  f"got {self.assignment!r}")
            if self.server_labels not in SERVER_LABELS:
                raise ConfigError(f"attacks.carlini.server_labels must be one of {SERVER_LABELS}, "
                                  f"got {self.server_labels!r}")
            if self.solver not in SOLVERS:
                raise ConfigError(f"attacks.carlini.solver must be one of {SOLVERS}, got {self.solver!r}")
            check_positive("attacks.carlini", sim_width=self.sim_width, sim_steps=self.sim_steps,
                           sim_batch=self.sim_batch, sim_lr=self.sim_lr, nearest_first=self.nearest_first,
                           overlap=self.overlap, assign_nearest=self.assign_nearest,
                           solve_steps=self.solve_steps, solve_lr=self.solve_lr,
                           epochs=self.epochs, decoder_width=self.decoder_width,
                           solve_energy=self.solve_energy)
            if not 0 <= self.sim_ema < 1 or self.reg_weight < 0 or self.solve_energy > 1:
                raise ConfigError("attacks.carlini: sim_ema must be in [0, 1), reg_weight >= 0, "
                                  "solve_energy in (0, 1]")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._state: dict[str, Any] = {}

    @property
    def uses_oracle(self) -> bool:
        return self.options.assignment == "oracle"

    def not_applicable(self, defense: Any) -> str | None:
        from defenses.mixup import MixingDefense

        if isinstance(defense, MixingDefense):
            return None
        return (f"attack carlini decouples mixtures; defense "
                f"{getattr(defense, 'name', type(defense).__name__)} does not mix")

    # -- representations the attacker computes from its own public faces -----------------------
    @staticmethod
    def public_representation(leak: Leak, space: str, upsample: bool | None) -> Tensor | None:
        faces = leak.train_targets
        n_aux = int(leak.extra["train_stream"]["n_private"])
        faces = faces[:n_aux]
        if space == "pixel":
            return faces * 2 - 1
        if space == "bdct":
            from defenses.bdct import bdct_image

            return bdct_image(faces, upsample=bool(upsample))
        return leak.extra.get("unmixed_train_inputs")

    def run(self, leak: Leak, ctx: Context) -> Reconstruction:
        o = self.options
        if "stream" not in leak.extra or "train_stream" not in leak.extra:
            raise TrainingError("carlini: the leak has no mixing stream (extra['stream']); "
                                "it applies to the mixing defenses only")
        stream, tstream = leak.extra["stream"], leak.extra["train_stream"]
        mixing = leak.extra.get("mixing", {})
        space, signs = mixing.get("space", "bdct"), bool(mixing.get("signs", False))
        upsample = mixing.get("upsample")
        device = ctx.device
        z, labels, coeffs = stream["inputs"].float(), stream["labels"], stream["coefficients"]
        n_priv, n_enc = int(stream["n_private"]), len(stream["inputs"])
        # the oracle's membership is per slot; a learned attack reads what the server sees
        view = "per_slot" if self.uses_oracle else o.server_labels
        if view == "mixed":
            labels, coeffs = server_view(labels, coeffs)
        info: dict[str, Any] = {"assignment": o.assignment, "upper_bound": self.uses_oracle,
                                "server_labels": view, "server_sees": SERVER_SEES,
                                "space": space, "signs": signs, "n_private": n_priv,
                                "n_encodings": n_enc, "stream_rounds": stream.get("rounds"),
                                "stream_bytes": leak.extra.get("stream_bytes"),
                                "knowledge": self.knowledge}
        if self.uses_oracle:
            info["note"] = "oracle assignment: true membership (upper bound, not an attack)"
        public = self.public_representation(leak, space, upsample)
        if public is None:
            raise TrainingError("carlini: the leak lacks the attacker's unmixed public "
                                "representations (extra['unmixed_train_inputs'])")
        public = public.float()
        chans = self.solve_channels(public, space, upsample)
        scale = public[:, chans].std(dim=(0, 2, 3)).clamp_min(1e-8).view(1, -1, 1, 1)
        mean_pub = public.mean(0, keepdim=True)
        info["solve_channels"] = len(chans)

        # (a)–(c): clusters and per-slot assignment
        clock = time.perf_counter()
        if self.uses_oracle:
            if "stream_members" not in leak.oracle:
                raise TrainingError("carlini.oracle needs Leak.oracle['stream_members'] (the "
                                    "pipeline passes it to attacks declaring uses_oracle)")
            slots = leak.oracle["stream_members"].clone()
            slots[coeffs <= 0] = -1
            clusters = [(slots == c).any(1).nonzero().flatten().tolist() for c in range(n_priv)]
            n_clusters = n_priv
        else:
            feats = self.features(z[:, chans] / scale, signs)
            tfeats = self.features(tstream["inputs"].float()[:, chans] / scale, signs)
            with seeded(ctx, self.name, "similarity"):
                net, acc = train_similarity(tfeats, tstream["members"], o.sim_width, o.sim_steps,
                                            o.sim_batch, o.sim_lr, o.sim_ema,
                                            ctx.generator(self.name, "pairs"), device, ctx)
            info["similarity_train_acc"] = acc
            info["seconds_similarity"] = time.perf_counter() - clock
            dist = pair_distances(net, feats, device)
            dist[disjoint_label_mask(labels)] = float("inf")
            k_mean = float((coeffs > 0).sum(1).float().mean())
            size = max(2, round(n_enc * k_mean / n_priv))
            clusters = grow_clusters(dist, labels, n_priv, size, o.nearest_first, o.overlap,
                                     ctx.generator(self.name, "clusters"))
            n_clusters = len(clusters)
            clabels = cluster_labels(clusters, labels)
            slots = assign(torch.where(torch.isfinite(dist), dist, torch.full_like(dist, 2.0)),
                           clusters, clabels, labels, coeffs, o.assign_nearest)
            info["cluster_size"] = size
        info["n_clusters"] = n_clusters
        info["seconds_clusters"] = time.perf_counter() - clock - info.get("seconds_similarity", 0.0)
        clock = time.perf_counter()

        # (d): solve in standardised units on the selected channels
        a, rows = mixing_matrix(slots, coeffs, n_clusters)
        info["encodings_used"] = int(len(rows))
        info["encodings_per_image"] = float((a > 0).sum(0).float().mean()) if len(rows) else 0.0
        pixel = space == "pixel"
        t = (z[rows][:, chans] / scale).flatten(1)
        if pixel:
            t = z[rows][:, chans].flatten(1)
        p, resid = solve(a, t, signs, o.solve_steps, o.solve_lr,
                         o.reg_weight if pixel else 0.0, clamp=pixel, solver=o.solver, device=device)
        info["solve_residual"] = resid
        info["seconds_solve"] = time.perf_counter() - clock
        clock = time.perf_counter()
        shape = (n_clusters, len(chans)) + tuple(z.shape[2:])
        p = p.view(shape) if pixel else p.view(shape) * scale
        if signs:  # the per-element global sign symmetry: agree with the public mean
            prior = mean_pub[:, chans]
            flip = (p.sum(0, keepdim=True) * prior) < 0
            p = torch.where(flip, -p, p)
        full = mean_pub.expand(n_clusters, -1, -1, -1).clone()
        full[:, chans] = p

        # (e): to images
        out_shape = tuple(leak.train_targets.shape[1:])
        images = self.to_images(full, space, upsample, out_shape, leak, ctx)
        info["seconds_images"] = time.perf_counter() - clock

        # rows: slot 0 of stolen encoding i
        n_rows = len(leak.inputs)
        pick = slots[:n_rows, 0].clone()
        missing = pick < 0
        for i in missing.nonzero().flatten().tolist():  # slot 0 unassigned: another slot's cluster
            other = slots[i][slots[i] >= 0]
            pick[i] = int(other[0]) if len(other) else 0
        info["rows_without_slot0_cluster"] = int(missing.sum())
        recon = images[pick] if n_clusters else torch.zeros((n_rows,) + out_shape)
        self._state = {"clusters": clusters, "slots": slots, "cluster_images": images, "pick": pick}
        return Reconstruction(recon.clamp(0, 1), info=info)

    @staticmethod
    def features(x: Tensor, signs: bool) -> Tensor:
        x = x.abs() if signs else x
        norm = Standardizer(x)
        return norm(x)

    def solve_channels(self, public: Tensor, space: str, upsample: bool | None) -> list[int]:
        """All channels, except for the ×8-upsampled BDCT: the highest-energy ones holding
        ``solve_energy`` of the public representations' energy (module docstring)."""
        c = public.shape[1]
        if space != "bdct" or not upsample or self.options.solve_energy >= 1:
            return list(range(c))
        energy = (public ** 2).mean(dim=(0, 2, 3))
        order = energy.argsort(descending=True)
        cum = energy[order].cumsum(0) / energy.sum().clamp_min(1e-12)
        n = int((cum < self.options.solve_energy).sum()) + 1
        return sorted(order[:min(n, c)].tolist())

    def to_images(self, full: Tensor, space: str, upsample: bool | None,
                  out_shape: tuple[int, ...], leak: Leak, ctx: Context) -> Tensor:
        if len(full) == 0:
            return torch.zeros((0,) + tuple(out_shape))
        if space == "pixel":
            img = (full + 1) / 2
        elif space == "bdct":
            from defenses.bdct import ibdct

            img = ibdct(full)
            if tuple(img.shape[-2:]) != tuple(out_shape[-2:]):
                img = F.interpolate(img, size=tuple(out_shape[-2:]), mode="area")
        else:
            img = self.decode_masked(full, leak, out_shape, ctx)
        if img.shape[1] != out_shape[0]:
            img = img.expand(-1, out_shape[0], -1, -1) if img.shape[1] == 1 else img.mean(1, keepdim=True)
        return img.clamp(0, 1)

    def decode_masked(self, p: Tensor, leak: Leak, out_shape: tuple[int, ...], ctx: Context) -> Tensor:
        """Masked → image ResRec decoder trained with L1 on the attacker's public pairs."""
        from bench.backbones.decoders import build_decoder

        o = self.options
        masked = leak.extra["unmixed_train_inputs"].float()
        faces = leak.train_targets[:len(masked)].float()
        norm = Standardizer(masked)
        xr = norm(masked)
        device = ctx.device
        net, _ = train_l1_decoder(
            "carlini-decoder", lambda: build_decoder("resrec", tuple(xr.shape[1:]), tuple(out_shape),
                                                     o.decoder_width),
            xr, faces, epochs=o.epochs, batch_size=16, lr=1e-3, ctx=ctx,
            init_salt=(self.name, "decoder"), shuffle=ctx.generator(self.name, "decoder"))
        return predict(lambda r: net(r.to(device)), norm(p), 64)

    # -- ground-truth diagnostics (called by the pipeline with the full leak, after run) -----------
    def diagnose(self, leak: Leak, recon: Reconstruction) -> dict[str, Any]:
        """Cluster purity, best-match SSIM/PSNR per private face (the published metric) and the
        share above ``ssim_threshold``, slot-0 mapping accuracy. Needs ``leak.targets`` and
        ``leak.oracle``; only for reporting (the reconstruction is already fixed)."""
        st = self._state
        if not st or leak.targets is None:
            return {}
        return diagnostics(st["clusters"], st["pick"], st["cluster_images"], leak,
                           self.options.ssim_threshold)

    def training_models(self, in_shape: tuple[int, ...],
                        image_shape: tuple[int, int, int]) -> dict[str, ModelSpec]:
        """The masked → image decoder (trained for masked spaces only; ``epochs``) and, in
        learned mode, the similarity tower (run on ``sim_steps × sim_batch`` encodings)."""
        from bench.backbones.decoders import build_decoder

        o = self.options
        specs = {"decoder": ModelSpec(build_decoder("resrec", tuple(in_shape), tuple(image_shape),
                                                    o.decoder_width), tuple(in_shape))}
        if not self.uses_oracle:
            specs["similarity"] = ModelSpec(SimilarityNet(in_shape[0], o.sim_width).tower,
                                            tuple(in_shape), passes=3.0)
        return specs


def diagnostics(clusters: list[list[int]], pick: Tensor, images: Tensor, leak: Leak,
                threshold: float) -> dict[str, Any]:
    """Ground-truth scores of a finished run: ``pick [N]`` the cluster each row was given."""
    from metrics.image import psnr, ssim

    members = leak.oracle.get("stream_members")
    targets = leak.targets.float()
    n = len(targets)
    out: dict[str, Any] = {"ssim_threshold": threshold}
    majority = []
    if members is not None and clusters:
        msets = member_sets(members)
        purities = []
        for cl in clusters:
            counts: dict[int, int] = {}
            for e in cl:
                for m in msets[e]:
                    counts[m] = counts.get(m, 0) + 1
            best = max(counts, key=lambda m: counts[m]) if counts else -1
            majority.append(best)
            purities.append(counts.get(best, 0) / max(1, len(cl)))
        out["purity"] = float(sum(purities) / len(purities))
        out["distinct_sources_found"] = len(set(majority) - {-1})
        # rows whose cluster is their own (slot-0) face
        own = [0 <= int(c) < len(majority) and majority[int(c)] == i for i, c in enumerate(pick[:n])]
        out["slot0_mapping_accuracy"] = float(sum(own) / n)
    if len(images):
        from bench.core.contract import Reconstruction  # noqa: F401  (typing only)

        best_s = torch.full((n,), -1.0)
        best_p = torch.zeros(n)
        imgs = images.float()
        if imgs.shape[1] != targets.shape[1]:
            imgs = imgs.mean(1, keepdim=True).expand(-1, targets.shape[1], -1, -1)
        for c in range(len(imgs)):
            s = ssim(targets, imgs[c:c + 1].expand_as(targets))
            better = s > best_s
            best_s = torch.where(better, s, best_s)
            best_p = torch.where(better, psnr(targets, imgs[c:c + 1].expand_as(targets)), best_p)
        out["best_match_ssim"] = float(best_s.mean())
        out["best_match_psnr"] = float(best_p.mean())
        out["share_recovered"] = float((best_s >= threshold).float().mean())
    return out
