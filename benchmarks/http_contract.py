"""The HTTP API's contract at depth: schemathesis generates requests from the served ``/openapi.json`` for every
operation and checks every reply (no 5xx; a documented status, content type and headers; a body that matches the
documented schema; schema-valid requests accepted, except where a file's bytes must decode as an image).

    .venv/bin/python benchmarks/http_contract.py [--examples 2400] [--out benchmarks/results/serving/http_contract.md]

A small CSS-like data set is built, ``sum`` is trained on it for 2 epochs and its images are indexed (all under
``--work``, kept between runs); then ``cirlab serve`` runs over a copy of that index with gallery changes on,
and the generated requests carry its token, so additions and removals are exercised too. ``--examples`` is the
number of generated cases per operation (hypothesis, derandomised: a rerun generates the same ones). The summary
(cases per operation, replies per status, each unique failure) goes to ``--out`` and beside it as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOKEN = "contract-token"


def cli(*args: str, env: dict) -> None:
    res = subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"cirlab {' '.join(map(str, args[:3]))} failed:\n{res.stderr[-2000:]}")


def prepare(work: Path, env: dict) -> tuple[Path, Path, Path]:
    """The data set, the model and the index (made once)."""
    data, model, index = work / "css", work / "sum.pt", work / "index"
    if not (data / "dataset.json").is_file():
        cli("data", "make", "css", "--size", "600", "--out", data, env=env)
    if not model.is_file():
        cli("train", "--method", "sum", "--data", data, "--epochs", "2", "--out", model, "--cache", work / "cache",
            "--quiet", env=env)
    if not (index / "CURRENT").is_file():
        cli("index", "build", data / "images", "--out", index, "--model", model, "--cache", work / "cache", "--quiet",
            env=env)
    return data, model, index


def fuzz(base: str, examples: int) -> dict:
    """Every operation, ``examples`` generated cases each; what was sent, what came back, what failed."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    cases: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if case.method in ("POST", "DELETE") and case.path.startswith("/gallery"):
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
            cases[name] += 1
            # a schema cannot say that a file field's bytes must decode as an image (415 otherwise)
            files = case.media_type == "multipart/form-data"
            response = case.call(base_url=base, timeout=60)
            statuses[f"{name} {response.status_code}"] += 1
            case.validate_response(response, excluded_checks=[positive_data_acceptance] if files else [])

        try:
            check()
        except BaseException as e:  # hypothesis reports the distinct failures it found (a group), each shrunk
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            failures[name] = str(e)[:4000]
    return {"cases": dict(cases), "statuses": dict(sorted(statuses.items())), "failures": failures}


def report(result: dict, command: str, seconds: float) -> str:
    total = sum(result["cases"].values())
    lines = ["# The HTTP API's contract at depth", "", f"Command: `{command}`", "",
             f"{total:,} generated requests over {len(result['cases'])} operations in {seconds:.0f} s, against "
             "`cirlab serve` over a CSS-like index with gallery changes on (the requests carry the token); "
             f"**{len(result['failures'])} failing operation(s)**.", "",
             "| operation | cases | replies by status |", "|---|---:|---|"]
    for name, n in result["cases"].items():
        replies = ", ".join(f"{k.rsplit(' ', 1)[1]}: {v}" for k, v in result["statuses"].items()
                            if k.rsplit(" ", 1)[0] == name)
        lines.append(f"| `{name}` | {n:,} | {replies} |")
    for name, text in result["failures"].items():
        lines += ["", f"## Failure: `{name}`", "", "```", text, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2400, help="generated cases per operation")
    ap.add_argument("--work", type=Path, default=Path("data/http_contract"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving" / "http_contract.md")
    a = ap.parse_args()
    from cirlab.files import atomic_write_text
    from cirlab.serve.launch import start_server, stop_server

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CIRLAB_HOME": str(work / "home"), "CIRLAB_API_TOKEN": TOKEN}
    _, model, index = prepare(work, env)
    served = work / "served-index"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(index, served)
    proc, base = start_server(["--index", served, "--model", model, "--cache", work / "cache"], env=env,
                              log=work / "server.log")
    start = time.perf_counter()
    try:
        result = fuzz(base, a.examples)
    finally:
        stop_server(proc)
    seconds = time.perf_counter() - start
    command = f"python benchmarks/http_contract.py --examples {a.examples}"
    atomic_write_text(a.out, report(result, command, seconds))
    atomic_write_text(a.out.with_suffix(".json"), json.dumps({"command": command, "seconds": round(seconds, 1),
                                                             **result}, indent=1))
    print(report(result, command, seconds))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
