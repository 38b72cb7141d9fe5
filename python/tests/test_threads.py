"""One model called from many Python threads at once gives what serial calls give."""

import threading

import numpy as np

import fff
from conftest import LONG_TEXT, TEXTS, load_inputs

THREADS = 8
CALLS = 5


def run_concurrently(work):
    """Runs `work(i)` on THREADS threads started together; returns their results, or raises."""
    results = [None] * THREADS
    errors = []
    start = threading.Barrier(THREADS)

    def worker(i):
        try:
            start.wait()
            results[i] = [work(i) for _ in range(CALLS)]
        except BaseException as e:  # noqa: BLE001 - reported on the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_embed_and_run_from_eight_threads(text_plan):
    m = fff.Model(text_plan)
    # Each thread has its own texts and inputs, so a mix-up between calls would show.
    texts = [[TEXTS[i % len(TEXTS)], LONG_TEXT[: 10 * (i + 1)]] for i in range(THREADS)]
    inputs = load_inputs()
    batches = [{name: np.roll(a, i, axis=1) for name, a in inputs.items()} for i in range(THREADS)]
    serial_embed = [m.embed(t, pooling="mean", normalize=True) for t in texts]
    serial_run = [m.run(b)["last_hidden_state"] for b in batches]

    def work(i):
        if i % 2:
            return m.embed(texts[i], pooling="mean", normalize=True)
        return m.run(batches[i])["last_hidden_state"]

    for i, calls in enumerate(run_concurrently(work)):
        want = serial_embed[i] if i % 2 else serial_run[i]
        for got in calls:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_single_threaded_model_serves_threads_too(plan):
    m = fff.Model(plan, threads=1)
    assert m.threads == 1
    want = m.run(load_inputs())["pooler_output"]
    for calls in run_concurrently(lambda i: m.run(load_inputs())["pooler_output"]):
        for got in calls:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
