"""Which transformer blocks receive an adapter or prompt: all, top:k, bottom:k, or an explicit list."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import AdaptFormerError

LayerSpec = str | tuple[int, ...]


def normalize_layer_spec(spec: str | Sequence[int]) -> LayerSpec:
    """Check the syntax of a layer spec before the depth is known; lists become tuples (hashable configs)."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text != "all":
            resolve_layers(text, _SYNTAX_ONLY)
        return text
    if isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray)):
        values = tuple(_parse_int(str(item), spec) for item in spec)
        if not values:
            raise AdaptFormerError(f"layers: {spec!r} selects no block")
        return values
    raise AdaptFormerError(f"layers: expected 'all', 'top:K', 'bottom:K' or a list of block indices, got {spec!r}")


_SYNTAX_ONLY = 10**9  # a depth no model has: resolve_layers then checks the syntax alone


def resolve_layers(spec: LayerSpec, depth: int) -> list[int]:
    """Turn a layer spec into sorted block indices in ``[0, depth)``.

    ``all``; ``top:k`` (the k blocks nearest the output); ``bottom:k`` (the k nearest the input); ``top:k/d``
    (k of d blocks, scaled to this depth: ``top:6/12`` is the top half of any model);
    ``"0,3,5"`` or ``[0, 3, 5]``; negative indices count from the end like Python.
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(depth))
        for side in ("top", "bottom"):
            if text.startswith(side + ":"):
                count = text[len(side) + 1 :]
                if "/" in count:  # top:K/D: K of D blocks, scaled to this model's depth (at least one)
                    k_text, d_text = count.split("/", 1)
                    k, of = _parse_int(k_text, spec), _parse_int(d_text, spec)
                    if not 1 <= k <= of:
                        raise AdaptFormerError(f"layers: {spec!r}: expected 1 <= K <= D in {side}:K/D")
                    count = str(max(1, round(k * depth / of)) if depth != _SYNTAX_ONLY else 1)
                k = _parse_int(count, spec)
                if not 1 <= k <= depth:
                    raise AdaptFormerError(f"layers: {spec!r} asks for {k} blocks, the model has {depth}")
                return list(range(depth - k, depth)) if side == "top" else list(range(k))
        items = [_parse_int(part, spec) for part in text.split(",") if part.strip()]
    else:
        items = [_parse_int(str(item), spec) for item in spec]
    if not items:
        raise AdaptFormerError(f"layers: {spec!r} selects no block")
    resolved = set()
    for index in items:
        if not -depth <= index < depth:
            raise AdaptFormerError(f"layers: block {index} is out of range for a model with {depth} blocks")
        resolved.add(index % depth)
    return sorted(resolved)


def _parse_int(text: str, spec: LayerSpec) -> int:
    try:
        return int(text)
    except ValueError:
        raise AdaptFormerError(
            f"layers: expected 'all', 'top:K', 'bottom:K' or a comma-separated list of block indices, got {spec!r}"
        ) from None
