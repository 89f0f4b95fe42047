"""The semantic cache's decision and index, without HTTP: the verification never lets an opposite, a negation,
another number or a sibling topic through however close the embeddings are, its table of interchangeable
words never joins opposites, and a partition past exact search's size still finds the nearest entry."""

import time

import numpy as np
import pytest

from caching import verify
from caching.semantic import _Partition


@pytest.mark.parametrize("query, cached", [
    ("How do I disable email notifications?", "How do I enable email notifications?"),
    ("How do I turn off dark mode?", "How do I turn on dark mode?"),
    ("How do I unlock a cell?", "How do I lock a cell?"),
    ("Why can't I log in?", "Why can I log in?"),
    ("Can I get a refund after 60 days?", "Can I get a refund after 30 days?"),
    ("How do I enable SMS notifications?", "How do I enable email notifications?"),
])
def test_a_near_miss_is_refused_even_at_a_similarity_of_one(query, cached):
    assert not verify.same_question(query, cached, 1.0).same


@pytest.mark.parametrize("query, cached", [
    ("How can I turn on email notifications?", "How do I enable email notifications?"),
    ("What's the way to update my billing address?", "How do I change my billing address?"),
    ("How do I switch on dark mode", "How do I turn on dark mode?"),
])
def test_a_paraphrase_is_accepted_above_the_floor_only(query, cached):
    assert verify.same_question(query, cached, 0.8).same
    assert not verify.same_question(query, cached, verify.MIN_SIMILARITY - 0.01).same


def test_the_table_of_interchangeable_words_never_joins_opposites():
    pairs = verify._OPPOSITE_PAIRS.split()
    for left, right in zip(pairs[::2], pairs[1::2]):
        assert verify.concepts(left) != verify.concepts(right), (left, right)


def test_a_partition_past_exact_search_finds_the_nearest_entry_through_its_graph(settings):
    settings.TOLLGATE_SEMANTIC_EXACT_MAX = 64
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((500, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    partition = _Partition()
    with partition.lock:
        partition.add(list(range(1, 501)), [f"q{i}" for i in range(500)], vectors)
    assert partition.nearest(vectors[123], 1)[0][0] == 123  # exact search while the graph is built
    deadline = time.monotonic() + 30
    while partition.graph is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert partition.graph is not None
    position, similarity = partition.nearest(vectors[321], 4)[0]
    assert position == 321 and similarity == pytest.approx(1.0, abs=1e-4)
