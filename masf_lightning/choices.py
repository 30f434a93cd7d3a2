"""Every closed set of values the configs choose from, written once and torch-free: the config check and the
code that acts on a choice both import it from here."""

TASKS = ("tumor_type", "malignancy")  # data/breakhis.py
MAGNIFICATIONS = ("40x", "100x", "200x", "400x")  # data/breakhis.py
SELECTIONS = ("source_val", "target_val", "last")  # pipeline.py
PROTOCOLS = ("patient", "paper", "official_fold")  # data/splits.py
LAYOUTS = ("separate", "joint")  # algorithms/masf.py
REDUCTIONS = ("mean", "sum")  # algorithms/masf.py
CLASS_AVERAGES = ("present", "all")  # losses.py
GEOMETRIES = ("resize", "center_crop")  # data/cache.py
IMAGENET_WEIGHTS = ("IMAGENET1K_V1",)  # torchvision's weight sets of alexnet and resnet18
SYNTHETIC_MIN_SIDE, SYNTHETIC_MAX_SIZE = 16, (700, 460)  # data/synthetic
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
              "64-true", "transformer-engine", "transformer-engine-float16")  # lightning_fabric's _PRECISION_INPUT  # fmt: skip
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
