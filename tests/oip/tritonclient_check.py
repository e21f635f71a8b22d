"""Drives a running alps-server with tritonclient's own gRPC and HTTP clients, as any tool
built on them would, and prints what it saw as JSON for tests/open_inference.rs to compare
with alps.v1 Predict.

    .venv-triton/bin/python tests/oip/tritonclient_check.py --grpc HOST:PORT --http HOST:PORT \
        --model p --seed 42 --mc-iterations 6 --side 2

Images are PNGs the script makes (grayscale, --side pixels square, one flat value each); the
tensors are the same values as FP32 [N, 1, side, side]. Printed: per client ("grpc", "http")
and input ("image", "tensor") every output as a list; the PNGs (hex) and tensor values
used; and for each bad request the error the client raised.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

VALUES = (0.12, 0.5, 0.88)
OUTPUTS = ("probabilities", "class", "score", "mc_samples")


def png(value: float, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), round(value * 255), np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def outputs(result) -> dict:
    seen = {}
    for name in OUTPUTS:
        array = result.as_numpy(name)
        if array is None:
            continue
        if array.dtype == object:
            array = np.array([v.decode() for v in array.ravel()]).reshape(array.shape)
        seen[name] = {"shape": list(array.shape), "data": array.ravel().tolist()}
    return seen


def error_of(call) -> str:
    try:
        call()
    except InferenceServerException as error:
        return f"{error.status()} {error.message()}"
    return "no error"


def check(client_module, client, model: str, images: list[bytes], tensors: np.ndarray, params: dict) -> dict:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model)
    if client_module is grpcclient:
        metadata = {"inputs": [{"name": i.name, "shape": list(i.shape)} for i in metadata.inputs]}
        config = {"max_batch_size": config.config.max_batch_size}
    else:
        config = {"max_batch_size": config["max_batch_size"]}
    image = client_module.InferInput("image", [len(images), 1], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
    tensor = client_module.InferInput("tensor", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors)
    score_only = [client_module.InferRequestedOutput("score")]
    wrong_shape = client_module.InferInput("tensor", [1, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3), np.float32))
    return {
        "metadata": metadata,
        "config": config,
        "image": outputs(client.infer(model, [image], parameters=params)),
        "tensor": outputs(client.infer(model, [tensor], parameters=params)),
        "score_only": outputs(client.infer(model, [tensor], outputs=score_only, parameters=params)),
        "errors": {
            "unknown_model": error_of(lambda: client.infer("no-such-project", [tensor])),
            "unknown_version": error_of(lambda: client.infer(model, [tensor], model_version="99")),
            "wrong_shape": error_of(lambda: client.infer(model, [wrong_shape])),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mc-iterations", type=int, required=True)
    parser.add_argument("--side", type=int, required=True)
    args = parser.parse_args()
    images = [png(v, args.side) for v in VALUES]
    tensors = np.array([np.full((1, args.side, args.side), v, np.float32) for v in VALUES])
    params = {"seed": args.seed, "mc_iterations": args.mc_iterations}
    report = {
        "images": [i.hex() for i in images],
        "tensors": tensors.reshape(len(VALUES), -1).tolist(),
        "grpc": check(grpcclient, grpcclient.InferenceServerClient(args.grpc), args.model, images, tensors, params),
        "http": check(httpclient, httpclient.InferenceServerClient(args.http), args.model, images, tensors, params),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
