"""The README.md written next to a TF Serving export: how to serve it and call it, with the real
output of the model on a gray image. The text is `README.template.md` (a `str.format` template, so
literal braces are doubled), kept apart from the code that fills it in."""
from __future__ import annotations

import json
from importlib import resources

__all__ = ["serving_readme"]

TEMPLATE = "README.template.md"


def _fmt(value, limit=5):
    """A short JSON rendering of an example output row; long rows are cut with '...'."""
    value = value.tolist()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        value = [v.decode() for v in value]
    if isinstance(value, list) and value and isinstance(value[0], float):
        value = [round(v, 6) for v in value]
    if isinstance(value, list) and len(value) > limit:
        return json.dumps(value[:limit])[:-1] + ", ...]"
    return json.dumps(value)


def serving_readme(model_dir: str, meta: dict, example: dict, image_signature: str,
                   bytes_signature: str) -> str:
    """The README of version `meta['version']` under `model_dir`; `meta` is the export's
    metadata and `example` its outputs for one gray image."""
    outs = meta["outputs"]
    h, w = meta["signatures"][image_signature]["inputs"]["image"]["shape"][1:3]
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.format(
        name=meta["model_name"], version=meta["version"], model_dir=model_dir, h=h, w=w,
        serving_signature=image_signature, bytes_signature=bytes_signature,
        out_lines="\n".join(f"| `{o}` | {d['dtype']} | {tuple(d['shape'])} |"
                            for o, d in outs.items()),
        row=", ".join(f'"{o}": {_fmt(example[o][0])}' for o in outs),
        cols=", ".join(f'"{o}": [{_fmt(example[o][0])}]' for o in outs),
        mean=meta["preprocessing"]["mean"], std=meta["preprocessing"]["std"])
