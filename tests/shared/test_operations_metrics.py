"""Issue 25's operations series: time to result and queue wait by lane and model version, and
GPU utilisation and memory through NVML where a driver is (none: no series, no error)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import QUEUE_WAIT_SECONDS, TIME_TO_RESULT_SECONDS, NvmlCollector, observe_result_times


def _count(histogram, **labels) -> float:
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels == labels:
                return sample.value
    return 0.0


def test_an_outcome_is_timed_by_lane_and_model_version():
    submitted = datetime(2026, 1, 1, tzinfo=UTC)
    labels = {"lane": "bulk", "model_version": "fusion-test-25"}
    waited, ended = _count(QUEUE_WAIT_SECONDS, **labels), _count(TIME_TO_RESULT_SECONDS, **labels, status="succeeded")
    observe_result_times("bulk", "fusion-test-25", "succeeded", submitted, submitted + timedelta(seconds=40),
                         submitted + timedelta(seconds=45))
    assert _count(QUEUE_WAIT_SECONDS, **labels) == waited + 1
    assert _count(TIME_TO_RESULT_SECONDS, **labels, status="succeeded") == ended + 1
    # No model ran (an image gone before the pass): still timed, under "none".
    observe_result_times("interactive", None, "failed", submitted, None, submitted + timedelta(seconds=1))
    assert _count(TIME_TO_RESULT_SECONDS, lane="interactive", model_version="none", status="failed") >= 1


class _FakeNvml:
    """NVML's calls as nvidia-ml-py names them, for two GPUs (no driver on the test machines)."""

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise OSError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=[35, 90][handle], memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=[1, 70][handle] * 2**30, total=80 * 2**30, free=0)


def _scrape(collector) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, s.labels.get("gpu", "")): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_each_gpu_reports_its_utilisation_and_memory():
    samples = _scrape(NvmlCollector.create(_FakeNvml()))
    assert samples[("dermasentinel_gpu_utilization_ratio", "1")] == 0.9
    assert samples[("dermasentinel_gpu_memory_used_bytes", "0")] == 2**30
    assert samples[("dermasentinel_gpu_memory_total_bytes", "1")] == 80 * 2**30


def test_without_a_driver_there_are_no_gpu_series_and_no_error():
    assert NvmlCollector.create(_FakeNvml(fail_init=True)) is None
    # This machine as it is: the real library, whatever driver it finds, never raises.
    real = NvmlCollector.create()
    if real is not None:  # a GPU host
        assert any(name == "dermasentinel_gpu_memory_total_bytes" for name, _ in _scrape(real))
