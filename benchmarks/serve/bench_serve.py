"""Load benchmark of `gpner serve`: micro-batched against batch-size-1 serving, side by side.

Two `gpner serve` processes run the same model on 127.0.0.1: one micro-batching (`--max-batch
32`), one answering request by request (`--max-batch 1 --max-wait-ms 0`). For each number of
concurrent clients (1, 8, 32) the two are loaded in alternating slices of `--slice-seconds`
(`--slices` each, order flipped every slice) so that both see the same background load; every
client keeps one connection and sends its next request (`--texts-per-request` CLUENER dev texts,
cycled) when the last is answered. Throughput counts the answers within the slices' windows;
every answer, in flight at a slice's end or not, is checked against offline `gpner.predict` on
the same texts: a request that fails or gets no answer is *lost*, one whose spans differ is
*wrong* (scores may differ in the last digits because batches pad differently; a span within
2e-3 of the threshold may fall either side). Loopback only; bounded in time and requests
(`--max-requests` per slice); stops by itself.

    PYTHONPATH=src python3 -m benchmarks.serve.bench_serve MODEL [--repeats 3] [--slices 6]
    python3 -m benchmarks.serve.make_results        # RESULTS.md from results/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy

import gpner
from gpner.data.writers import prediction_record

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

BASELINE = ["--max-batch", "1", "--max-wait-ms", "0"]
TOLERANCE = 2e-3


def load_dev():
    """CLUENER dev examples (their gold spans give the model's dev F1, measured here)."""
    from gpner.data.paths import resolve
    from gpner.data.readers import read

    return read(resolve("cluener/dev.json")), "CLUENER dev (cluener/dev.json)"


def start_server(model: str, mode_args: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "gpner", "serve", model, "--port", "0", "--threads", str(threads)]
    cmd += mode_args + ["--max-texts", "1024", "--log-level", "info"]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            return process, match.group(1)
    process.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def same(got: dict, want: dict, threshold: float) -> bool:
    if got.get("text") != want["text"]:
        return False
    a = {(s["start"], s["end"], s["label"]): s["score"] for s in got["spans"]}
    b = {(s["start"], s["end"], s["label"]): s["score"] for s in want["spans"]}
    for key in a.keys() ^ b.keys():
        if abs(a.get(key, b.get(key)) - threshold) > TOLERANCE:
            return False
    return all(abs(a[k] - b[k]) <= TOLERANCE for k in a.keys() & b.keys())


async def _post(reader, writer, host: str, body: bytes) -> tuple[int, bytes]:
    """One POST /predict on a kept-alive connection; (status, body)."""
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"
    )
    return status, await reader.readexactly(length)


async def load(url, clients, per_request, texts, seconds, max_requests):
    """Run ``clients`` request loops, one kept-alive connection each, sending until ``seconds``
    have passed or ``max_requests`` are sent; returns (stop, [(first_text_index, status, body,
    latency, finished_at)]). Requests in flight at the stop still finish and are checked.

    A plain HTTP/1.1 client on asyncio streams rather than httpx: httpx cost more CPU per
    request than the server did, on the same two cores, and would have measured the client."""
    host, port = url.removeprefix("http://").split(":")
    done: list = []
    counter = {"next": 0}
    stop = time.perf_counter() + seconds

    async def loop():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop and counter["next"] < max_requests:
                k = counter["next"]
                counter["next"] += 1
                first = (k * per_request) % len(texts)
                batch = [texts[(first + j) % len(texts)] for j in range(per_request)]
                body = json.dumps({"texts": batch}, ensure_ascii=False).encode()
                sent = time.perf_counter()
                try:
                    status, answer = await _post(reader, writer, f"{host}:{port}", body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    status, answer = None, repr(error).encode()
                now = time.perf_counter()
                done.append((first, status, answer, now - sent, now))
                if status is None:
                    return
        finally:
            writer.close()

    await asyncio.gather(*[loop() for _ in range(clients)])
    return stop, done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_slice(server, clients, per_request, texts, seconds, max_requests) -> dict:
    """One stretch of load on one server, with its CPU time and model calls."""
    process, url = server
    before = httpx.get(f"{url}/health").json()
    cpu_before, own_before = cpu_seconds(process.pid), time.process_time()
    start = time.perf_counter()
    stop, done = asyncio.run(load(url, clients, per_request, texts, seconds, max_requests))
    server_cpu = cpu_seconds(process.pid) - cpu_before
    client_cpu = time.process_time() - own_before
    after = httpx.get(f"{url}/health").json()
    return {
        "window": stop - start,
        "stop": stop,
        "done": done,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "calls": after["batches"] - before["batches"],
        "texts": after["texts"] - before["texts"],
    }


def summarize(slices, per_request, texts, expected, threshold) -> dict:
    """Throughput and latency over the slices' windows; every answer checked for correctness."""
    lost = wrong = 0
    answered = 0
    in_window = []
    for piece in slices:
        for first, status, body, latency, finished in piece["done"]:
            if status != 200:
                lost += 1
                continue
            answered += 1
            results = json.loads(body)["results"]
            want = [expected[(first + j) % len(texts)] for j in range(per_request)]
            if len(results) != per_request or not all(
                same(g, w, threshold) for g, w in zip(results, want)
            ):
                wrong += 1
            if finished <= piece["stop"]:
                in_window.append(latency)
    window = sum(piece["window"] for piece in slices)
    latencies = numpy.array(in_window) * 1000
    calls = sum(piece["calls"] for piece in slices)
    requests = sum(len(piece["done"]) for piece in slices)
    return {
        "slices": len(slices),
        "seconds": window,
        "requests": requests,
        "lost": lost,
        "wrong": wrong,
        "requests_per_s": len(in_window) / window,
        "texts_per_s": len(in_window) * per_request / window,
        "p50_ms": float(numpy.percentile(latencies, 50)),
        "p95_ms": float(numpy.percentile(latencies, 95)),
        "p99_ms": float(numpy.percentile(latencies, 99)),
        "model_calls": calls,
        "texts_per_call": sum(piece["texts"] for piece in slices) / max(calls, 1),
        "server_cpu_ms_per_text": 1000
        * sum(piece["server_cpu"] for piece in slices)
        / max(answered * per_request, 1),
        "client_cpu_ms_per_request": 1000
        * sum(piece["client_cpu"] for piece in slices)
        / max(requests, 1),
    }


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained model (what gpner.load reads)")
    parser.add_argument("--model-note", default="", help="how the model was trained (reported)")
    parser.add_argument(
        "--machine-note",
        default="",
        help="what else ran on the machine meanwhile (reported), e.g. that the run held it alone",
    )
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--slice-seconds", type=float, default=3.0, help="per slice")
    parser.add_argument("--slices", type=int, default=6, help="per mode, client count, repeat")
    parser.add_argument("--max-requests", type=int, default=2000, help="per slice")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--texts", type=int, default=1000, help="distinct texts cycled")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument(
        "--batched",
        default="--max-batch 32 --max-wait-ms 2",
        help="gpner serve options of the micro-batched server",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from gpner.metrics import SpanMetrics

    examples, source = load_dev()
    model = gpner.load(args.model)
    threshold = model.config.train.threshold
    predicted = gpner.predict(model, [ex.text for ex in examples])
    metrics = SpanMetrics()
    metrics.update([[s for s, _ in p] for p in predicted], [ex.spans for ex in examples])
    dev_f1 = metrics.compute()["micro"]["f1"]
    texts = [ex.text for ex in examples][: args.texts]
    expected = [prediction_record(t, p) for t, p in zip(texts, predicted)]
    levels = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()
    modes = {"micro-batched": args.batched.split(), "batch-size-1": BASELINE}
    servers = {name: start_server(args.model, extra, args.threads) for name, extra in modes.items()}
    runs = []
    try:
        for server in servers.values():  # warm-up: first calls allocate, fill caches
            run_slice(server, 4, args.texts_per_request, texts, 2.0, 200)
        for repeat in range(args.repeats):
            for clients in levels:
                # the two modes in alternating slices, so that both see the same background load
                slices = {name: [] for name in servers}
                for k in range(args.slices):
                    order = list(servers) if k % 2 == 0 else list(servers)[::-1]
                    for name in order:
                        slices[name].append(
                            run_slice(
                                servers[name],
                                clients,
                                args.texts_per_request,
                                texts,
                                args.slice_seconds,
                                args.max_requests,
                            )
                        )
                for name in servers:
                    result = summarize(
                        slices[name], args.texts_per_request, texts, expected, threshold
                    )
                    result.update(mode=name, clients=clients, repeat=repeat, load=os.getloadavg())
                    runs.append(result)
                    print(
                        f"{name:>13} {clients:>3} clients: {result['texts_per_s']:8.1f} texts/s "
                        f"p50 {result['p50_ms']:7.1f} ms p99 {result['p99_ms']:7.1f} ms "
                        f"{result['texts_per_call']:5.1f} texts/call "
                        f"{result['server_cpu_ms_per_text']:6.2f} server CPU ms/text "
                        f"lost {result['lost']} wrong {result['wrong']}",
                        flush=True,
                    )
        health = {name: httpx.get(f"{url}/health").json() for name, (_, url) in servers.items()}
    finally:
        for process, _ in servers.values():
            stop_server(process)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    cfg = model.config
    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        # what uvicorn picks up when installed (the serve extra installs both)
        "uvicorn_http": "httptools" if _importable("httptools") else "h11",
        "uvicorn_loop": "uvloop" if _importable("uvloop") else "asyncio",
        "machine_note": args.machine_note,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "model": {
            "note": args.model_note,
            "encoder": cfg.encoder.kind,
            "hidden_size": cfg.encoder.hidden_size,
            "num_layers": cfg.encoder.num_layers,
            "head": cfg.head.kind,
            "max_length": cfg.data.max_length,
            "labels": len(model.labels),
            "dev_micro_f1": dev_f1,
        },
        "texts": {"source": source, "distinct": len(texts), "per_request": args.texts_per_request},
        "mean_text_chars": sum(map(len, texts)) / len(texts),
        "settings": {
            "slice_seconds": args.slice_seconds,
            "slices": args.slices,
            "max_requests": args.max_requests,
            "repeats": args.repeats,
            "threads": args.threads,
            "modes": {name: " ".join(extra) for name, extra in modes.items()},
        },
        "server_batches": health,
        # the model's path is this machine's: MODEL stands for it
        "command": "python3 -m benchmarks.serve.bench_serve "
        + shlex.join("MODEL" if a == args.model else a for a in sys.argv[1:]),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
