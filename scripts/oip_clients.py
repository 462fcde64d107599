#!/usr/bin/env python3
"""Scores edgeship's fixture models through a running endpoint with off-the-shelf Open
Inference Protocol clients, and checks the answers against scikit-learn's own predictions.

    python3 scripts/oip_clients.py --http 127.0.0.1:5001 --grpc 127.0.0.1:5002 \
        --model diabetes=scripts/fixtures/diabetes/expected.json [--model digits=...]

Clients (`--client triton`, the default): tritonclient.http with binary tensors on and off,
and tritonclient.grpc; (`--client kserve`): the kserve package's REST client, skipped when it
is not installed; (`--client azureml`): `requests` posting `{"data": …}` to `/score`. With
`--key` (a key or a token), every client sends `Authorization: Bearer <key>`, and the
`requests` check also expects 401 without it and with a wrong one; with `--expired-key`, 401
for that token too; with `--cors-origin`, a browser's preflight from that origin is allowed
and one from another origin is not. Prints one line per check; exits 1 on a mismatch. Needs
`pip install 'tritonclient[http,grpc]' numpy` (and `kserve` for its check).
"""

import argparse
import json
import sys

import numpy as np

NUMPY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def expected_outputs(expected):
    """scikit-learn's answers in the fixture: regression predictions, or class labels."""
    if "predictions" in expected:
        return {"values": np.asarray(expected["predictions"], dtype=np.float64)}
    return {"labels": np.asarray(expected["labels"]), "probabilities": np.asarray(expected["probabilities"])}


def check(name, answers, expected, client):
    """Compares every output of one inference against scikit-learn's."""
    want = expected_outputs(expected)
    if "values" in want:
        got = np.asarray(next(iter(answers.values())), dtype=np.float64).reshape(-1)
        ok = np.allclose(got, want["values"], rtol=1e-4, atol=1e-3)
    else:
        labels = next(v for v in answers.values() if v.dtype.kind in "iu")
        probabilities = next(v for v in answers.values() if v.dtype.kind == "f")
        ok = np.array_equal(labels.reshape(-1), want["labels"]) and np.allclose(
            probabilities, want["probabilities"], rtol=1e-4, atol=1e-5
        )
    print(f"{'ok' if ok else 'MISMATCH'}: {name} via {client}")
    if not ok:
        print(f"  got {answers}\n  want {want}")
    return ok


def bearer(key):
    """The Authorization header Azure ML's documentation shows, when the endpoint has keys."""
    return {"Authorization": f"Bearer {key}"} if key else None


def score_http(url, name, expected, binary, key):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    metadata = client.get_model_metadata(name, headers=bearer(key))
    spec = metadata["inputs"][0]
    rows = np.asarray(expected["inputs"], dtype=NUMPY_TYPES[spec["datatype"]])
    tensor = httpclient.InferInput(spec["name"], list(rows.shape), spec["datatype"])
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]]
    result = client.infer(name, [tensor], outputs=outputs, request_id="check-1", headers=bearer(key))
    assert result.get_response()["id"] == "check-1", "the id is echoed"
    answers = {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
    return check(name, answers, expected, f"tritonclient.http (binary_data={binary})")


def score_grpc(url, name, expected, key):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    # gRPC metadata keys are lower case.
    headers = {"authorization": f"Bearer {key}"} if key else None
    metadata = client.get_model_metadata(name, as_json=True, headers=headers)
    spec = metadata["inputs"][0]
    rows = np.asarray(expected["inputs"], dtype=NUMPY_TYPES[spec["datatype"]])
    tensor = grpcclient.InferInput(spec["name"], list(rows.shape), spec["datatype"])
    tensor.set_data_from_numpy(rows)
    result = client.infer(name, [tensor], headers=headers)
    answers = {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
    return check(name, answers, expected, "tritonclient.grpc")


def score_kserve(url, name, expected, key):
    """kserve's own REST client (v2 protocol, JSON tensors)."""
    import asyncio
    import urllib.request

    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    request = urllib.request.Request(f"http://{url}/v2/models/{name}", headers=bearer(key) or {})
    with urllib.request.urlopen(request) as response:
        metadata = json.load(response)
    spec = metadata["inputs"][0]
    rows = np.asarray(expected["inputs"], dtype=NUMPY_TYPES[spec["datatype"]])

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        tensor = InferInput(spec["name"], list(rows.shape), spec["datatype"])
        tensor.set_data_from_numpy(rows, binary_data=False)
        request = InferRequest(model_name=name, infer_inputs=[tensor], request_id="check-2")
        response = await client.infer(f"http://{url}", request, model_name=name, headers=bearer(key))
        await client.close()
        return {o.name: o.as_numpy() for o in response.outputs}

    return check(name, asyncio.run(run()), expected, "kserve")


def score_azureml(url, name, expected, key, expired_key=None, cors_origin=None):
    """A plain `requests` client, as Azure ML's documentation shows: `{"data": …}` with the
    key as a Bearer token; without it, or with a wrong or expired one, the endpoint answers
    401. Preflights as a browser sends them: allowed from `cors_origin`, not from another."""
    import requests

    body = {"data": expected["inputs"]}
    answer = requests.post(f"http://{url}/score", json=body, headers=bearer(key), timeout=30)
    answer.raise_for_status()
    result = answer.json()
    if isinstance(result, dict):
        answers = {k: np.asarray(v) for k, v in result.items()}
    else:
        answers = {"output": np.asarray(result)}
    ok = check(name, answers, expected, "requests (Azure ML /score)")
    if key:
        for headers, what in [(None, "no key"), (bearer("wrong"), "a wrong key")]:
            refused = requests.post(f"http://{url}/score", json=body, headers=headers, timeout=30)
            good = refused.status_code == 401 and "Bearer" in refused.headers.get("WWW-Authenticate", "")
            print(f"{'ok' if good else 'MISMATCH'}: {name} with {what} gets 401 (got {refused.status_code})")
            ok &= good
    if expired_key:
        refused = requests.post(f"http://{url}/score", json=body, headers=bearer(expired_key), timeout=30)
        challenge = refused.headers.get("WWW-Authenticate", "")
        good = refused.status_code == 401 and "expired" in challenge
        print(f"{'ok' if good else 'MISMATCH'}: {name} with an expired token gets 401 (got {refused.status_code}, {challenge!r})")
        ok &= good
    if cors_origin:
        for origin, allowed in [(cors_origin, True), ("https://elsewhere.example", False)]:
            preflight = requests.options(
                f"http://{url}/score",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
                timeout=30,
            )
            granted = preflight.headers.get("Access-Control-Allow-Origin") == origin
            methods = preflight.headers.get("Access-Control-Allow-Methods", "")
            good = preflight.status_code < 300 and (granted and "POST" in methods) == allowed
            verdict = "allowed" if allowed else "not allowed"
            print(f"{'ok' if good else 'MISMATCH'}: {name} preflight from {origin} {verdict} (got {preflight.status_code}, allow-origin {preflight.headers.get('Access-Control-Allow-Origin')!r})")
            ok &= good
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True, help="host:port of the REST endpoint")
    parser.add_argument("--grpc", required=True, help="host:port of the gRPC endpoint")
    parser.add_argument("--model", action="append", required=True, help="NAME=expected.json")
    # The two packages register the same protobuf names: one per process.
    parser.add_argument("--client", choices=["triton", "kserve", "azureml"], default="triton")
    parser.add_argument("--key", help="the endpoint's key or token, when it has auth")
    parser.add_argument("--expired-key", help="a token past its expiry, which must get 401")
    parser.add_argument("--cors-origin", help="an origin the endpoint allows")
    args = parser.parse_args()
    if args.client == "kserve":
        # kserve parses the command line of whatever imports it: hide ours.
        sys.argv = sys.argv[:1]
        try:
            import kserve  # noqa: F401
        except ImportError:
            print("skip: kserve is not installed")
            sys.exit(0)
    ok = True
    for item in args.model:
        name, path = item.split("=", 1)
        with open(path) as f:
            expected = json.load(f)
        if args.client == "kserve":
            ok &= score_kserve(args.http, name, expected, args.key)
            continue
        if args.client == "azureml":
            ok &= score_azureml(args.http, name, expected, args.key, args.expired_key, args.cors_origin)
            continue
        ok &= score_http(args.http, name, expected, binary=True, key=args.key)
        ok &= score_http(args.http, name, expected, binary=False, key=args.key)
        ok &= score_grpc(args.grpc, name, expected, args.key)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
