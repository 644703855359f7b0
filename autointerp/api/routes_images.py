"""The pictures under ``/img/``: score box plots, the newest evaluation, N2G graphs, and Layerscope
frames and GIFs.

They are not part of the JSON API, so they are left out of the OpenAPI spec; errors are still JSON
(a picture URL is read by a page's ``<img>``, not shown as a page). Drawing is done on the server
and cached (:mod:`autointerp.api.plots`), imported on the first picture so that serving JSON never
loads matplotlib.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from autointerp.api.data import ApiData
from autointerp.api.params import Index
from autointerp.api.routes_live import find_prompt
from autointerp.live import Live
from autointerp.records import NotFound


def image_routes(app: FastAPI, data: ApiData, live: Live) -> None:
    """``/img/{model}/scores.svg``, ``/img/{model}/eval.png``, ``/img/{model}/n2g/...svg`` and
    the Layerscope ``.png``/``.gif``."""

    @app.get("/img/{model}/scores.svg", include_in_schema=False)
    def img_scores(model: str) -> Response:
        from autointerp.api.plots import cached, score_plot

        view = data.model(model)
        store = data.store()
        per_layer = {
            layer: store.score_values(run["id"], layer) for layer, run in view.layers.items()
        }
        key = (
            "scores",
            view.name,
            repr(
                sorted(
                    (k, sorted((m, len(v), sum(v)) for m, v in s.items()))
                    for k, s in per_layer.items()
                )
            ),
        )
        return Response(
            cached(key, lambda: score_plot(view.name, per_layer)), media_type="image/svg+xml"
        )

    @app.get("/img/{model}/eval.png", include_in_schema=False)
    def img_eval(model: str) -> Response:
        """The newest `autointerp eval` of the model: score distributions per method with the
        controls."""
        from autointerp.api.plots import cached
        from autointerp.eval.plot import eval_plot

        view = data.model(model)
        store = data.store()
        evaluation = store.latest_evaluation(view.name, "eval")
        if evaluation is None:
            raise NotFound(
                f"{view.name} has no stored evaluation; run `autointerp eval {view.name}`."
            )
        known = store.latest_evaluation(view.name, "calibrate")
        rows = known["result"]["features"] if known else None
        key = ("eval", view.name, evaluation["run_id"], known["run_id"] if known else None)
        png = cached(key, lambda: eval_plot(evaluation["result"], rows))
        return Response(png, media_type="image/png")

    @app.get("/img/{model}/n2g/{layer}/{neuron}.svg", include_in_schema=False)
    def img_graph(model: str, layer: Index, neuron: Index) -> Response:
        from autointerp.api.plots import cached, graph_svg

        view = data.model(model)
        data.check_neuron(view, layer, neuron)
        row = data.store().graph(view.name, layer, neuron)
        if row is None:
            raise NotFound(f"No N2G graph computed for {view.name} {layer}/{neuron}.")
        key = ("graph", view.name, layer, neuron, row["config_hash"], row["created"])
        return Response(
            cached(key, lambda: graph_svg(row, view.name, layer, neuron)),
            media_type="image/svg+xml",
        )

    @app.get("/img/{model}/layerscope/{prompt_id}/{layer}.png", include_in_schema=False)
    def img_layer(model: str, prompt_id: str, layer: Index, view: str = "mlp") -> Response:
        prompt = find_prompt(data, live, model, prompt_id, layer, view)
        return Response(live.image(prompt, layer, view), media_type="image/png")

    @app.get("/img/{model}/layerscope/{prompt_id}.gif", include_in_schema=False)
    def img_gif(model: str, prompt_id: str, view: str = "mlp") -> Response:
        prompt = find_prompt(data, live, model, prompt_id, 0, view)
        return Response(
            live.gif(prompt, view),
            media_type="image/gif",
            headers={
                "Content-Disposition": (
                    f'attachment; filename="layerscope_{prompt.model}_{prompt_id}_{view}.gif"'
                )
            },
        )
