"""Which neurons of a layer a stage works on: ``top:K`` by max activation, ranges, or all.

The graph stage (:mod:`autointerp.n2g.run`), the explain stage (:mod:`autointerp.explain.plan`) and
the export command choose neurons with the same ``--neurons`` spec; it lives here, below the stages,
so that choosing neurons for explanations does not import the graph stage's driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autointerp.errors import UserError
from autointerp.ranges import bounded_index, parse_ranges

if TYPE_CHECKING:
    from autointerp.store import Store


def parse_neurons(text: str | None, d_mlp: int) -> list[int]:
    """``"0-15,100"`` -> neuron list; ``None``/``"all"`` -> every neuron of the layer."""
    parsed = parse_ranges(text, "Neurons", "0-15,100")
    if parsed is None:
        return list(range(d_mlp))
    bad = [n for n in parsed if not 0 <= n < d_mlp]
    if bad:
        raise UserError(f"Neuron {bad[0]} is out of range: layers have neurons 0-{d_mlp - 1}.")
    return sorted(parsed)


def select_neurons(store: Store, model: str, layer: int, spec: str | None, d_mlp: int) -> list[int]:
    """``top:K`` (the K neurons with the highest max activation in the layer's harvest), ranges,
    or all."""
    if spec and spec.strip().lower().startswith("top:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError as exc:
            raise UserError(f"--neurons top:K needs a number, not {spec!r}.") from exc
        if k < 1:
            raise UserError(f"--neurons top:K needs K >= 1, not {k}.")
        bounded_index(k, "--neurons top:K", spec)
        return sorted(r["neuron"] for r in store.rank_neurons(model, "max", layer, k))
    return parse_neurons(spec, d_mlp)
