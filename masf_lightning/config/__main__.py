"""`python -m masf_lightning.config`: the schema's rules as the Markdown table docs/errors.md holds;
`--hparams`: the hyperparameter registry (default, rule, search distribution, source) as README's table."""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Iterator
from typing import Any

from masf_lightning.config.check import allowed, alternatives
from masf_lightning.config.hparams import REGISTRY, PerBackbone
from masf_lightning.config.schema import TrainConfig
from masf_lightning.config.search import Dist


def _rows(prefix: str, cls: type, label: str) -> Iterator[tuple[str, str, str]]:
    """(node, option, 'keys: allowed · …') per node; keys that allow the same words share them."""
    hints, same, nested = typing.get_type_hints(cls), {}, []
    for f in dataclasses.fields(cls):
        if f.name == "_target_":
            continue
        alts = alternatives(hints[f.name])[1]
        if dataclasses.is_dataclass(alts[0]):
            nested.append((f"{prefix}.{f.name}" if prefix else f.name, alts))
        else:
            same.setdefault(allowed(hints[f.name], f.metadata["rule"]), []).append(f"`{f.name}`")
    if same:
        yield prefix or "(top level)", label, "; ".join(f"{', '.join(keys)}: {text}" for text, keys in same.items())
    for key, alts in nested:
        for alt in alts:
            yield from _rows(key, alt, getattr(alt, "option", "") if len(alts) > 1 else "")


def rules_markdown() -> str:
    lines = ["| Node | Option | Keys: what each may hold |", "|---|---|---|"]
    rows = dict.fromkeys(_rows("", TrainConfig, ""))  # backbone.masf reads alike under each backbone: once
    lines += [f"| `{node}` | {option} | {text} |" for node, option, text in rows]
    return "\n".join(lines)


def _value(v: Any) -> str:
    if isinstance(v, Dist):
        return v.describe()
    if v is None or isinstance(v, bool):
        return "null" if v is None else str(v).lower()
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _per_backbone(x: Any) -> str:
    if isinstance(x, PerBackbone):
        return "; ".join(f"{b}: {_value(v)}" for b, v in x.values.items())
    return _value(x)


def hparams_markdown() -> str:
    """The registry: key, meaning, default, what the check allows, search distribution (hparams_seed >= 1), source."""
    lines = ["| key | what | default | allowed | search (`hparams_seed` >= 1) | source |", "|---|---|---|---|---|---|"]
    for h in REGISTRY:
        lines.append(f"| `{h.name}` | {h.means} | {_per_backbone(h.default)} | {allowed(h.type, h.rule)} | {_per_backbone(h.search)} | {h.source} |")
    return "\n".join(lines)


def main(argv: Any = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    print(hparams_markdown() if "--hparams" in args else rules_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
