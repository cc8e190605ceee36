"""The micro-batcher alone, with a recording prediction function instead of a model."""

import asyncio
import threading
import time

import pytest

from gpner.serve.batcher import MicroBatcher, QueueFull


class Recorder:
    """Echoes each text with its options; records each call's texts and the calling thread."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls, self.threads = [], set()
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, texts, threshold, flat):
        self.calls.append(list(texts))
        self.threads.add(threading.get_ident())
        if self.fail_on and self.fail_on in texts:
            raise RuntimeError("boom")
        time.sleep(self.delay)
        return [(t, threshold, flat) for t in texts]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_calls_and_get_their_own_results():
    recorder = Recorder(delay=0.01)

    async def main():
        batcher = MicroBatcher(recorder, max_batch=8, max_wait=0.05)
        await batcher.start()
        try:
            jobs = [batcher.submit([f"r{k}a", f"r{k}b"][: 1 + k % 2]) for k in range(20)]
            return await asyncio.gather(*jobs), batcher.stats
        finally:
            await batcher.stop()

    results, stats = run(main())
    for k, result in enumerate(results):
        assert [t for t, _, _ in result] == [f"r{k}a", f"r{k}b"][: 1 + k % 2]
    sizes = [len(c) for c in recorder.calls]
    assert sum(sizes) == 30 and len(sizes) < 20  # batched
    assert max(sizes) <= 8 + 1  # gathering stops at max_batch (a 2-text request may straddle it)
    assert stats.batches == len(sizes) and stats.texts == 30 and stats.largest == max(sizes)
    assert threading.get_ident() not in recorder.threads  # the model ran off the event loop


def test_one_large_request_runs_whole_and_options_are_grouped():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=2, max_wait=0.05)
        await batcher.start()
        try:
            big = batcher.submit([str(k) for k in range(5)])
            a = batcher.submit(["x"], threshold=1.0)
            b = batcher.submit(["y"], flat=True)
            return await asyncio.gather(big, a, b)
        finally:
            await batcher.stop()

    big, a, b = run(main())
    assert [t for t, _, _ in big] == ["0", "1", "2", "3", "4"]
    assert a == [("x", 1.0, None)] and b == [("y", None, True)]
    assert ["0", "1", "2", "3", "4"] in recorder.calls  # never split
    assert all(len({*call} & {"x", "y"}) <= 1 for call in recorder.calls)  # options apart


def test_a_failed_batch_fails_its_requests_and_the_worker_goes_on():
    recorder = Recorder(fail_on="bad")

    async def main():
        batcher = MicroBatcher(recorder, max_batch=1, max_wait=0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(["bad"])
            assert batcher.alive
            return await batcher.submit(["good"]), batcher.stats.failures
        finally:
            await batcher.stop()

    good, failures = run(main())
    assert good == [("good", None, None)] and failures == 1


def test_queue_limit_and_settings():
    async def main():
        batcher = MicroBatcher(Recorder(delay=0.3), max_batch=1, max_wait=0, max_queue=3)
        await batcher.start()
        try:
            running = asyncio.ensure_future(batcher.submit(["a"]))
            await asyncio.sleep(0.1)  # the model is busy with "a"
            waiting = asyncio.ensure_future(batcher.submit(["b", "c"]))
            await asyncio.sleep(0)  # queued behind it: 2 texts waiting
            with pytest.raises(QueueFull, match="max_queue=3"):
                await batcher.submit(["d", "e"])
            return await running + await waiting
        finally:
            await batcher.stop()

    assert len(run(main())) == 3
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError, match="max_queue"):
        MicroBatcher(Recorder(), max_queue=0)
    with pytest.raises(RuntimeError, match="not running"):
        run(MicroBatcher(Recorder()).submit(["a"]))


def test_the_queue_limit_counts_only_texts_still_waiting():
    # The injected leak: texts taken by the worker were never subtracted from the queue count,
    # so once max_queue texts had ever been queued every request got QueueFull (503).
    recorder = Recorder(fail_on="boom")

    async def main():
        batcher = MicroBatcher(recorder, max_batch=2, max_wait=0.01, max_queue=4)
        await batcher.start()
        try:
            for round_ in range(10):  # 10 x 4 texts through a queue of 4, one request at a time
                texts = [f"{round_}-{k}" for k in range(4)]
                assert [t for t, _, _ in await batcher.submit(texts)] == texts
            # concurrent requests, mixed options, a failed batch and a cancelled request: each
            # frees its place once the worker has taken it
            for _ in range(5):
                ok = batcher.enqueue(["a"], 0.5)
                bad = batcher.enqueue(["boom"])
                gone = batcher.enqueue(["c"], None, True)
                gone.cancel()
                assert len(await ok) == 1
                with pytest.raises(RuntimeError, match="boom"):
                    await bad
            await asyncio.sleep(0.05)  # the worker has taken the cancelled one too
            # and a full queue's worth is accepted again, repeatedly
            for _ in range(3):
                assert len(await batcher.submit(["x"] * 4)) == 4
            with pytest.raises(QueueFull):  # the limit itself still holds
                batcher.enqueue(["y"] * 5)
        finally:
            await batcher.stop()

    run(main())


def test_the_window_is_waited_only_for_announced_requests():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=8, max_wait=0.5)
        await batcher.start()
        try:
            start = time.perf_counter()
            await batcher.submit(["alone"])  # nobody else on the way: no wait
            alone = time.perf_counter() - start
            with batcher.arriving():  # another request is being parsed
                first = batcher.enqueue(["a"])
                await asyncio.sleep(0.05)
                second = batcher.enqueue(["b"])
            await asyncio.gather(first, second)
            # the last batch held two requests (load): the next one waits for company
            start = time.perf_counter()
            await batcher.submit(["after"])
            return alone, time.perf_counter() - start
        finally:
            await batcher.stop()

    alone, after = run(main())
    assert alone < 0.25 and after >= 0.45
    assert recorder.calls == [["alone"], ["a", "b"], ["after"]]  # the gatherer waited for "b"


def test_a_backlog_runs_at_once_without_the_window():
    recorder = Recorder(delay=0.2)

    async def main():
        batcher = MicroBatcher(recorder, max_batch=8, max_wait=5.0)
        await batcher.start()
        try:
            first = batcher.enqueue(["a"])  # nobody else on the way: runs at once
            await asyncio.sleep(0.05)  # the model is busy with "a"
            with batcher.arriving():  # and yet another request is announced
                queued = [batcher.enqueue(["b"]), batcher.enqueue(["c"])]
                start = time.perf_counter()
                await asyncio.gather(first, *queued)
                return time.perf_counter() - start
        finally:
            await batcher.stop()

    # what queued while the model ran is the next batch as it stands: no 5 s window for more
    assert run(main()) < 3.0
    assert recorder.calls == [["a"], ["b", "c"]]
