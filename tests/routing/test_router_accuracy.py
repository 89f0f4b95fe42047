"""The tier classifier, trained on the prompt set's train split, classifies held-out templates above the bar,
and the prompt set is what the issue asks for and regenerates byte for byte from its generator."""

import json

import numpy as np
import pytest

from routing import classifier, dataset, embedding, features

HELD_OUT_ACCURACY_BAR = 0.85


@pytest.fixture(scope="module")
def records():
    return dataset.load_prompt_set()


def test_trained_on_the_train_split_the_classifier_beats_the_bar_on_held_out_templates(records):
    train, held_out = classifier.split(records)
    assert not {r["template"] for r in train} & {r["template"] for r in held_out}  # unseen phrasing
    model = classifier.train(train)
    report = classifier.evaluate(model, held_out)
    assert report["overall"] >= HELD_OUT_ACCURACY_BAR, report
    for tier, (right, total) in report["per_tier"].items():
        assert right / total >= 0.8, (tier, report)  # no tier is sacrificed for the others


def test_the_classifier_kept_in_the_repository_beats_the_bar_too(records):
    _, held_out = classifier.split(records)
    assert classifier.evaluate(classifier.load(), held_out)["overall"] >= HELD_OUT_ACCURACY_BAR


def test_cached_prompt_embeddings_are_the_models_own(records):
    sample = records[::157]
    texts = [features.last_user_text(features.record_messages(r)) for r in sample]
    live = embedding.embed_texts(texts, classifier.DEFAULT_EMBED_TOKENS)
    cached = classifier.record_rows(sample, classifier.DEFAULT_EMBED_TOKENS)[:, :live.shape[1]]
    assert np.min(np.sum(live * cached, axis=1)) > 0.999  # cosine of unit vectors (float16 in the cache)


def test_the_prompt_set_regenerates_exactly_and_covers_what_the_issue_asks(records):
    assert [json.loads(json.dumps(r)) for r in dataset.generate()] == records
    assert len(records) >= 1000
    kinds = {r["kind"] for r in records}
    assert len(kinds) >= 12
    assert {r["tier"] for r in records} == {1, 2, 3}
    assert {"multi_turn_chat", "long_document_analysis", "rag_long_context", "high_risk", "json_task"} <= kinds
    assert sum(1 for r in records if len(r["messages"]) >= 5) >= 50  # multi-turn chats
    longest = max(features.count_tokens([m["content"] for m in r["messages"]]) for r in records)
    assert longest > 800  # long documents
    assert len({r["template"] for r in records if r["split"] == "heldout"}) == 2 * len(kinds)
