"""The in-process CPU engine: continuous batching, usage counting, streaming, cancellation.

Plain pytest, no Django:

    .venv/bin/python -m pytest tests/serving/test_cpu_engine.py -q -p no:django
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import torch

from serving.engines.base import (
    ChatMessage,
    EngineError,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
)
from serving.engines.cpu.engine import CpuEngine
from serving.engines.cpu.model import MODEL_CONFIGS, LlamaModel
from serving.engines.cpu.tokenizer import SEP_ID, ChatTokenizer

MINI = "tollgate-mini"
WORDS = (
    "the budget of each tenant is checked before the gateway forwards a request to "
    "the model and the tokens are counted by the engine itself"
).split()


@pytest.fixture(scope="module")
def engine():
    eng = CpuEngine(models=(MINI,))
    eng.load(MINI)
    yield eng
    eng.shutdown()


def req(rid: str, text: str, max_tokens: int = 16, model: str = MINI, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(
        request_id=rid,
        model=model,
        messages=(ChatMessage("system", "You are terse."), ChatMessage("user", text)),
        sampling=SamplingParams(max_tokens=max_tokens, **sampling),
    )


def prompt_text(seed: int, n_words: int) -> str:
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n_words))


async def collect(eng: CpuEngine, request: GenerationRequest):
    stream = eng.stream(request)
    deltas = [d async for d in stream]
    return stream.result, deltas


def run(coro):
    return asyncio.run(coro)


def steps_with(eng: CpuEngine, rid: str):
    return [s for s in eng.step_log if rid in s.request_ids]


# --------------------------------------------------------------- batching


def test_greedy_output_is_identical_alone_and_batched_with_seven_others(engine):
    # Different prompt lengths (padding, masks) and max_tokens (sequences leave the
    # batch at different steps, so survivors move between cache slots).
    requests = [req(f"solo-{i}", prompt_text(i, 3 + 9 * i), max_tokens=12 + 5 * i) for i in range(8)]

    alone = [run(collect(engine, r))[0].text for r in requests]

    async def together():
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    before = len(engine.step_log)
    batched = [res.text for res, _ in run(together())]

    assert batched == alone
    assert len(set(alone)) == 8  # the outputs really depend on the prompt
    new_steps = list(engine.step_log)[before:]
    assert max(len(s.request_ids) for s in new_steps if s.kind == "decode") == 8


def test_kv_cached_greedy_decode_matches_a_cache_free_forward_pass(engine):
    tok = ChatTokenizer()
    model = LlamaModel(MODEL_CONFIGS[MINI], tok.allowed_ids())
    request = req("ref", prompt_text(42, 20), max_tokens=10)
    ids = tok.encode_chat(request.messages)
    with torch.inference_mode():
        for _ in range(10):
            logits = model.reference_logits(ids)
            ids.append(model.allowed_ids_list[int(logits.argmax())])
    expected = tok.decode(ids[len(ids) - 10 :])

    # Batched with two other requests so the cached path runs at batch size > 1.
    async def main():
        return await asyncio.gather(
            collect(engine, request),
            collect(engine, req("ref-other-1", prompt_text(1, 5), max_tokens=10)),
            collect(engine, req("ref-other-2", prompt_text(2, 40), max_tokens=10)),
        )

    (result, _), *_ = run(main())
    assert result.text == expected


def test_request_submitted_while_others_decode_joins_the_running_batch(engine):
    async def main():
        early = [engine.stream(req(f"early-{i}", prompt_text(10 + i, 8), max_tokens=80)) for i in range(3)]
        iters = [s.__aiter__() for s in early]
        for it in iters:  # each early request is decoding
            for _ in range(3):
                await it.__anext__()
        late = engine.stream(req("late", prompt_text(99, 8), max_tokens=10))
        late_deltas = [d async for d in late]
        early_running_after_late = [s.result is None for s in early]
        for it in iters:
            async for _ in it:
                pass
        return early, late, late_deltas, early_running_after_late

    early, late, late_deltas, early_running_after_late = run(main())
    assert late.result.completion_tokens == 10
    assert all(early_running_after_late)  # the late one finished while the early ones still ran
    late_steps = steps_with(engine, "late")
    assert late_steps[0].kind == "prefill"
    # The early requests had decoded before the late one was admitted ...
    first_late = late_steps[0].index
    assert any(s.kind == "decode" and "early-0" in s.request_ids and s.index < first_late for s in engine.step_log)
    # ... and the late one then decoded in the same steps as all of them.
    shared = [s for s in late_steps if s.kind == "decode" and {"early-0", "early-1", "early-2"} <= set(s.request_ids)]
    assert len(shared) == 9  # every decode step of the late request (first token came from prefill)


# ------------------------------------------------------------------ usage


def test_usage_counts_are_exact_and_max_tokens_gives_length(engine):
    request = req("usage", prompt_text(5, 30), max_tokens=23)
    before = engine.stats()
    result, deltas = run(collect(engine, request))
    after = engine.stats()

    assert result.prompt_tokens == engine.count_prompt_tokens(MINI, request.messages)
    assert result.completion_tokens == 23
    assert result.finish_reason == "length"
    assert sum(d.token_count for d in deltas) == result.completion_tokens
    # One token per step the request took part in (its prefill, then one per decode step).
    assert len(steps_with(engine, "usage")) == result.completion_tokens
    assert "".join(d.text for d in deltas) == result.text
    assert result.time_to_first_token_s is not None and result.time_to_first_token_s > 0
    assert result.engine_seconds > 0
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 23
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == result.prompt_tokens
    assert after["models"][MINI]["running"] == 0 and after["models"][MINI]["waiting"] == 0


def test_stop_string_ends_generation_and_is_not_in_the_text(engine):
    base = req("nostop", prompt_text(7, 12), max_tokens=40)
    full, _ = run(collect(engine, base))
    words = full.text.split(" ")
    # A stop string spanning two tokens, a space and a partial word, starting mid-text.
    cut = len(" ".join(words[:6]))
    stop = full.text[cut : cut + len(words[6]) + 3]
    assert full.text.find(stop) == cut

    stopped_req = req("stop", prompt_text(7, 12), max_tokens=40, stop=("never-there", stop))
    result, deltas = run(collect(engine, stopped_req))

    assert result.finish_reason == "stop"
    assert result.text == full.text[:cut]
    assert stop not in result.text
    assert "".join(d.text for d in deltas) == result.text
    assert result.completion_tokens < 40
    assert sum(d.token_count for d in deltas) == result.completion_tokens
    assert len(steps_with(engine, "stop")) == result.completion_tokens


def test_special_and_unused_tokens_are_never_generated(engine):
    # Near-uniform sampling over the vocabulary: ~3% of draws would hit ids 1..998
    # if they were not excluded.
    result, _ = run(collect(engine, req("hot", "hello", max_tokens=300, temperature=50.0, seed=3)))
    assert result.completion_tokens == 300
    assert "[unused" not in result.text and "[UNK]" not in result.text
    model = LlamaModel(MODEL_CONFIGS[MINI], ChatTokenizer().allowed_ids())
    generable = set(model.allowed_ids_list)
    assert SEP_ID in generable
    assert not generable & (set(range(999)) - {SEP_ID})


# ------------------------------------------------------------ cancellation


def test_cancel_mid_stream_stops_generation_and_engine_keeps_serving(engine):
    async def main():
        stream = engine.stream(req("cancel-me", prompt_text(3, 10), max_tokens=1000))
        received = 0
        async for delta in stream:
            received += delta.token_count
            if received >= 5:
                await stream.cancel()
        await asyncio.sleep(0.05)
        after = await collect(engine, req("after-cancel", prompt_text(4, 10), max_tokens=8))
        return stream, received, after

    stream, received, (after, _) = run(main())
    result = stream.result
    assert result.finish_reason == "cancelled"
    assert 5 <= result.completion_tokens < 1000
    assert result.completion_tokens >= received
    # Exactly the tokens the engine produced before it dropped the sequence.
    assert len(steps_with(engine, "cancel-me")) == result.completion_tokens
    last = steps_with(engine, "cancel-me")[-1].index
    assert all("cancel-me" not in s.request_ids for s in engine.step_log if s.index > last)
    assert after.finish_reason == "length" and after.completion_tokens == 8
    assert engine.stats()["models"][MINI]["running"] == 0


def test_closing_the_iterator_or_cancelling_the_consumer_task_cancels_generation(engine):
    async def close_early():
        stream = engine.stream(req("closed", prompt_text(8, 10), max_tokens=1000))
        it = stream.__aiter__()
        for _ in range(3):
            await it.__anext__()
        await it.aclose()
        return stream

    async def cancel_task():
        stream = engine.stream(req("task", prompt_text(9, 10), max_tokens=1000))
        got = asyncio.Event()

        async def consume():
            async for _ in stream:
                got.set()

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream

    for stream, rid in ((run(close_early()), "closed"), (run(cancel_task()), "task")):
        assert stream.result is not None
        assert stream.result.finish_reason == "cancelled"
        assert 1 <= stream.result.completion_tokens < 1000
        assert len(steps_with(engine, rid)) == stream.result.completion_tokens
    assert engine.stats()["models"][MINI]["running"] == 0


def test_cancelling_a_queued_request_answers_without_waiting_for_a_free_slot():
    eng = CpuEngine(models=(MINI,), max_num_seqs=1)
    try:

        async def main():
            busy = eng.stream(req("busy", "hi", max_tokens=2000))
            busy_it = busy.__aiter__()
            await busy_it.__anext__()
            queued = eng.stream(req("queued", "hi", max_tokens=5))
            queued_it = queued.__aiter__()
            waiter = asyncio.ensure_future(queued_it.__anext__())
            await asyncio.sleep(0.05)
            assert eng.stats()["models"][MINI]["waiting"] == 1
            t0 = time.perf_counter()
            await queued.cancel()
            cancel_seconds = time.perf_counter() - t0
            busy_still_running = busy.result is None
            with pytest.raises(StopAsyncIteration):
                await waiter
            await busy.cancel()
            return queued, busy_still_running, cancel_seconds

        queued, busy_still_running, cancel_seconds = run(main())
        assert busy_still_running and cancel_seconds < 0.5
        assert queued.result.finish_reason == "cancelled" and queued.result.completion_tokens == 0
        assert steps_with(eng, "queued") == []
    finally:
        eng.shutdown()


def test_cancel_before_iteration_does_no_work(engine):
    async def main():
        stream = engine.stream(req("never-run", "hi", max_tokens=5))
        await stream.cancel()
        return stream, [d async for d in stream]

    stream, deltas = run(main())
    assert deltas == []
    assert stream.result.finish_reason == "cancelled" and stream.result.completion_tokens == 0
    assert steps_with(engine, "never-run") == []


# -------------------------------------------------------------- accounting


def test_engine_seconds_of_concurrent_requests_sum_to_busy_seconds():
    eng = CpuEngine(models=(MINI,))
    try:

        async def main():
            reqs = [
                req(f"acct-{i}", prompt_text(20 + i, 5 + 15 * i), max_tokens=5 + 7 * i, temperature=0.8, seed=i)
                for i in range(6)
            ]

            async def delayed(i, r):
                await asyncio.sleep(0.01 * i)  # arrive while others run: mixed prefill/decode steps
                return await collect(eng, r)

            return await asyncio.gather(*(delayed(i, r) for i, r in enumerate(reqs)))

        results = [res for res, _ in run(main())]
        total = sum(r.engine_seconds for r in results)
        assert eng.busy_seconds > 0
        assert total == pytest.approx(eng.busy_seconds, rel=1e-9, abs=1e-12)
        assert all(0 < r.engine_seconds < eng.busy_seconds for r in results)
        assert sum(s.seconds for s in eng.step_log) == pytest.approx(eng.busy_seconds, rel=1e-9)
        assert any(s.kind == "decode" and len(s.request_ids) >= 2 for s in eng.step_log)
    finally:
        eng.shutdown()


# ------------------------------------------------------------------ limits


def test_prompt_longer_than_the_context_window_raises_prompt_too_long(engine):
    window = engine.context_window(MINI)
    assert window == 2048
    # "a" is one token; the template adds [CLS] user : ... [SEP] assistant : (6 tokens).
    fits = (ChatMessage("user", " ".join(["a"] * (window - 7))),)
    too_long = (ChatMessage("user", " ".join(["a"] * (window - 6))),)
    assert engine.count_prompt_tokens(MINI, fits) == window - 1
    assert engine.count_prompt_tokens(MINI, too_long) == window

    with pytest.raises(PromptTooLong) as info:
        engine.stream(GenerationRequest("long", MINI, too_long, SamplingParams(max_tokens=5)))
    assert info.value.prompt_tokens == window and info.value.limit == window - 1

    # The longest prompt that fits still runs, and stops when the window is full.
    result, _ = run(collect(engine, GenerationRequest("fits", MINI, fits, SamplingParams(max_tokens=5, temperature=0))))
    assert result.prompt_tokens == window - 1
    assert result.completion_tokens == 1 and result.finish_reason == "length"


def test_unknown_model_is_an_engine_error(engine):
    with pytest.raises(EngineError):
        engine.stream(req("x", "hi", model="gpt-4"))


# ---------------------------------------------------------------- sampling


def test_same_seed_gives_same_text_and_different_seeds_differ(engine):
    def sample(rid, seed, **kw):
        return run(collect(engine, req(rid, "tell me a story", max_tokens=20, temperature=1.0, seed=seed, **kw)))[0].text

    a, b, c = sample("s1", 1234), sample("s2", 1234), sample("s3", 1235)
    assert a == b
    assert a != c
    assert sample("p1", 9, top_p=0.5) == sample("p2", 9, top_p=0.5)

    # A seeded request's text does not depend on what it is batched with.
    async def batched():
        others = [collect(engine, req(f"n{i}", prompt_text(i, 9), max_tokens=20, temperature=1.0)) for i in range(5)]
        mine = collect(engine, req("s4", "tell me a story", max_tokens=20, temperature=1.0, seed=1234))
        return (await asyncio.gather(mine, *others))[0][0].text

    assert run(batched()) == a


# ---------------------------------------------------------------- tokenizer


def test_streamed_text_is_the_tokenizer_decode_of_the_tokens():
    tok = ChatTokenizer()
    rnd = random.Random(0)
    ids = tok.allowed_ids()
    for _ in range(200):
        seq = [rnd.choice(ids) for _ in range(rnd.randint(1, 30))]
        seq = [t for t in seq if t != SEP_ID]
        dec = tok.decoder()
        pieces = [dec.push(t) for t in seq]
        for n in range(1, len(seq) + 1):  # each delta is what the full decode adds
            assert "".join(pieces[:n]) == tok.decode(seq[:n])
    # "##" continuation pieces glue onto the previous word.
    dec = tok.decoder()
    assert "".join(dec.push(t) for t in tok.encode_text("unbelievable tokenization!")) == "unbelievable tokenization!"


def test_chat_template_separates_turns_and_ends_with_the_assistant_cue():
    tok = ChatTokenizer()
    ids = tok.encode_chat((ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))
    assert tok.decode(ids) == "system : be brief. user : hi assistant :"
    assert ids[0] == 101 and ids.count(SEP_ID) == 2
    assert ids[-2:] == tok.encode_text("assistant:")


def test_shutdown_stops_the_thread_and_refuses_new_work():
    eng = CpuEngine(models=(MINI,))
    run(collect(eng, req("one", "hi", max_tokens=2)))
    thread = eng._thread
    assert thread.daemon and thread.is_alive()
    eng.shutdown()
    assert not thread.is_alive()
    with pytest.raises(EngineError):
        eng.stream(req("two", "hi", max_tokens=2))
