"""Inference benchmark: the OpenAI-compatible endpoint against `generate` called in-process.

    .venv/bin/python bench/inference.py [--model DIR] [--requests 40] [--duration 20]

Measures, for a 16-token greedy answer about one 112x112 image:
  - p50/p99 latency of `adapter.generate` called directly in this process, alternating with
    p50/p99 latency of POST /v1/chat/completions through the running service (`mbpo api` +
    `mbpo worker --queues inference --pool threads --concurrency 16`, PostgreSQL + Redis: the
    request goes through the inference request channel, infra/requests.py), and the ratio
    endpoint/direct at p50 (goal <= 1.1, GOAL_RATIO_P50);
  - time to the first streamed token (stream=true);
  - throughput (requests/s, tokens/s) at 1, 4 and 16 concurrent clients.

--model: a model directory. Default: a random-weight Qwen2-VL of the testbed's size ("small", 112 px
images), which costs the same compute per token as the testbed's base model and always runs the full
16 tokens (it never ends its turn). The trained testbed model (`--model TESTBED/base_model`) answers
"yes"/"no" in one token, so its figures measure the fixed cost of a request, not 16 tokens.
Creates a throwaway database on the local PostgreSQL and a throwaway Redis key prefix. The report
records the machine's load average before and after.

--baseline-tree DIR: before/after on a shared, noisy machine. DIR is another checkout of this
repository (e.g. `git worktree add /tmp/base <commit>`); its `mbpo api` and `mbpo worker` run beside
this tree's, on the same database, Redis and model (each service with a key prefix of its own), and
every round sends one request to each, in alternating order, right after the direct call. The report
adds the baseline's p50/p99, its ratio, and the median of the paired differences
(this tree - baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.auth.service import create_api_key  # noqa: E402
from infra.db.models import BaseModelRecord  # noqa: E402
from infra.db.session import make_engine, make_session_factory  # noqa: E402
from tests.helpers import services  # noqa: E402
from tests.helpers.inference import data_url, png_bytes  # noqa: E402

QUESTION = "is there a red circle ?"
MAX_TOKENS = 16
IMAGE_SIZE = 112
GOAL_RATIO_P50 = 1.1  # endpoint p50 / direct p50


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pick_model(arg: str | None, scratch: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    from mbpo_core.models.build import build_model, build_processor

    words = ["is", "there", "a", "red", "blue", "circle", "square", "yes", "no", "?"]
    processor = build_processor("qwen2_vl", words, image_size=IMAGE_SIZE)
    model = build_model("qwen2_vl", processor, "small", seed=0)
    out = scratch / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, "random Qwen2-VL, testbed size (small)"


class Direct:
    """`adapter.generate` in this process: the baseline."""

    def __init__(self, model_dir: Path, png: bytes):
        from mbpo_core.models.loader import load_adapter
        from mbpo_core.serving.engine import pixels_from_bytes

        self.adapter = load_adapter(model_dir)
        self.pixels = pixels_from_bytes(png).unsqueeze(0)

    def __call__(self) -> tuple[float, str]:
        started = time.perf_counter()
        answer = self.adapter.generate(self.pixels, [QUESTION], max_new_tokens=MAX_TOKENS)[0]
        return time.perf_counter() - started, answer


def body(model: str, png: bytes, stream: bool = False) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": data_url(png)}}, {"type": "text", "text": QUESTION}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    }


def one_request(client: httpx.Client, model: str, png: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    resp = client.post("/v1/chat/completions", json=body(model, png))
    resp.raise_for_status()
    return time.perf_counter() - started, int(resp.json()["usage"]["completion_tokens"])


def first_token(client: httpx.Client, model: str, png: bytes) -> float:
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body(model, png, stream=True)) as resp:
        resp.raise_for_status()
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    elapsed = time.perf_counter() - started
                    for _ in lines:  # read the rest, so the next request starts on an idle model
                        pass
                    return elapsed
    raise RuntimeError("stream ended without a token")


def throughput(
    url: str, headers: dict[str, str], model: str, png: bytes, clients: int, duration: float
) -> dict[str, float]:
    done: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def loop() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            while time.perf_counter() < stop_at:
                result = one_request(client, model, png)
                with lock:
                    done.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies = [d[0] for d in done]
    return {
        "clients": clients,
        "requests": len(done),
        "requests_per_s": round(len(done) / wall, 2),
        "tokens_per_s": round(sum(d[1] for d in done) / wall, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: a random testbed-size model)")
    parser.add_argument("--requests", type=int, default=40, help="sequential requests for latency")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per throughput level")
    parser.add_argument("--clients", default="1,4,16", help="throughput levels; empty: none")
    parser.add_argument(
        "--baseline-tree", help="another checkout of the repository to serve side by side (before/after)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process and of the worker (OMP_NUM_THREADS); on a small shared "
        "machine, spinning OpenMP threads of one process slow the other down",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    scratch = Path(tempfile.mkdtemp(prefix="mbpo-bench-inference-"))
    model_dir, model_kind = pick_model(args.model, scratch)
    png = png_bytes(IMAGE_SIZE, IMAGE_SIZE, seed=1)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "model_kind": model_kind,
        "max_tokens": MAX_TOKENS,
        "torch_threads": args.threads,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }

    generate = Direct(model_dir, png)
    _, answer = generate()  # warm-up
    report["answer_tokens"] = len(generate.adapter.tokenizer(answer, add_special_tokens=False)["input_ids"])

    with services.fresh_database() as db_url:
        engine = make_engine(db_url)
        with make_session_factory(engine).begin() as session:
            key_row, key = create_api_key(session, user_name="bench", key_name="bench", admin=False)
            record = BaseModelRecord(
                owner_id=key_row.user_id,
                name="bench",
                path=str(model_dir),
                family="qwen2_vl",
                model_type="qwen2_vl",
                architectures=[],
                param_count=0,
            )
            session.add(record)
            session.flush()
            model = f"model:{record.id}"
        engine.dispose()
        trees = {"endpoint": REPO}
        if args.baseline_tree:
            trees["baseline"] = Path(args.baseline_tree).resolve()
        stacks = [Service(name, tree, db_url, scratch, args.threads) for name, tree in trees.items()]
        headers = {"Authorization": f"Bearer {key}"}
        try:
            clients = {}
            for stack in stacks:
                services.wait_for(stack.healthy, timeout=120, what=f"mbpo api ({stack.name})")
                clients[stack.name] = httpx.Client(base_url=stack.url, headers=headers, timeout=300)
                for _ in range(3):  # model load, torch warm-up
                    one_request(clients[stack.name], model, png)
            # Alternate them, so all see the same machine load (it is shared and noisy).
            direct: list[float] = []
            latency: dict[str, list[float]] = {name: [] for name in clients}
            for i in range(args.requests):
                direct.append(generate()[0])
                for name in list(clients)[:: 1 if i % 2 == 0 else -1]:
                    latency[name].append(one_request(clients[name], model, png)[0])
            client = clients["endpoint"]
            ttft = [first_token(client, model, png) for _ in range(max(5, args.requests // 2))]
            report["direct"] = _summary(direct)
            for name, values in latency.items():
                report[name] = _summary(values)
                report[name]["ratio_p50"] = round(percentile(values, 0.5) / percentile(direct, 0.5), 3)
            endpoint = latency["endpoint"]
            report["ratio_p50"] = round(percentile(endpoint, 0.5) / percentile(direct, 0.5), 3)
            report["goal_ratio_p50"] = GOAL_RATIO_P50
            report["goal_met"] = report["ratio_p50"] <= GOAL_RATIO_P50
            report["ratio_p99"] = round(percentile(endpoint, 0.99) / percentile(direct, 0.99), 3)
            report["time_to_first_token"] = _summary(ttft)
            print("direct:", report["direct"], "endpoint:", report["endpoint"], flush=True)
            met = "met" if report["goal_met"] else "not met"
            print(f"ratio p50: {report['ratio_p50']} (goal <= {GOAL_RATIO_P50}: {met})", flush=True)
            if "baseline" in latency:
                paired = [a - b for a, b in zip(endpoint, latency["baseline"], strict=True)]
                report["paired_difference_p50_ms"] = round(1000 * percentile(paired, 0.5), 2)
                print("baseline:", report["baseline"], flush=True)
                print(
                    "this tree - baseline, paired median (ms):",
                    report["paired_difference_p50_ms"],
                    flush=True,
                )
            print("time to first token:", report["time_to_first_token"], flush=True)
            report["throughput"] = []
            for level_clients in (int(c) for c in args.clients.split(",") if c.strip()):
                level = throughput(stacks[0].url, headers, model, png, level_clients, args.duration)
                report["throughput"].append(level)
                print("throughput:", level, flush=True)
            for c in clients.values():
                c.close()
        finally:
            for stack in stacks:
                stack.stop()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * percentile(values, 0.5), 1),
        "p99_ms": round(1000 * percentile(values, 0.99), 1),
    }


class Service:
    """`mbpo api` and an inference worker (`--pool threads --concurrency 16`) of the code in `tree`,
    with a Redis key prefix and MBPO_HOME of their own."""

    def __init__(self, name: str, tree: Path, db_url: str, scratch: Path, threads: int):
        self.name = name
        self.prefix = services.broker_prefix()
        self.url = f"http://127.0.0.1:{services.free_port()}"
        env = services.service_env(
            DATABASE_URL=db_url,
            BROKER_URL=services.REDIS_URL,
            MBPO_BROKER_KEY_PREFIX=self.prefix,
            MBPO_HOME=str(scratch / f"home-{name}"),
            MBPO_LOG_LEVEL="WARNING",
            # One key sends everything: the per-key limit would measure itself, not the inference path.
            MBPO_RATE_LIMIT_INFERENCE_PER_MINUTE="0",
            OMP_NUM_THREADS=str(threads),
        )
        worker = [
            "worker",
            "--queues",
            "inference",
            "--pool",
            "threads",
            "--concurrency",
            "16",
            "--loglevel",
            "WARNING",
        ]
        api = ["api", "--port", self.url.rsplit(":", 1)[1]]
        self.procs = []
        for args in (worker, api):
            log = (scratch / f"{name}-{args[0]}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mbpo_cli.main", *args],
                    env=env,
                    cwd=tree,  # `python -m` imports the code of the tree it runs in
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def healthy(self) -> bool:
        return _healthy(self.url)

    def stop(self) -> None:
        for proc in self.procs:
            services.stop_process_group(proc)
        services.delete_redis_prefix(self.prefix)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
