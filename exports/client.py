"""`python -m exports client URL MODEL IMAGE...`: classify images on a running inference server.

Speaks the KServe v2 / Triton HTTP protocol through `tritonclient.http` (the `serve` extra):
it reads the model's input name, dtype and shape from the server (GET /v2/models/MODEL),
decodes and resizes each image exactly as training did (neu.image.load_image), sends the
uint8 pixels as JSON tensors (POST /v2/models/MODEL/infer, no binary extension, so any v2
server understands the request) and turns the returned logits into the same per-image
results as `exports predict`. Class names come from the model's config parameters
(Triton's GET /v2/models/MODEL/config) or `--labels labels.txt` (OpenVINO Model Server has
no config endpoint). No torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from exports.contract import OUTPUT_NAME
from exports.runtime import softmax
from neu.image import load_image

INSTALL = "pip install 'neu-bench[serve]' (or: pip install 'tritonclient[http]')"


class ServerError(RuntimeError):
    """No server at the URL, no such model, or a model this client cannot feed."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    input_name: str
    image_size: int
    channels: int
    classes: list[str]
    max_batch_size: int
    platform: str


def connect(url: str, *, timeout: float = 10.0):
    """A tritonclient.http client for URL ("http://host:port" or "host:port"), checked live."""
    try:
        import tritonclient.http as httpclient
    except ImportError as e:
        raise ServerError(f"the client needs tritonclient: {INSTALL}") from e
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"{url} is not an http(s)://host:port URL of an inference server")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    client = httpclient.InferenceServerClient(
        url=f"{parts.hostname}:{port}",
        ssl=parts.scheme == "https",
        connection_timeout=timeout,
        network_timeout=timeout,
    )
    try:
        live = client.is_server_live()
    except Exception as e:  # connection refused, DNS, timeout: gevent/socket errors
        raise ServerError(
            f"no inference server answers at {url} ({type(e).__name__}: {e}): start one on the "
            "model repository (tritonserver --model-repository DIR) or fix the URL"
        ) from e
    if not live:
        raise ServerError(f"the server at {url} says it is not live (GET /v2/health/live)")
    return client


def describe(client, model: str, *, url: str, labels: str | Path | None = None) -> ServedModel:
    """What the server says about MODEL, checked to be a raw-pixel classifier."""
    try:
        meta = client.get_model_metadata(model)
    except Exception as e:
        raise ServerError(f"{url} has no model {model!r} ready ({e})") from e
    if len(meta.get("inputs", [])) != 1:
        raise ServerError(f"{model} at {url} has inputs {meta.get('inputs')}, expected one")
    inp = meta["inputs"][0]
    shape = [int(d) for d in inp["shape"]]
    rgb = len(shape) == 4 and shape[-1] == 3
    if inp["datatype"] != "UINT8" or not (len(shape) == 3 or rgb) or shape[1] != shape[2]:
        raise ServerError(
            f"{model} at {url} takes {inp['datatype']} {shape}; this client sends raw pixels: "
            "UINT8 [batch, S, S] or [batch, S, S, 3] (serve the raw-pixel file, the default of "
            "`python -m exports repository`)"
        )
    config = _config(client, model)
    params = config.get("parameters") or {}
    names = _classes(params, labels)
    return ServedModel(
        name=model,
        input_name=inp["name"],
        image_size=shape[1],
        channels=3 if rgb else 1,
        classes=names,
        max_batch_size=int(config.get("max_batch_size") or 0),
        platform=meta.get("platform", ""),
    )


def _config(client, model: str) -> dict:
    try:
        return client.get_model_config(model) or {}
    except Exception:  # KServe v2 servers other than Triton (OVMS) have no config endpoint
        return {}


def _classes(params: dict, labels) -> list[str] | None:
    import json

    if labels is not None:
        return [line.strip() for line in Path(labels).read_text().splitlines() if line.strip()]
    value = (params.get("neu_bench.classes") or {}).get("string_value")
    return json.loads(value) if value else None


def request(served: ServedModel, pixels: np.ndarray):
    """tritonclient InferInput/RequestedOutput for uint8 (N, C, S, S) pixels, as JSON tensors."""
    import tritonclient.http as httpclient

    from exports.runtime import raw_feed

    x = raw_feed(pixels)
    inp = httpclient.InferInput(served.input_name, list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=False)
    return [inp], [httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=False)]


def iter_classify(
    client, served: ServedModel, paths: Sequence[str | Path], *, batch_size: int = 8
) -> Iterator[dict]:
    """One result per path, in order, like Classifier.iter_predict_files."""
    if served.max_batch_size > 0:
        batch_size = min(batch_size, served.max_batch_size)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        results, loaded, slots = [], [], []
        for p in chunk:
            try:
                loaded.append(load_image(p, size=served.image_size, channels=served.channels))
                slots.append(len(results))
                results.append({"file": str(p)})
            except Exception as e:  # unreadable file: reported per file, the others go on
                results.append({"file": str(p), "error": f"{type(e).__name__}: {e}"})
        if loaded:
            inputs, outputs = request(served, np.stack(loaded))
            reply = client.infer(served.name, inputs, outputs=outputs)
            probs = softmax(reply.as_numpy(OUTPUT_NAME).astype(np.float32))
            names = served.classes or [f"class_{i}" for i in range(probs.shape[1])]
            for slot, row in zip(slots, probs, strict=True):
                k = int(row.argmax())
                results[slot].update(
                    {
                        "class": names[k],
                        "index": k,
                        "confidence": float(row[k]),
                        "probabilities": {c: float(v) for c, v in zip(names, row, strict=True)},
                    }
                )
        yield from results
