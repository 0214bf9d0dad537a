"""A model API, sync build: Flask on Gunicorn sync workers (one request at a time per worker).

    GET  /health    200 {"status": "ok", "pid", "model", "kind", ...}
    POST /predict   JSON {"features": [numbers]} -> 200 {"score", "model", "elapsed_ms"}
                    bad body 400, body too large 413, all as {"error": "<one line>"}

The sleep kind blocks the worker in time.sleep, as a sync worker would on a real remote call;
the model kind runs the Keras model in the worker (see servers.scoring.common.Scorer). Configured by
the INFBENCH_MODEL_* variables (servers.scoring.common's docstring).

Run: python -m gunicorn -k sync -w W -b 127.0.0.1:PORT servers.scoring.model_api_flask:app
"""

from __future__ import annotations

import time

from flask import Flask, Response, jsonify, request

from servers.scoring.common import (
    HEALTH_PATH,
    PREDICT_PATH,
    Scorer,
    check_features,
    install_flask_errors,
    load_model_api_settings,
    parse_json_object,
    prediction,
)
from servers.shared.bodylimit import BodyLimitWSGI

settings = load_model_api_settings()
scorer = Scorer(settings)
# Without --preload, Gunicorn imports this module in each worker after the fork, so each
# worker loads (and warms) its own model before it accepts a request.
scorer.load()

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
# A chunked body over the limit is a 413 too, and whatever the answer, the rest of a body
# still coming is drained first (servers.shared.bodylimit).
app.wsgi_app = BodyLimitWSGI(app.wsgi_app, settings.max_body_bytes)  # type: ignore[method-assign]
install_flask_errors(app)


@app.get(HEALTH_PATH)
def health() -> Response:
    return jsonify(scorer.health())


@app.post(PREDICT_PATH)
def predict() -> Response:
    started = time.perf_counter()
    data = parse_json_object(request.get_data(cache=False), request.mimetype)
    features = check_features(data, settings.max_features)
    delay = scorer.delay_s()
    if delay:
        time.sleep(delay)
    return jsonify(prediction(settings.name, scorer.infer(features), started))
