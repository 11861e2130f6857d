"""Fair share: a second author's 10-panel batch, alone and while another author's 500-panel
batch runs, on 20 GPUs x 0.5 s, default settings. Time from its POST to its finished_at.

Within a priority, freed slots go to the waiting users in turn (batches/limiter.py), so B's ten
panels take every other slot A's batch frees instead of waiting behind A's 490 others.
Target: B within 2 x its time alone, and alone done <= 1.0 s after its POST. Each is timed
RUNS times (alone, then beside A's batch, which still runs after the last) and the medians are
compared: one sample of each gave ratios from 1.73 to 2.50 for the same code.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

import requests

from bench.stack import ROOT, VENV_BIN, Stack, StackConfig, report, verdict

WORKERS = 20
LATENCY = 0.5
BIG, SMALL = 500, 10
# B's batch is timed this many times alone and as many beside A's; the medians are compared.
RUNS = 3
TARGET = 2.0

_CREATE_AUTHOR = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("author-b", password="bench")
print(Token.objects.create(user=user).key)
"""


def second_author(stack: Stack) -> requests.Session:
    token = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "shell", "-c", _CREATE_AUTHOR],
        cwd=ROOT, env=stack.env(), check=True,
        capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return session


def timed_small(stack: Stack, author: requests.Session, prefix: str) -> float:
    start = time.time()
    batch = stack.submit(SMALL, prefix=prefix, session=author)
    row = stack.wait_terminal(batch["id"], timeout=120)
    return float(row["finished_at"].timestamp() - start)


def main() -> dict[str, Any]:
    config = StackConfig(emulator={"workers": WORKERS, "latency": LATENCY})
    with Stack(config) as stack:
        author_b = second_author(stack)
        stack.warm_up()
        time.sleep(3)
        alone = []
        for number in range(RUNS):
            alone.append(timed_small(stack, author_b, f"alone {number}"))
            time.sleep(1)
        big = stack.submit(BIG, prefix="author A")
        time.sleep(3)  # A's batch holds every slot by now
        shared = []
        for number in range(RUNS):
            shared.append(timed_small(stack, author_b, f"beside A {number}"))
            time.sleep(1)
        # Every B beside A counts only if A's batch was still running when it ended.
        a_status = stack.batch_row(big["id"])["status"]
        done = stack.sql(
            "SELECT count(*) FROM batches_imagejob WHERE batch_id = %s AND status = 'completed'",
            big["id"],
        )[0][0]
        stack.session.post(f"{stack.web_url}/api/v1/batches/{big['id']}/cancel/", timeout=30)
    ratio = statistics.median(shared) / statistics.median(alone)
    figures = {
        "emulator_workers": WORKERS, "latency_s": LATENCY, "big_batch": BIG, "small_batch": SMALL,
        "runs": RUNS, "alone_s": [round(value, 3) for value in alone],
        "beside_big_s": [round(value, 3) for value in shared], "ratio": round(ratio, 3),
        "big_completed_meanwhile": done, "big_status_after": a_status,
    }  # fmt: skip
    seconds = " / ".join
    report(
        "fairshare",
        [
            ("B's 10 panels alone, median (s)", statistics.median(alone), "<= 1.0",
             verdict(statistics.median(alone) <= 1.0)),
            ("  each run (s)", seconds(f"{value:.2f}" for value in alone), "", ""),
            ("B's 10 panels beside A's 500, median (s)", statistics.median(shared), "", ""),
            ("  each run (s)", seconds(f"{value:.2f}" for value in shared), "", ""),
            ("A's batch still running after them", a_status == "running", "True",
             verdict(a_status == "running")),
            ("beside / alone (medians)", ratio, "<= 2", verdict(ratio <= TARGET)),
        ],
        figures,
    )  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
