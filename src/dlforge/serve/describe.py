"""What a model takes, described the way a client sends it: ``GET /v1/models/{name}``.

Read from the artifact's ``model.json`` alone: columns and their types for tables, size,
colour mode and pixel range for images, strings for text, windows for series, and an
example request body that the server accepts as it is (segmentation models: images of any
size, C channels, masks as PNG or RLE). The encoding itself lives in
:mod:`dlforge.registry.encoding`, the JSON forms in :mod:`dlforge.serve.inputs`.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from dlforge.registry.encoding import pixel_max

MAX_CATEGORIES_SHOWN = 20  # a column with thousands of categories must not flood the model page
MAX_EXAMPLE_PIXELS = 256  # larger images get a base64 PNG example rather than nested numbers


def describe_inputs(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model's ``inputs`` items look like, the way a client sends them, with an
    ``example`` request body the predict route accepts (``meta``: the artifact's model.json).

    Example:
        >>> meta = {"input_signature": {"shape": [None, 1, 2, 2], "dtype": "float32"},
        ...         "preprocessing": {"encoding": {"kind": "image", "size": [2, 2], "mode": "L", "scale": 1 / 16}}}
        >>> d = describe_inputs(meta)
        >>> d["kind"], d["pixel_range"], d["example"]
        ('image', '0..16', {'inputs': [[[8, 8], [8, 8]]]})
    """
    encoding = (meta.get("preprocessing") or {}).get("encoding") or {}
    shape = list(meta.get("input_signature", {}).get("shape", [None])[1:])
    kind = encoding.get("kind")
    if kind == "tabular":
        return _describe_table(encoding, meta.get("preprocessing") or {})
    if kind == "image":
        return _describe_image(encoding, shape)
    if kind == "segmentation":
        return _describe_segmentation(encoding, shape)
    if kind == "text":
        return {"kind": "text", "max_len": encoding.get("max_len", shape[0] if shape else None),
                "forms": ["a string (encoded with the model's tokenizer)",
                          f"a list of {shape[0] if shape else '?'} integer token ids"],
                "example": {"inputs": ["an example text"]}}
    if kind == "sequence":
        length, features = encoding.get("length"), encoding.get("features")
        level = float((meta.get("preprocessing") or {}).get("target_scale", {}).get("mean", 0.0))
        return {"kind": "sequence", "window": length, "features": features,
                "units": "the series' own units (scaled as in training by the server)",
                "forms": [f"a nested list of shape [{length}, {features}]: the last {length} steps"],
                "example": {"inputs": [[[round(level, 4)] * features for _ in range(length)]]}}
    example: Any = 0.0
    for n in reversed(shape):
        example = [example] * n
    return {"kind": "array", "shape": shape, "forms": [f"a nested list of numbers of shape {shape}"],
            "example": {"inputs": [example]}}


def _describe_table(encoding: dict[str, Any], preprocessing: dict[str, Any]) -> dict[str, Any]:
    categories = encoding.get("categories") or {}
    types = encoding.get("types") or {}  # written by newer artifacts; older ones imply it by categories
    fill = encoding.get("fill") or {}
    means = (preprocessing.get("standardize") or {}).get("mean") or []
    columns, row, position = [], {}, 0
    for name in encoding.get("columns", []):
        is_category = name in categories or str(types.get(name, "")).startswith("categ")
        if is_category:
            cats = list(categories.get(name, []))
            columns.append({"name": name, "type": "category", "categories": cats[:MAX_CATEGORIES_SHOWN],
                            "categories_total": len(cats)})
            row[name] = fill.get(name, cats[0] if cats else "")
            position += len(cats)
        else:
            columns.append({"name": name, "type": "number"})
            typical = fill.get(name, means[position] if position < len(means) else 0.0)
            row[name] = round(float(typical), 4) if isinstance(typical, (int, float)) else typical
            position += 1
    out: dict[str, Any] = {
        "kind": "table", "columns": columns,
        "forms": ["an object {column: value} with the raw values (numbers and category names); other keys "
                  "(a target, an id) are ignored",
                  f"a list of {position} raw numbers: the encoded columns (one-hot for categories) before "
                  "standardisation"],
        "example": {"inputs": [row]}}
    for key in ("id_column", "target"):
        if encoding.get(key) is not None:
            out[key] = encoding[key]
    return out


def _describe_image(encoding: dict[str, Any], shape: list[int]) -> dict[str, Any]:
    channels, (height, width) = (shape[0] if shape else 1), encoding["size"]
    top = pixel_max(encoding)
    forms = [[height, width, channels], [channels, height, width]]
    if channels == 1:
        forms.insert(0, [height, width])
    out = {"kind": "image", "size": [height, width], "mode": encoding["mode"], "channels": channels,
           "pixel_range": f"0..{top}",
           "forms": [f"raw pixels 0..{top} as a nested list of shape {' or '.join(map(str, forms))}",
                     '{"b64": "<base64 PNG or JPEG bytes>"}: converted to the mode and resized to the size']}
    if height * width * channels <= MAX_EXAMPLE_PIXELS:
        pixel = [top // 2] * channels if channels > 1 else top // 2
        out["example"] = {"inputs": [[[pixel] * width for _ in range(height)]]}  # (H, W[, C])
    else:
        out["example"] = {"inputs": [{"b64": _blank_png(encoding["mode"], height, width)}]}
    return out


def _describe_segmentation(encoding: dict[str, Any], shape: list[int]) -> dict[str, Any]:
    """Images of any size with C channels; the example is one blank image of the training window."""
    channels, dims, top = (shape[0] if shape else 1), int(encoding.get("spatial_dims", 2)), pixel_max(encoding)
    layout = ["H", "W"] if dims == 2 else ["D", "H", "W"]
    lists = ([f"[{', '.join(layout)}]"] if channels == 1 else []) + [f"[{', '.join([str(channels), *layout])}]"]
    window = list(encoding.get("window") or shape[1:])
    pages = window[0] if dims == 3 else 1
    pixels = f"images of any size with {channels} channel(s): raw pixels 0..{top} as a nested list of shape "
    files = " (a multi-page TIFF: one page per slice)" if dims == 3 else ": converted to the mode"
    return {"kind": "segmentation", "size": "any", "spatial_dims": dims, "mode": encoding.get("mode", "L"),
            "channels": channels, "pixel_range": f"0..{top}", "window": window,
            "forms": [pixels + " or ".join(lists), '{"b64": "<base64 PNG or TIFF bytes>"}' + files],
            "mask_formats": ["png", "rle"],
            "example": {"inputs": [{"b64": _blank_png(encoding.get("mode", "L"), *window[-2:], pages=pages)}],
                        "mask_format": "png"}}


def _blank_png(mode: str, height: int, width: int, pages: int = 1) -> str:
    """A mid-grey image as base64: a PNG, or a multi-page TIFF when ``pages`` > 1."""
    buf = io.BytesIO()
    image = Image.new(mode, (width, height), 128 if mode == "L" else (128, 128, 128))
    if pages > 1:
        image.save(buf, "TIFF", save_all=True, append_images=[image.copy() for _ in range(pages - 1)])
    else:
        image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
