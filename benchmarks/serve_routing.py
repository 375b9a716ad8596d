"""Serving latency: the routed HTTP path (proxy -> Router -> expert) against a direct handle call
to the same expert, with one plain Serve hop (GET /healthz: proxy -> Router) as the yardstick;
tier-1 routing latency; requests/s at a few concurrencies. Prints the ratio last:
(routed - direct) / one hop, goal <= ~1 (the router adds at most one Serve hop), median and
spread over the --repeats rounds (each times direct, routed, the hop and the floor in turn).

The floor is what any Serve HTTP ingress costs on the same path: Serve's plainest ingress
(second application, /floor: a deployment's __call__, no FastAPI) that reads the same JSON body
and awaits the same expert call, nothing else. (floor - direct) / hop is Serve's own share of
the ratio; (routed - floor) is our Router's (door, limits, routing, metrics, audit).
POST /floor/echo reads the body and answers at once: (echo - GET /floor/healthz) is the round
trip the replica makes back to the proxy to fetch a request body (Serve's ASGIReceiveProxy),
which no GET pays.

--direct-ingress sends the routed requests straight to the Router replica's own HTTP server
(Ray 2.60's experimental RAY_SERVE_ENABLE_DIRECT_INGRESS: no proxy, no body round trip); the
hop and the floor still go through the proxy, so the yardstick is the same.

Run: DS_ACCELERATOR=cpu .venv/bin/python benchmarks/serve_routing.py [--model HF_DIR]
         [--requests 100] [--repeats 3] [--concurrency 1,4,8] [--direct-ingress] [--json OUT]

Without --model a random 2-layer Llama with a trained tokenizer is built (seconds), so the expert
itself is cheap and the hops dominate. Starts its own Ray on 127.0.0.1 and stops only it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray listener on 127.0.0.1

TEXT = "Can you explain escrow in plain English?"


def random_model(path: Path, hidden: int = 32, layers: int = 2) -> None:
    """A random Llama-3-style chat model (as tests/serve/conftest.py builds), 2 layers of 32
    unless asked otherwise."""
    from mortgagellm.datasets.general import general_documents
    from mortgagellm.modeling import EOT, build_llama, stop_token_ids, train_tokenizer

    tokenizer = train_tokenizer(general_documents(0, 300, 0.1), 512)
    model = build_llama({"hidden_size": hidden, "intermediate_size": 2 * hidden,
                         "num_layers": layers, "num_heads": max(2, hidden // 64),
                         "max_position_embeddings": 256}, tokenizer, 0)
    model.config.eos_token_id = tokenizer.convert_tokens_to_ids(EOT)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.save_pretrained(path)
    tokenizer.eos_token = EOT
    tokenizer.save_pretrained(path)


def percentiles(samples: list[float]) -> str:
    """'p50 x ms  p99 y ms' of seconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms"


def timed(call, n: int) -> list[float]:
    """Wall seconds of n sequential calls (after 3 warm-up calls)."""
    for _ in range(3):
        call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def deploy_floor(expert: str, app_name: str) -> None:
    """The floor application at /floor: Serve's plainest HTTP ingress (a deployment's
    __call__ gets the Starlette request; no FastAPI, no middleware) -> the app's expert."""
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Floor:
        def __init__(self) -> None:
            self.expert = serve.get_deployment_handle(expert, app_name)

        async def __call__(self, request) -> Response:  # noqa: ANN001 - Starlette's Request
            if request.method == "GET":  # /floor/healthz
                return Response(b'{"status": "ok"}', media_type="application/json")
            body = await request.json()
            if request.url.path.endswith("/echo"):  # the body read, no expert call
                return Response(b'{}', media_type="application/json")
            items = await self.expert.complete.remote(body)
            return Response(json.dumps({"items": items}), media_type="application/json")

    serve.run(Floor.bind(), name="floor", route_prefix="/floor")


def router_port_url(session) -> str:  # noqa: ANN001 - a requests.Session with the key
    """The Router replica's own HTTP server under direct ingress: the first port of Ray's
    direct-ingress range (30000 up) on 127.0.0.1 that answers the Router's /v1/models."""
    import requests

    for port in range(30000, 30010):
        url = f"http://127.0.0.1:{port}"
        try:
            if session.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return url
        except requests.ConnectionError:
            continue
    raise RuntimeError("no Router replica answers on ports 30000-30009 (direct ingress)")


def tier1_latency(recipe) -> list[float]:
    """Wall seconds of tier-1 route() on every held-out routing request. Writes tier 1 where
    the app reads it: the corpus stage's 'tier1' output (as tests/serve/conftest.py does)."""
    from mortgagellm import manifest, routing, tier1
    from mortgagellm.datasets.tasks import build_task_sets

    sets = build_task_sets(recipe.corpus.tasks, recipe.run.seed)
    train = sets["routing_train"]
    corpus = Path(recipe.run.output_dir) / "corpus"
    metrics = tier1.write("ngram", train, sets["eval_routing"],
                          recipe.serve.router.clip_chars, recipe.run.seed,
                          corpus / routing.TIER1_FILE)
    manifest.write(str(corpus), manifest.Manifest(
        stage="corpus", fingerprint="bench", config={},
        outputs={"tier1": manifest.artifact(corpus / routing.TIER1_FILE)},
        metrics={"tier1": metrics}))
    model = tier1.load((corpus / routing.TIER1_FILE).read_text())  # what the app loads
    requests_ = [r["request"] for r in sets["eval_routing"]]
    out = []
    for text in requests_:
        start = time.perf_counter()
        routing.route(text, "mortgagellm", "tier1", model, 0.9)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model directory for both experts")
    parser.add_argument("--requests", type=int, default=100, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--no-audit", action="store_true", help="router without the audit log")
    parser.add_argument("--direct-ingress", action="store_true",
                        help="routed requests go straight to the Router replica's own HTTP "
                        "server (Ray 2.60's experimental RAY_SERVE_ENABLE_DIRECT_INGRESS), not "
                        "through the proxy; the hop and the floor still go through the proxy")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the three latency measurements")
    parser.add_argument("--concurrency", default="1,4,8", help="routed requests/s at these")
    parser.add_argument("--json", type=Path, help="write each round's p50s here")
    args = parser.parse_args()

    import ray
    import requests
    from ray import serve

    from mortgagellm.cluster.runtime import init_ray
    from mortgagellm.config import RayConfig, load_recipe
    from mortgagellm.serve import door, ops

    work = Path(tempfile.mkdtemp(prefix="mllm-bench-serve-"))
    model = args.model or str(work / "model")
    if not args.model:
        random_model(Path(model))
    key, line = door.new_key("bench")
    (work / "keys").write_text(line + "\n")
    audit_key = work / "run" / "serve" / "audit.key"  # the Router signs its audit log with it
    audit_key.parent.mkdir(parents=True)
    audit_key.write_text(secrets.token_hex(32))
    audit_key.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = work / "recipe.yaml"
    config.write_text(
        f"run: {{output_dir: {work / 'run'}}}\nserve:\n  port: {port}\n"
        f"  auth: {{keys_file: {work / 'keys'}}}\n  router: {{mode: tier1, num_cpus: 0.1}}\n"
        f"  audit: {{enabled: {str(not args.no_audit).lower()}}}\n"
        f"  structured: {{model: {model}, num_cpus: 0.5}}\n"
        f"  conversational: {{model: {model}, num_cpus: 0.5, max_ongoing_requests: 16, "
        f"max_queued_requests: 64}}\n")
    recipe = load_recipe(config)
    routing_times = tier1_latency(recipe)
    ray_dir = tempfile.mkdtemp(prefix="mllm-bs-", dir="/tmp")  # short: socket path limit
    if args.direct_ingress:  # read by the Serve controller and replicas this Ray starts
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    init_ray(RayConfig(num_cpus=4, object_store_mb=128, temp_dir=ray_dir), work / "run")
    try:
        url = ops.start(ops.app_args(str(config), []))
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        routed_url = router_port_url(session) if args.direct_ingress else url
        expert = serve.get_deployment_handle("ConversationalExpert", recipe.serve.app_name)
        deploy_floor("ConversationalExpert", recipe.serve.app_name)
        payload = {"messages": [{"role": "user", "content": TEXT}], "max_tokens": args.max_tokens,
                   "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []}
        body = {"model": "mortgagellm", "max_tokens": args.max_tokens,
                "messages": [{"role": "user", "content": TEXT}]}

        def routed():
            response = session.post(f"{routed_url}/v1/chat/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text

        def direct():
            expert.complete.remote(payload).result()

        def hop():
            assert session.get(f"{url}/healthz", timeout=60).status_code == 200

        def floor():
            response = session.post(f"{url}/floor/call", json=payload, timeout=60)
            assert response.status_code == 200, response.text

        def floor_echo():
            assert session.post(f"{url}/floor/echo", json=payload, timeout=60).ok

        def floor_get():
            assert session.get(f"{url}/floor/healthz", timeout=60).ok

        n, repeats = args.requests, []
        for repeat in range(args.repeats):
            results = {"direct": timed(direct, n), "routed": timed(routed, n),
                       "hop": timed(hop, n), "floor": timed(floor, n),
                       "floor_echo": timed(floor_echo, n), "floor_get": timed(floor_get, n)}
            repeats.append({f"{k}_p50_s": statistics.median(v) for k, v in results.items()})
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            print(f"expert, direct    {percentiles(results['direct'])}   "
                  "(handle -> expert.complete)")
            print(f"routed over HTTP  {percentiles(results['routed'])}   "
                  "(proxy -> Router -> expert)")
            print(f"one Serve hop     {percentiles(results['hop'])}   "
                  "(GET /healthz: proxy -> Router)")
            print(f"floor             {percentiles(results['floor'])}   "
                  "(proxy -> plainest Serve ingress -> expert)")
            print(f"body fetch        {percentiles(results['floor_echo'])}   "
                  f"(POST /floor/echo; GET /floor/healthz "
                  f"{statistics.median(results['floor_get']) * 1e3:.2f} ms)", flush=True)
        print(f"tier-1 routing    {percentiles(routing_times)}   ({len(routing_times)} requests)")
        throughput = {}
        for workers in (int(c) for c in args.concurrency.split(",")):
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda _: routed(), range(n)))
            throughput[workers] = n / (time.perf_counter() - start)
            print(f"concurrency {workers}     {throughput[workers]:7.1f} requests/s")
        ratios = [(r["routed_p50_s"] - r["direct_p50_s"]) / r["hop_p50_s"] for r in repeats]
        extra = statistics.median(r["routed_p50_s"] - r["direct_p50_s"] for r in repeats)
        floors = [(r["floor_p50_s"] - r["direct_p50_s"]) / r["hop_p50_s"] for r in repeats]
        over = statistics.median(r["routed_p50_s"] - r["floor_p50_s"] for r in repeats)
        print(f"router overhead (p50 routed - direct) / one hop = {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}] (goal <= ~1; {extra * 1e3:.1f} ms extra)")
        print(f"Serve's floor   (p50 floor - direct) / one hop  = {statistics.median(floors):.2f} "
              f"[{min(floors):.2f}-{max(floors):.2f}]; the Router over the floor "
              f"{over * 1e3:.1f} ms")
        if args.json:
            args.json.write_text(json.dumps({"repeats": repeats, "ratios": ratios,
                                             "requests_per_s": throughput}, indent=1))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
