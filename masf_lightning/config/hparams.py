"""The hyperparameter registry: each method hyperparameter written once — its default (per backbone where it
differs), its rule and its random-search distribution, with where each comes from.

Everything else reads it: the `hparams` config node (`${hparam:KEY}`, registered with Hydra in `register`),
the config check (`config/schema.py` builds its HParams rules from here), the method configs (`KEY:
${hparams.KEY}`) and through them the constructors, which take no defaults of their own. `hparams_seed=0`
gives the defaults; K >= 1 draw K of every distribution for (method, backbone, task), the same for every
target and training seed (DomainBed's protocol). A key given on the command line wins over both.

    python -m masf_lightning.config --hparams    # the registry as a Markdown table
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from typing import Any

from masf_lightning.choices import CLASS_AVERAGES, LAYOUTS, REDUCTIONS
from masf_lightning.config.rules import NON_NEGATIVE, POSITIVE, Rule
from masf_lightning.config.search import FIXED, Dist, IntUniform, LogUniform, OctaveRange, Uniform, draw_seed

Backbone = str  # the backbone builder's name: `backbone._target_`'s last part (small, alexnet, resnet18, foundation)


@dataclass(frozen=True)
class PerBackbone:
    """A default or distribution that differs by backbone (a from-scratch CNN is not a pretrained AlexNet)."""

    values: dict[Backbone, Any]

    def get(self, backbone: Backbone, name: str) -> Any:
        if backbone not in self.values:
            raise KeyError(f"the hyperparameter registry has no {name} for backbone {backbone} (add it in masf_lightning/config/hparams.py)")
        return self.values[backbone]


def per_backbone(**values: Any) -> PerBackbone:
    return PerBackbone(values)


@dataclass(frozen=True)
class HParam:
    name: str
    type: Any  # the annotation the config check enforces
    rule: Rule
    default: Any  # a value, or PerBackbone
    search: Dist | PerBackbone
    means: str  # what it is, in the paper's terms
    source: str  # where the default and the distribution come from

    def default_for(self, backbone: Backbone) -> Any:
        return self.default.get(backbone, self.name) if isinstance(self.default, PerBackbone) else self.default

    def dist_for(self, backbone: Backbone) -> Dist:
        return self.search.get(backbone, self.name) if isinstance(self.search, PerBackbone) else self.search


def _hp(name: str, type: Any, rule: dict[str, Any], default: Any, search: Dist | PerBackbone, means: str, source: str) -> HParam:
    return HParam(name, type, Rule(**rule), default, search, means, source)


# Learning rates each backbone trains well at; the paper sets α = η = γ (Sec. 4.1: 1e-5 for AlexNet). A foundation
# model (models/foundation.py: a pretrained ViT + a fresh adapter, frozen or fine-tuned): 1e-4, the top of the three
# rates UNI's benchmarks sweep for heads and fine-tuning (1e-5, 5e-5, 1e-4; github.com/mahmoodlab/UNI README).
LR = per_backbone(small=1e-3, alexnet=1e-5, resnet18=1e-4, foundation=1e-4)
# DomainBed's lr: 10^U(-4.5, -2.5) for its small-image CNN, 10^U(-5, -3.5) for its ImageNet ResNets; a foundation
# model: 10^U(-5, -3), from fine-tuning a ViT (1e-5) to an adapter on frozen features (1e-3, a linear probe's rate).
LR_SEARCH = per_backbone(small=LogUniform(10**-4.5, 10**-2.5), alexnet=LogUniform(1e-5, 10**-3.5), resnet18=LogUniform(1e-5, 10**-3.5),
                         foundation=LogUniform(1e-5, 1e-3))  # fmt: skip
# α: "no inner step" to a full SGD step; MAML's α is 0.01–0.4 for small CNNs (Finn et al. 2017).
INNER_LR_SEARCH = per_backbone(small=LogUniform(1e-4, 1e-1), alexnet=LogUniform(1e-6, 1e-3), resnet18=LogUniform(1e-6, 1e-3),
                               foundation=LogUniform(1e-6, 1e-3))  # fmt: skip
UNSEARCHED = "a variant of the method, named by the comparison (not searched)"

REGISTRY: tuple[HParam, ...] = (
    # -- every method -------------------------------------------------------------------------------------
    _hp("lr", float, POSITIVE, LR, LR_SEARCH, "η: every method's Adam (Eq. 11; DeepAll, MLDG, CORAL)",
        "default: the paper (AlexNet), source validation (small CNN), the top of UNI's benchmark sweep (foundation models); "
        "search: DomainBed (foundation models: from fine-tuning's 1e-5 to a probe's 1e-3)"),
    _hp("weight_decay", float, NON_NEGATIVE, 0.0, LogUniform(1e-6, 1e-2), "Adam's L2 penalty, every method",
        "default: the paper (none); search: DomainBed's 10^U(-6, -2) (it fixes 0 for small images; searched here for all)"),
    _hp("fused_adam", bool, {}, True, FIXED, "one fused Adam kernel (same arithmetic as foreach)", "implementation, not searched"),
    # -- MASF (Eqs. 3–12) and MLDG share the inner step -----------------------------------------------------
    _hp("inner_lr", float, POSITIVE, LR, INNER_LR_SEARCH, "α, Eq. 9 (MASF) and MLDG's inner step",
        "default: the paper's α = η; search: ours, from no inner step to an SGD step"),
    _hp("first_order", bool, {}, False, FIXED, "stop the gradient through ∇L_cr (both public TF codes: true)", UNSEARCHED),
    _hp("metric_lr", float, POSITIVE, LR, LR_SEARCH, "γ, Eq. 12: F_φ's Adam", "default: the paper's γ = η; search: as η"),
    _hp("beta_gen", float, NON_NEGATIVE, 1.0, LogUniform(0.1, 10.0), "β1, Eq. 10: weight of L_gen",
        "default: Dou et al. and the paper; search: ours, a decade either side"),
    _hp("beta_tri", float, NON_NEGATIVE, 0.005, LogUniform(5e-4, 5e-2), "β2, Eq. 10: weight of L_tri",
        "default: Dou et al. and the paper; search: ours, a decade either side"),
    _hp("temperature", float, POSITIVE, 2.0, LogUniform(1.0, 4.0), "τ, Eq. 5: softening of the class soft labels",
        "default: Dou et al. and the paper; search: ours, 1 to 4"),
    _hp("margin", float, NON_NEGATIVE, per_backbone(small=1.0, alexnet=10.0, resnet18=10.0, foundation=1.0),
        per_backbone(small=Uniform(0.1, 2.0), alexnet=LogUniform(1.0, 10**1.5), resnet18=LogUniform(1.0, 10**1.5), foundation=Uniform(0.1, 2.0)),
        "ζ, Eq. 8 (on squared distances)",
        "default: MASF code's 10 unnormalized; 1.0 on the unit sphere (small CNN, source validation; foundation models, "
        "whose feature scales differ by model); search: ours, U(0.1, 2) on the unit sphere (distances in [0, 4]), 10^U(0, 1.5) unnormalized"),
    _hp("normalize_embeddings", bool, {}, per_backbone(small=True, alexnet=False, resnet18=False, foundation=True), FIXED,
        "F_φ on the unit sphere (the paper and its code: false)",
        "small CNN: source validation (docs/results.md); foundation models: as the small CNN, a margin whatever the model's scale; not searched"),
    _hp("optimizers", str, {"choices": LAYOUTS}, "separate", FIXED, "MASF: three Adams (public codes) or one (Eq. 11 as written)", UNSEARCHED),
    _hp("inner_reduction", str, {"choices": REDUCTIONS}, "mean", FIXED, "Eq. 9 on the batch mean, or the sum (public code)", UNSEARCHED),
    _hp("inner_clip", float | None, POSITIVE, None, FIXED, "per-tensor norm clip of the inner gradient (MASF code: 2.0)", UNSEARCHED),
    _hp("meta_clip", float | None, POSITIVE, 2.0, FIXED, "separate: per-tensor norm clip of the meta gradient", "MASF code; not searched"),
    _hp("meta_lr", float | None, POSITIVE, per_backbone(small=1e-4, alexnet=None, resnet18=None, foundation=None),
        per_backbone(small=LogUniform(1e-5, 1e-3), alexnet=LogUniform(1e-6, 1e-4), resnet18=LogUniform(1e-6, 1e-4), foundation=LogUniform(1e-5, 1e-3)),
        "separate: the meta Adam's lr; null = η (MASF code)",
        "default: MASF code (η); 0.1 η for the small CNN (source validation, docs/results.md); search: ours, a decade either side"),
    _hp("meta_updates_embedder", bool, {}, False, FIXED, "separate: the meta Adam also steps φ (the MASF code's slip)", UNSEARCHED),
    _hp("outer_clip", float | None, POSITIVE, None, FIXED, "joint: per-tensor norm clip of the applied gradient", UNSEARCHED),
    _hp("class_average", str, {"choices": CLASS_AVERAGES}, "present", FIXED, "Eq. 6 over classes in both domains, or all (MASF code)", UNSEARCHED),
    _hp("triplet_fraction", float, {"gt": 0, "le": 1}, 1 / 3, FIXED, "share of each domain's batch forming T, Eq. 8", "MASF code (the first third); not searched"),
    _hp("grad_norm_every", int, NON_NEGATIVE, 50, FIXED, "MASF: log ‖∇ψ‖ of each loss every N steps (0 = off)", "a diagnostic, not searched"),
    # -- the other methods ----------------------------------------------------------------------------------
    _hp("mldg_beta", float, NON_NEGATIVE, 1.0, LogUniform(0.1, 10.0), "MLDG: β, weight of the meta-test loss",
        "default: Li et al. 2018; search: DomainBed's mldg_beta 10^U(-1, 1)"),
    _hp("coral_weight", float, NON_NEGATIVE, 1.0, LogUniform(0.1, 10.0), "CORAL: λ, weight of the feature-statistics penalty",
        "default: Sun & Saenko 2016; search: DomainBed's mmd_gamma 10^U(-1, 1)"),
    _hp("zoom_range", list[float], {"length": 2, "gt": 0, "test": lambda r: r[0] <= r[1], "says": "a list [low, high] with 0 < low <= high"},
        [0.5, 2.0], OctaveRange(1.5), "DeepAll + zoom: window side s·L, s log-uniform in [low, high]",
        "default: one BreaKHis magnification step either way; search: ours, up to 1.5 octaves each way"),
    # -- weight averaging, any method (conf/averaging/, masf_lightning/averaging/) ---------------------------
    _hp("n_converge", int, {"ge": 1}, 3, IntUniform(2, 6), "SWAD: checks without a lower loss that open the window (N_s)",
        "default: Cha et al. 2021 and khanrc/swad (n_converge=3); search: ours, 2 to 6 checks"),
    _hp("n_tolerance", int, {"ge": 1}, 6, IntUniform(3, 12), "SWAD: checks in a row above the threshold that close it (N_e)",
        "default: Cha et al. 2021 and khanrc/swad (n_tolerance=6); search: ours, half to twice"),
    _hp("tolerance_ratio", float, NON_NEGATIVE, 0.3, LogUniform(0.1, 1.0), "SWAD: threshold = (1 + r) × the opening checks' mean loss",
        "default: Cha et al. 2021 and khanrc/swad (tolerance_ratio=0.3, the paper's r = 1.3); search: ours, 10^U(-1, 0)"),
    _hp("ema_decay", float, {"gt": 0, "lt": 1}, 0.999, Uniform(0.99, 0.9995), "EMA: decay per step (after timm's warm-up)",
        "default: Lightning's EMAWeightAveraging (decay=0.999); search: ours, horizons of 100 to 2,000 steps"),
)  # fmt: skip
BY_NAME: dict[str, HParam] = {h.name: h for h in REGISTRY}


def defaults(backbone: Backbone) -> dict[str, Any]:
    """Every hyperparameter's default for a backbone (hparams_seed=0)."""
    return {h.name: h.default_for(backbone) for h in REGISTRY}


def value(name: str, method: str, backbone: Backbone, task: str, hparams_seed: int) -> Any:
    """hparams_seed 0: the default; K >= 1: draw K for (method, backbone, task), the same for every target and seed."""
    h = BY_NAME[name]
    default = h.default_for(backbone)
    if hparams_seed == 0:
        return default
    return h.dist_for(backbone).sample(random.Random(draw_seed(method, backbone, task, hparams_seed, name)), default)


def values(method: str, backbone: Backbone, task: str, hparams_seed: int) -> dict[str, Any]:
    return {h.name: value(h.name, method, backbone, task, hparams_seed) for h in REGISTRY}


def takes(cls: type) -> list[str]:
    """The registry keys a method class's constructor takes (its own and its bases')."""
    params = {p for k in cls.__mro__ if "__init__" in vars(k) for p in inspect.signature(k.__init__).parameters}
    return [h.name for h in REGISTRY if h.name in params]


def constructor_defaults(cls: type, backbone: Backbone) -> dict[str, Any]:
    """The registry's defaults for what `cls` takes: how tests and benchmarks build a method outside Hydra."""
    return {k: BY_NAME[k].default_for(backbone) for k in takes(cls)}


def of_method(method_cfg: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a resolved method config passes to its constructor (its registry keys), as run."""
    return {k: v for k, v in method_cfg.items() if k in BY_NAME}
