"""End-to-end throughput of a running stack: N synthetic lesions submitted, analysed and
reported, measured from the client's side.

    .venv/bin/dermasentinel up &                     # default sizes (512), wait for "running at"
    .venv/bin/python -m benchmarks.throughput --images 20

Reads the API URL and key from DATA_DIR/stack.env (written by `up`), or from
--api-url/--api-key.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from dermasentinel_client import Client

from shared.config import get_settings
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="parallel uploads")
    parser.add_argument("--api-url")
    parser.add_argument("--api-key")
    args = parser.parse_args()

    settings = get_settings()
    client = Client(base_url=args.api_url or settings.api_url,
                    api_key=args.api_key or settings.api_key.get_secret_value())
    images = [
        encode_jpeg(make_lesion(seed=i, size=(768, 1024), radius_frac=0.18 + 0.01 * (i % 5),
                                irregularity=0.1 * (i % 7), variegation=0.1 * (i % 6), ita=10 + 7 * (i % 8)).image)
        for i in range(args.images)
    ]
    started = time.monotonic()

    def submit(index: int) -> tuple[str, float]:
        created = client.analyses.create(images[index], filename=f"bench-{index}.jpg", age=30 + index,
                                         sex="female", site="torso")
        return str(created.id), time.monotonic()

    with ThreadPoolExecutor(args.concurrency) as pool:
        submitted = list(pool.map(submit, range(args.images)))
    upload_s = time.monotonic() - started

    latencies, statuses = [], {}
    for analysis_id, submitted_at in submitted:
        analysis = client.analyses.wait(analysis_id, timeout=3600, poll_interval=0.25)
        statuses[analysis.status] = statuses.get(analysis.status, 0) + 1
        latencies.append(time.monotonic() - submitted_at)
    total_s = time.monotonic() - started
    client.close()

    print(f"images={args.images} uploads={upload_s:.1f}s total={total_s:.1f}s statuses={statuses}")
    print(f"throughput: {args.images / total_s * 60:.1f} images/minute end to end")
    print(f"latency submit->final: median {statistics.median(latencies):.1f}s max {max(latencies):.1f}s")


if __name__ == "__main__":
    main()
