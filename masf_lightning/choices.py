"""Every closed set of values the configs choose from, written once and torch-free: the config check
(config/schema.py) and the code that acts on a choice both import it from here."""

DATA_FORMATS = ("breakhis", "manifest", "folder")  # where the dataset table comes from (data/sources.py)
# checkpoint selection → the validation metric it maximizes (algorithms/base.py logs them; `last`: none)
SELECTIONS = {"source_val": "val/source_acc", "target_val": "val/target_acc", "last": None}
PROTOCOLS = ("patient", "paper", "official_fold", "manifest_split")  # split protocols (data/splits.py)
LAYOUTS = ("separate", "joint")  # MASF's optimizers: the public codes' three Adams, or Eq. 11 as written
REDUCTIONS = ("mean", "sum")  # Eq. 9's inner gradient: of the batch mean, or of the sum (public code)
CLASS_AVERAGES = ("present", "all")  # Eq. 6 over classes present in both domains, or all (MASF code)
GEOMETRIES = ("resize", "center_crop", "square")  # how an image becomes the cached square (data/cache.py)
FOUNDATION_LIBRARIES = ("timm", "transformers")  # what builds a foundation model (models/foundation.py)
POOLS = ("default", "cls", "cls_mean")  # a foundation model's embedding: its pooled one, class token, class ⊕ mean patch
TRAINABLE = ("all", "none")  # backbone.trainable, besides a number k of last blocks
# Names from third parties, kept here so the check needs neither torch nor Lightning; tests/test_config_schema.py
# checks them against torchvision and lightning_fabric.
IMAGENET_WEIGHTS = ("IMAGENET1K_V1",)  # torchvision's weight sets of alexnet and resnet18
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
              "64-true", "transformer-engine", "transformer-engine-float16")  # lightning_fabric's _PRECISION_INPUT  # fmt: skip
SYNTHETIC_MIN_SIDE, SYNTHETIC_MAX_SIZE = 16, (700, 460)  # generated image sides: readable tissue to BreaKHis's own size
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
WANDB_MODES = ("online", "offline", "disabled")  # logger.wandb.mode: wandb.init's own modes (track/loggers.py)
