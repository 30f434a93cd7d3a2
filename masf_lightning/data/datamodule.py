"""Episodic multi-magnification DataModule.

Each training step yields one batch per source magnification plus that step's meta-train / meta-test
split of the sources. Episode k is a pure function of (seed, k): a resumed run continues the very same
stream, and under DDP every rank draws the same global batch and keeps its own shard of it, with the
same meta-split. Images live in one uint8 tensor (the cache); batches carry indices and are
materialized, augmented and normalized after transfer, on the device that trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from masf_lightning.data.augment import augment, center_crop
from masf_lightning.data.cache import CachedImages, Geometry, build_cache
from masf_lightning.data.features import FrozenEncoder
from masf_lightning.data.manifest import check_split_covers, write_split_manifest
from masf_lightning.data.sources import open_table
from masf_lightning.data.splits import make_split
from masf_lightning.data.table import DatasetTable, warn_missing_domains
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.relations import (
    batch_shards_evenly,
    crop_fits_cache,
    meta_split_possible,
    meta_test_domains_fit,
    target_stays_unseen,
    violation,
)  # fmt: skip
from masf_lightning.seeding import step_generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EpisodeSampler:
    """Draws episode `step`: per source domain a batch of indices into the cache, and the meta-split.

    `pools[d]` holds cache row indices of domain d's training images, `labels` the class id of every
    cache row. `batch_size` is the global batch per domain; rank r keeps rows r, r+W, r+2W, ….
    """

    pools: dict[str, torch.Tensor]
    labels: torch.Tensor
    batch_size: int
    meta_test_count: int = 1
    seed: int = 0
    class_balanced: bool = False
    rank: int = 0
    world_size: int = 1
    crop_range: int = 1  # cache side − input side + 1: number of crop offsets per axis
    augment: bool = True
    _by_class: dict[str, list[torch.Tensor]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # one source (DeepAll on a single magnification): no meta-split, the source is meta-train
        if problem := meta_test_domains_fit(self.meta_test_count, len(self.pools)):
            raise violation("data.meta_test_domains", self.meta_test_count, problem)
        if problem := batch_shards_evenly(self.batch_size, self.world_size):
            raise violation("data.batch_size_per_domain", self.batch_size, problem)
        for d, pool in self.pools.items():
            y = self.labels[pool]
            self._by_class[d] = [pool[y == c] for c in torch.unique(y).tolist()]

    def _draw(self, domain: str, g: torch.Generator) -> torch.Tensor:
        pool = self.pools[domain]
        if self.class_balanced:
            groups = self._by_class[domain]
            which = torch.randint(len(groups), (self.batch_size,), generator=g)
            pick = [groups[k][torch.randint(len(groups[k]), (1,), generator=g)] for k in which.tolist()]
            return torch.cat(pick)
        if len(pool) >= self.batch_size:
            return pool[torch.randperm(len(pool), generator=g)[: self.batch_size]]
        return pool[torch.randint(len(pool), (self.batch_size,), generator=g)]

    def episode(self, step: int) -> dict[str, Any]:
        g = step_generator(self.seed, step, "episode")
        names = sorted(self.pools)
        order = torch.randperm(len(names), generator=g).tolist()
        meta_test = sorted(names[i] for i in order[: self.meta_test_count]) if len(names) > 1 else []
        meta_train = [d for d in names if d not in meta_test]
        domains = {}
        for d in names:
            idx = self._draw(d, g)
            # augmentation is drawn for the global batch too, so every sample is the same under any sharding
            n = len(idx)
            if self.augment:
                aug = torch.stack(
                    [
                        torch.randint(self.crop_range, (n,), generator=g),
                        torch.randint(self.crop_range, (n,), generator=g),
                        torch.randint(2, (n,), generator=g),
                        torch.randint(4, (n,), generator=g),
                    ],
                    1,
                )
            else:
                centre = (self.crop_range - 1) // 2
                aug = torch.tensor([[centre, centre, 0, 0]]).repeat(n, 1)
            shard = slice(self.rank, None, self.world_size)
            domains[d] = {"index": idx[shard], "y": self.labels[idx[shard]], "aug": aug[shard]}
        return {"step": step, "meta_train": meta_train, "meta_test": meta_test, "domains": domains}


class EpisodeStream:
    """An endless iterable of episodes that starts where the trainer's step counter is (resume)."""

    def __init__(self, sampler: EpisodeSampler, start_step: Callable[[], int]):
        self.sampler = sampler
        self.start_step = start_step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        step = self.start_step()
        while True:
            yield self.sampler.episode(step)
            step += 1


class _Rows(Dataset):
    """Cache row indices of one evaluation subset; the images are gathered after transfer."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


class MagnificationDataModule(pl.LightningDataModule):
    """A dataset table's domains (magnifications) as one target and the sources: BreaKHis, synthetic, or a user's own.

    `sources` narrows training to some domains (the transfer map trains on one); the others are unseen,
    `target` the one the headline metrics are about. Evaluation covers all of them. The table comes from
    `data/sources.py` (`format`: breakhis, manifest or folder); the task is one of its label columns.
    """

    def __init__(
        self,
        root: str | None = None,
        task: str = "tumor_type",
        target: str = "400x",
        sources: Sequence[str] | None = None,
        stain: Any = None,
        geometry: dict[str, Any] | None = None,
        input_size: int = 64,
        split: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        synthetic: dict[str, Any] | None = None,
        batch_size_per_domain: int = 24,
        meta_test_domains: int = 1,
        class_balanced: bool = False,
        augment: bool = True,
        normalize: Sequence[Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
        eval_batch_size: int = 256,
        images_on_device: bool = True,
        on_bad_file: str = "raise",
        num_workers: int = 2,
        seed: int = 0,
        output_dir: str | None = None,
        progress: bool = True,
        channels_last: bool = False,
        format: str = "breakhis",
        manifest: str | None = None,
        domains: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        patient_regex: str | None = None,
    ):
        super().__init__()
        self.source = {"format": format, "root": root, "manifest": manifest, "domains": domains, "patient_regex": patient_regex,
                       "on_bad_file": on_bad_file, "synthetic": dict(synthetic) if synthetic else None}  # fmt: skip
        if format != "manifest" and root in (None, "", "???"):
            raise ConfigError(f"data.root is not set: pass data.root=DIR ({'DIR/<domain>/<class>/<image>' if format == 'folder' else 'the folder holding BreaKHis_v1'})")
        self.root = Path(str(manifest)).parent if format == "manifest" else Path(str(root))  # the table's root, once opened
        self.task = task
        self.given_classes = tuple(classes) if classes else None
        self.target = str(target)
        self.requested_sources = [str(s) for s in sources] if sources is not None else None
        if isinstance(sources, str) or (sources is not None and not sources):
            raise ConfigError(f"data.sources={sources!r} must be a non-empty list of domains, e.g. data.sources=[40x,100x]")
        if self.requested_sources and (problem := target_stays_unseen(self.requested_sources, self.target)):
            raise violation("data.sources", self.requested_sources, problem)
        self.stain = stain
        geometry = dict(geometry or {"mode": "resize", "size": input_size})
        self.geometry = Geometry(**geometry)
        if problem := crop_fits_cache(input_size, "data.geometry.size", self.geometry.size):
            raise violation("data.input_size", input_size, problem)
        self.input_size = input_size
        self.split_cfg = dict(split or {"protocol": "patient", "seed": 0})
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".masf_cache"
        self.batch_size = batch_size_per_domain
        self.meta_test_count = meta_test_domains
        self.class_balanced = class_balanced
        self.do_augment = augment
        self.mean = torch.tensor(normalize[0]).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(normalize[1]).view(1, 3, 1, 1) * 255
        self.eval_batch_size = eval_batch_size
        self.images_on_device = images_on_device
        self.on_bad_file = on_bad_file
        self.num_workers = num_workers
        self.seed = seed
        self.output_dir = Path(output_dir) if output_dir else None
        self.progress = progress
        self.channels_last = channels_last  # batches in NHWC, as the model's weights (trainer.channels_last)
        self.cached: CachedImages | None = None
        self.frozen: FrozenEncoder | None = None  # feature mode (backbone.trainable=none): `use_encoder`
        self.index: pd.DataFrame | None = None
        self.table: DatasetTable | None = None
        self._images: dict[torch.device, torch.Tensor] = {}

    def use_encoder(self, encoder: torch.nn.Module, encoder_id: str, what: str = "") -> None:
        """Feature mode: batches are the frozen encoder's cached features of the evaluation view (no augmentation)."""
        self.frozen = FrozenEncoder(encoder, encoder_id, what)

    def check_meta_split(self, method: str, needs_meta_split: bool) -> None:
        """One line, before training, instead of a crash inside the first episode."""
        if problem := meta_split_possible(method, needs_meta_split, self.sources):
            raise ConfigError(problem)

    # -- preparation ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The task's classes in class-id order (data.classes, the data's own order, or sorted)."""
        return self.open().classes(self.task, self.given_classes)

    @property
    def domains(self) -> list[str]:
        """Every domain of the table, coarse to fine where µm/px says so (data.domains otherwise)."""
        return list(self.open().domains)

    def open(self) -> DatasetTable:
        """The dataset table, read once (the synthetic data generated first if absent)."""
        if self.table is None:
            self.table = open_table(**self.source, progress=self.progress)
            self.root = self.table.root
        return self.table

    def prepare_data(self) -> None:
        """Open the table (generating the synthetic data if asked), split it and build the cache (rank 0 only)."""
        self._load()

    def setup(self, stage: str | None = None) -> None:
        if self.cached is None:
            self._load()

    def _load(self) -> None:
        if self.cached is not None:
            return
        table = self.open()
        index = table.frame
        if self.target not in self.domains:
            raise ConfigError(f"target={self.target}: not a domain of {table.name} (domains: {', '.join(self.domains)})")
        missing = [d for d in self.requested_sources or () if d not in self.domains]
        if missing:
            raise ConfigError(f"data.sources={self.requested_sources}: {', '.join(missing)} is not a domain of {table.name} (domains: {', '.join(self.domains)})")
        if len(self.domains) < 2:
            raise DataError(f"{table.name} holds {len(self.domains)} domain(s); training on some and testing on another needs at least 2")
        keep = index[self.task].notna().to_numpy() & index[self.task].astype(str).isin(self.class_names).to_numpy()
        index = index[keep].reset_index(drop=True)  # data.classes may leave some classes out
        index[self.task] = index[self.task].astype(str)
        self.sources = [d for d in self.domains if d in self.requested_sources] if self.requested_sources else [d for d in self.domains if d != self.target]
        table.check_task(self.task, self.class_names, self.sources, self.target)
        warn_missing_domains(index, self.domains)
        cfg = self.split_cfg
        stratify = table.stratify or self.task
        split = make_split(
            index,
            cfg.get("protocol", "patient"),
            int(cfg.get("seed", 0)),
            fractions=tuple(cfg.get("fractions", (0.6, 0.1, 0.3))),
            fold_file=cfg.get("fold_file"),
            stratify=stratify,
            order=table.classes(stratify) if stratify != self.task else self.class_names,
            allow_leak=bool(cfg.get("allow_leak", False)),
        )
        keep = (split != "unused").to_numpy()  # official_fold: images its file does not list
        index, split = index[keep].reset_index(drop=True), split[keep].reset_index(drop=True)
        index = index.assign(split=split.values)
        index["class_id"] = index[self.task].map({c: i for i, c in enumerate(self.class_names)}).astype("int64")
        # Training needs every class in every source, the paper's metric every class in the target test;
        # a class missing from some validation subset only makes that accuracy coarser.
        check_split_covers(
            index, split, self.task, {"train": self.sources, "test": [self.target]}, classes=self.class_names
        )
        if self.output_dir is not None:
            labels = [c for c in (self.task, stratify, *table.label_columns) if c in index.columns]
            write_split_manifest(index, split, self.output_dir / "split_manifest.csv", labels=labels)
        self.cached = build_cache(
            self.root, index, self.stain, self.geometry, self.cache_dir, num_workers=self.num_workers, progress=self.progress
        )
        self.index = index.reset_index(drop=True)
        self.labels = torch.tensor(self.index["class_id"].to_numpy(), dtype=torch.long)
        if self.frozen is not None:
            self.frozen.build(self.cached, self.to_input, self.cache_dir, self.eval_batch_size, self.progress)

    def rows(self, domain: str, split: str) -> torch.Tensor:
        """Cache rows of one (magnification, split) subset."""
        assert self.index is not None
        mask = (self.index["domain"] == domain) & (self.index["split"] == split)
        return torch.as_tensor(mask.to_numpy().nonzero()[0], dtype=torch.long)

    # -- loaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> EpisodeStream:
        rank, world = 0, 1
        trainer = self.trainer
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        sampler = EpisodeSampler(
            pools={d: self.rows(d, "train") for d in self.sources},
            labels=self.labels,
            batch_size=self.batch_size,
            meta_test_count=self.meta_test_count,
            seed=self.seed,
            class_balanced=self.class_balanced,
            rank=rank,
            world_size=world,
            crop_range=self.geometry.size - self.input_size + 1,
            augment=self.do_augment,
        )
        return EpisodeStream(sampler, start_step=lambda: int(trainer.global_step) if trainer is not None else 0)

    @property
    def val_sets(self) -> list[tuple[str, str]]:
        """(domain, split) of each validation loader: the sources' val, the target's val, the target's test.

        The target's test split is checked during training only to report what the paper's code reported
        (the best test accuracy seen so far); nothing selects or stops on it.
        """
        return [*((d, "val") for d in self.sources), (self.target, "val"), (self.target, "test")]

    def eval_loader(self, domain: str, split: str) -> DataLoader:
        return DataLoader(_Rows(self.rows(domain, split)), batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> list[DataLoader]:
        return [self.eval_loader(d, s) for d, s in self.val_sets]

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.target, "test")

    # -- materialization on the training device -----------------------------------------------
    def images_on(self, device: torch.device) -> torch.Tensor:
        assert self.cached is not None
        if device.type == "cpu" or not self.images_on_device:
            return self.cached.images
        if device not in self._images:
            self._images[device] = self.cached.images.to(device)
        return self._images[device]

    def materialize(self, rows: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 cache rows → normalized float images; cropped/flipped/rotated by `aug` when given (feature mode: the
        rows' cached features, `aug` unused)."""
        if self.frozen is not None:
            return self.frozen.rows(rows).to(self.trainer.lightning_module.dtype if self.trainer is not None else torch.float32)
        images = self.images_on(rows.device)
        return self.to_input(images[rows.to(images.device)].to(rows.device), aug)

    def to_input(self, x: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 N×3×S×S images as the cache holds them (new ones: `preprocess_images`) → the network's input (feature
        mode: the frozen encoder's features of it)."""
        x = augment(x, self.input_size, aug) if aug is not None else center_crop(x, self.input_size)
        dtype = self.trainer.lightning_module.dtype if self.trainer is not None else torch.float32
        mean, std = self.mean.to(x.device, dtype), self.std.to(x.device, dtype)
        x = x.to(dtype, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        x = x.sub_(mean).div_(std)  # in place: one float buffer per batch
        return x if self.frozen is None else self.frozen.encode(x).to(dtype)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "domains" in batch:
            batch["domains"] = {d: (self.materialize(v["index"], v["aug"]), v["y"]) for d, v in batch["domains"].items()}
            return batch
        rows = batch
        return self.materialize(rows), self.labels.to(rows.device)[rows], rows

    def describe(self) -> str:
        assert self.index is not None
        t = self.index.groupby(["domain", "split"]).size().unstack(fill_value=0).reindex(self.domains, fill_value=0)
        return f"task={self.task} target={self.target} sources={','.join(self.sources)}\n{t.to_string()}"




BreakhisDataModule = MagnificationDataModule  # the `_target_` of runs written before datasets were tables
