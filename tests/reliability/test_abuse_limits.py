"""Issue 19, limits: each test replays one attack of the red-team pass against a real `churnml serve`
and checks the limit holds (the bytes received, the parse, the event loop, the timeouts).

``limited`` is a service with small limits (16 MiB bodies, 1 s to send headers or a body, 4 requests
in flight, 2 s to answer), so each attack is quick to make; ``served`` has the defaults.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import RISK_ENV, Server, own_bentoml_home, start_server, stop_server
from tests.reliability.attacks import ReadyProbe, chunked, raw_request
from tests.test_serving import feature_record

TOKEN = "limits-token-3f9a1c7e5b2d8046"
MiB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def limited(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(champion_home, token=TOKEN, CHURNML_MAX_BODY_BYTES=str(16 * MiB), CHURNML_BODY_TIMEOUT="1",
                          CHURNML_HEADER_TIMEOUT="1", CHURNML_MAX_INFLIGHT="4", CHURNML_REQUEST_TIMEOUT="2",
                          **own_bentoml_home(tmp_path_factory.mktemp("limited")), **RISK_ENV)  # fmt: skip
    assert server.process.poll() is None, server.log()[-3000:]
    yield server
    stop_server(server)


def raw_customers(event_types: list[str], customers: int, events: int, dated: bool = True) -> list[dict]:
    """Valid raw-behaviour customers, each with its own as_of date and ``events`` events before it."""
    stamps = [f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z" for i in range(events)]
    kinds = [event_types[i % len(event_types)] for i in range(events)]
    evs = [{"timestamp": t, "event_type": k} for t, k in zip(stamps, kinds, strict=True)]
    days = [str(np.datetime64("2025-01-01") + i) for i in range(customers)]
    return [
        {"customer_id": f"c{i}", "events": evs, **({"as_of": days[i]} if dated else {})}
        for i in range(customers)
    ]


def counted(server: Server, route: str, status: int, at_least: float = 0.0) -> float:
    """How many requests /metrics counted for a route template and status (waiting up to 3 s for
    ``at_least``: a request is counted once its handler returns, which may be after the answer)."""
    deadline = time.time() + 3
    while True:
        count = 0.0
        for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
            if (
                line.startswith("churnml_http_requests_total{")
                and f'route="{route}"' in line
                and f'status="{status}"' in line
            ):
                count = float(line.rsplit(" ", 1)[1])
        if count >= at_least or time.time() > deadline:
            return count
        time.sleep(0.1)


def _head(server: Server, method: str, path: str, *headers: str) -> str:
    host = server.url.split("//", 1)[1]
    return "\r\n".join([f"{method} {path} HTTP/1.1", f"Host: {host}", *headers])


# ------------------------------------------------------------------------------------------ row 1


def test_a_chunked_body_over_the_limit_is_refused_by_the_bytes_received(limited: Server, trained) -> None:
    """Row 1: 70 MB of valid JSON sent chunked (no Content-Length) got 200: the limit read only the header."""
    _, fs, _ = trained
    body = json.dumps({"customers": raw_customers(list(fs.event_types), 700, 500, dated=False)}).encode()
    assert 17 * MiB < len(body) < 40 * MiB  # valid JSON, over the 16 MiB limit
    before = counted(limited, "/predict", 413)
    head = _head(limited, "POST", "/predict", f"Authorization: Bearer {TOKEN}", "Content-Type: application/json",
                 "Transfer-Encoding: chunked")  # fmt: skip
    answer = raw_request(limited.url, head, chunked(body))
    assert answer.status in (413, None), answer.head  # None: closed while we were still sending
    assert counted(limited, "/predict", 413, before + 1) == before + 1
    head = _head(limited, "POST", "/predict", f"Authorization: Bearer {TOKEN}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}")  # fmt: skip
    declared = raw_request(limited.url, head, [b"{"], pace=0.5)  # refused on the header, before the body
    assert declared.status == 413 and b"split the batch" in declared.body
    # the pages take small forms only, whatever the framing
    form = b"token=" + b"x" * (200 * 1024)
    head = _head(limited, "POST", "/ui/login", "Content-Type: application/x-www-form-urlencoded",
                 "Transfer-Encoding: chunked")  # fmt: skip
    answer = raw_request(limited.url, head, chunked(form, 16 * 1024))
    assert answer.status in (413, None) and counted(limited, "/ui/login", 413, 1) >= 1
    assert httpx.get(limited.url + "/readyz", timeout=5).status_code == 200


# ------------------------------------------------------------------------------------------ row 2


@pytest.mark.slow
def test_event_counts_stop_the_parse_without_holding_the_event_loop(served: Server, trained) -> None:
    """Row 2: 62 MiB of events got its 400 only after a full parse on the event loop (6 s; /readyz
    timed out). Here: 640,000 events (38 MB): refused while parsing, in a worker thread."""
    _, fs, _ = trained
    body = json.dumps({"customers": raw_customers(list(fs.event_types), 32, 20_000, dated=False)}).encode()
    probe = ReadyProbe(served.url)
    r = probe.during(lambda: httpx.post(served.url + "/predict", content=body, timeout=120,
                                        headers={**served.headers(), "content-type": "application/json"}))  # fmt: skip
    # the event loop kept answering while the body was refused (liveness, not speed: it stalled for seconds)
    assert probe.latencies and max(probe.latencies) < 1.0, max(probe.latencies)
    assert r.status_code == 400 and "at most 200,000" in r.json()["detail"][0]["msg"], r.text[:500]
    assert "Traceback" not in served.log()


@pytest.mark.slow
def test_a_body_of_arrays_is_refused_without_holding_the_event_loop(served: Server) -> None:
    """Row 2 with arrays instead of objects: the parser's object hook never sees them, and 32 MiB of
    empty arrays held the interpreter lock for 6 s (found after the fix above). Refused from its bytes."""
    junk = b",".join([b"[]"] * 11_000_000)
    body = b'{"customers": [{"customer_id": "a", "events": []}], "junk": [' + junk + b"]}"
    probe = ReadyProbe(served.url)
    r = probe.during(lambda: httpx.post(served.url + "/predict", content=body, timeout=120,
                                        headers={**served.headers(), "content-type": "application/json"}))  # fmt: skip
    assert probe.latencies and max(probe.latencies) < 1.0, max(probe.latencies)
    assert r.status_code == 400 and "JSON arrays and objects" in r.json()["detail"][0]["msg"], r.text[:500]


# ------------------------------------------------------------------------------------------ row 6


def test_many_as_of_dates_are_computed_in_one_pass(served: Server, trained) -> None:
    """Row 6: 500 customers with 500 different dates (61 KB) timed out at 30 s, a pass per date."""
    _, fs, _ = trained
    customers = raw_customers(list(fs.event_types), 500, 1)
    began = time.perf_counter()
    r = served.post("/predict", {"customers": customers})
    took = time.perf_counter() - began
    assert r.status_code == 200, r.text[:500]
    got = r.json()["predictions"]
    assert [p["as_of"] for p in got] == [c["as_of"] for c in customers]
    assert took < 15, took  # a pass per date took minutes; one pass takes well under a second
    # each customer scored as of its own date, exactly as when it is sent alone
    for k in (0, 250, 499):
        alone = served.post("/predict", {"customers": [customers[k]]}).json()["predictions"][0]
        assert alone["churn_probability"] == pytest.approx(got[k]["churn_probability"], rel=1e-12)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker(server: Server) -> int:
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    pids = [int(line.split()[0]) for line in out.splitlines()[1:]
            if line.split()[1] == str(server.process.pid) and "_bentoml_impl.worker" in line]  # fmt: skip
    assert len(pids) == 1, out
    return pids[0]


@pytest.mark.slow
def test_work_stops_when_the_request_times_out(limited: Server, trained) -> None:
    """Row 6: after the 504 both cores stayed busy; the work for a request that timed out must stop."""
    _, fs, _ = trained
    body = {"customers": raw_customers(list(fs.event_types), 1000, 200), "top_k": 20}  # ~4 s of work
    worker = _worker(limited)
    r = httpx.post(limited.url + "/explain", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 504, r.text[:300]
    time.sleep(0.5)  # the block in progress ends
    before = _cpu_seconds(worker)
    time.sleep(2.0)
    assert _cpu_seconds(worker) - before < 0.4  # idle, not computing the abandoned answer
    assert "request ended before its work finished" in limited.log()
    assert httpx.get(limited.url + "/readyz", timeout=5).status_code == 200


# ------------------------------------------------------------------------------------------ row 7


def _trickle(server: Server, path: str, length: int) -> tuple[int | None, float]:
    kind = "application/x-www-form-urlencoded" if path.startswith("/ui") else "application/json"
    head = _head(server, "POST", path, f"Authorization: Bearer {TOKEN}", f"Content-Type: {kind}",
                 f"Content-Length: {length}")  # fmt: skip
    answer = raw_request(server.url, head, (b"x" for _ in range(length)), pace=0.25, timeout=15)
    return answer.status, answer.seconds


@pytest.mark.slow
def test_slow_bodies_time_out_and_hold_no_in_flight_slot(limited: Server) -> None:
    """Row 7: a body sent at 1 byte/s held an in-flight slot for 30 s (64 of them: 503 for everyone);
    400 form fields of 1 MiB were read in full on /ui/login."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # twice the 4 slots
        slow = [pool.submit(_trickle, limited, path, 100) for path in ("/ui/login", "/predict") * 4]
        time.sleep(0.5)
        during = [httpx.post(limited.url + "/model", headers=AUTH, timeout=10).status_code for _ in range(5)]
        answers = [f.result() for f in slow]
    assert during == [200] * 5  # the slow senders took no slot
    assert [status for status, _ in answers] == [408] * 8, answers
    assert all(seconds < 5 for _, seconds in answers), answers
    fields = "&".join(f"f{i}=" + "x" * 1024 for i in range(400)).encode()
    head = _head(limited, "POST", "/ui/login", "Content-Type: application/x-www-form-urlencoded",
                 f"Content-Length: {len(fields)}")  # fmt: skip
    before = counted(limited, "/ui/login", 413)
    # refused from its Content-Length; the connection is closed unread, so the client may see a reset
    assert raw_request(limited.url, head, [fields]).status in (413, None)
    assert counted(limited, "/ui/login", 413, before + 1) == before + 1


def test_slow_headers_are_cut_off(limited: Server) -> None:
    """Headers sent a byte at a time: the connection is answered 408 and closed, not held open."""
    head = f"GET /readyz HTTP/1.1\r\nHost: {limited.url.split('//', 1)[1]}\r\nX-Slow: "
    answer = raw_request(limited.url, head, (b"a" for _ in range(40)), pace=0.2, timeout=6, end_headers=False)
    assert answer.status == 408 and answer.seconds < 4, (answer.status, answer.seconds)


# ------------------------------------------------------------------------------------------ row 8


@pytest.mark.slow
def test_bulk_feature_records_leave_the_event_loop(served: Server, trained) -> None:
    """Row 8: 8 concurrent /explain of 1,000 feature records (top_k 20) all got 200, but /readyz timed
    out meanwhile: feature records ran on the event loop."""
    table, _, result = trained
    record = feature_record(table, 5, result.model.feature_names)
    body = {"customers": [{"customer_id": f"c{i}", "features": record} for i in range(1000)], "top_k": 20}

    async def eight() -> list[int]:
        async with httpx.AsyncClient(timeout=120, headers=served.headers()) as client:
            answers = await asyncio.gather(
                *(client.post(served.url + "/explain", json=body) for _ in range(8))
            )
        return [a.status_code for a in answers]

    probe = ReadyProbe(served.url)
    codes = probe.during(lambda: asyncio.run(eight()))
    assert codes == [200] * 8
    assert len(probe.latencies) > 10 and max(probe.latencies) < 1.0, max(probe.latencies)  # liveness
