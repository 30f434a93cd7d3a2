"""`python -m masf_lightning.config`: the schema's rules as the Markdown table docs/errors.md holds."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

from masf_lightning.config.check import allowed, alternatives
from masf_lightning.config.schema import TrainConfig


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


def main(argv: Any = None) -> int:
    print(rules_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
