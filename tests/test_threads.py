"""Many threads, one shared model: every method gives exactly the sequential results, no call
sees another call's hooks, and no hook is left on any submodule (``ta.cam`` used to leave a
forward hook behind and IG with ``layer=`` was ~11 % wrong from two threads)."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from method_calls import BAG, CALLS, CNN, IDS, IMAGES, assert_same, hooks_left
from model_state import assert_unchanged, snapshot
from models import build

import torchattr as ta

THREADS = 4


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Python threads share the cores: no intra-op pool per call (CI has 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _variants(kind: str, n: int = THREADS) -> list[torch.Tensor]:
    """``n`` different inputs, so that a value captured by another call would show."""
    if kind == "ids":
        return [IDS.roll(i, dims=1) for i in range(n)]
    return [IMAGES * (1 + i / 4) + i / 10 for i in range(n)]


def _run_threads(jobs, rounds: int, threads: int = THREADS) -> list:
    """Run ``jobs`` (callables) ``rounds`` times in a shuffled order on ``threads`` threads."""
    order = [j for _ in range(rounds) for j in range(len(jobs))]
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda j: (j, jobs[j]()), order))
    return results


def test_every_method_from_threads_equals_sequential():
    cases = [(name, x) for name, (kind, _) in CALLS.items() for x in _variants(kind, 2)]
    jobs = [lambda name=name, x=x: CALLS[name][1](x) for name, x in cases]
    states = [snapshot(CNN), snapshot(BAG)]
    expected = [job() for job in jobs]
    for j, result in _run_threads(jobs, rounds=1):
        assert_same(result, expected[j])
    assert not hooks_left(CNN, BAG)
    assert_unchanged(CNN, states[0])
    assert_unchanged(BAG, states[1])


@pytest.mark.parametrize("method", ["gradcam", "ablationcam", "fullgrad"])
def test_cam_from_threads_leaves_no_hook_over_many_rounds(method):
    model, x = build("residual", dtype=torch.float32)
    layer = None if method == "fullgrad" else "conv3"
    inputs = [x * (i + 1) for i in range(THREADS)]
    expected = [ta.cam(model, xi, layer=layer, method=method) for xi in inputs]
    jobs = [lambda xi=xi: ta.cam(model, xi, layer=layer, method=method) for xi in inputs]
    for _ in range(5):
        for j, result in _run_threads(jobs, rounds=5):
            torch.testing.assert_close(result, expected[j], rtol=0, atol=0)
        assert not hooks_left(model)
    torch.testing.assert_close(model(x), model(x))  # the user's own call still works


def test_integrated_gradients_layer_from_threads_is_never_wrong():
    inputs = _variants("ids")
    expected = [ta.integrated_gradients(BAG, ids, layer=BAG.emb, steps=3) for ids in inputs]
    jobs = [
        lambda ids=ids: ta.integrated_gradients(BAG, ids, layer=BAG.emb, steps=3) for ids in inputs
    ]
    wrong = sum(not torch.equal(result, expected[j]) for j, result in _run_threads(jobs, rounds=50))
    assert wrong == 0
    assert not hooks_left(BAG)


def test_plain_forwards_of_other_threads_never_see_a_call_hook():
    """The user's own forwards, running while attributions replace or capture layer outputs."""
    plain = BAG(IDS)
    stop = threading.Event()
    seen = []

    def user_loop():
        while not stop.is_set():
            with torch.no_grad():
                seen.append(torch.equal(BAG(IDS), plain))

    user = threading.Thread(target=user_loop)
    user.start()
    try:
        jobs = [
            lambda: ta.integrated_gradients(BAG, IDS, layer=BAG.emb, baseline=3, steps=3),
            lambda: ta.saliency(BAG, IDS, layer=BAG.emb),
        ]
        _run_threads(jobs, rounds=30, threads=3)
    finally:
        stop.set()
        user.join()
    assert seen and all(seen)


def test_a_user_hook_added_during_calls_stays_and_theirs_go():
    model, x = build("conv_bn", dtype=torch.float32)
    calls = []
    jobs = [lambda: ta.cam(model, x, layer="features.4")] * 4
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(job) for job in jobs * 10]
        handle = model.features[4].register_forward_hook(lambda *a: calls.append(1))
        for f in futures:
            f.result()
    assert len(model.features[4]._forward_hooks) == 1  # the user's, and only it
    model(x)
    assert calls
    handle.remove()
    assert not hooks_left(model)


@pytest.mark.filterwarnings("ignore:model is in training mode")
def test_training_mode_calls_from_threads_restore_buffers():
    """Batch norm in training mode writes running statistics: such calls on one model run one
    at a time, each restores the buffers, and the results equal the sequential ones."""
    model, x = build("conv_bn")
    model.train()
    state = snapshot(model)
    inputs = [x * (i + 1) for i in range(THREADS)]
    expected = [ta.cam(model, xi, layer="features.4") for xi in inputs]
    jobs = [lambda xi=xi: ta.cam(model, xi, layer="features.4") for xi in inputs]
    for j, result in _run_threads(jobs, rounds=5):
        torch.testing.assert_close(result, expected[j], rtol=0, atol=0)
    assert_unchanged(model, state)
