"""The semantic cache: a paraphrase of a cached question, in the same tenant partition, gets its answer.

Entries are ``SemanticEntry`` rows (PostgreSQL in production), so they
survive a restart and every web process sees the same ones. Each process
keeps, per partition, an in-memory vector index of the rows' questions,
brought up to date from the database (rows newer than the last one it
holds) on every lookup; the answer itself is read from the row at hit time,
so a purged, expired or revoked entry is never served even while a stale
vector still sits in some process's index.

A question is embedded only once its partition can compare it with something. Most partitions never
get a second question (the partition holds everything but the question, and each turn of a
conversation has a history of its own), so a partition's first question is kept without its vector,
and a lookup in an empty partition embeds nothing; the second question embeds both. On the embedded
default, at 32 concurrent requests, the embedder's thread alone had taken a quarter of a core, and one
question at a time its embedding added 16–20 ms to the median answer (docs/benchmarks.md).

The index: exact (numpy) search while a partition is small, an hnswlib HNSW
graph beyond ``TOLLGATE_SEMANTIC_EXACT_MAX`` entries; bench/semantic_lookup.py
measured hnswlib, usearch and brute force (docs/benchmarks.md). A candidate
is served only when ``caching.verify`` says the two questions ask the same
thing; the cosine similarity alone proposes, it never decides.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.utils import timezone

from .models import SemanticEntry
from .services import SEMANTIC, CacheDirectives, CachedAnswer, CacheScope, digest, key_is_active
from .verify import same_question

DIMENSIONS = 384
CANDIDATES = 4  # nearest questions verified, best first: the nearest may be a near-miss, a farther one the match


def partition_of(scope: CacheScope, model: str, context: str) -> str:
    """Tenant scope + model + everything in the request but the question: only these may share entries."""
    return digest("\n".join((scope.label, model, context)))


@dataclass
class _Partition:
    ids: list[int] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, DIMENSIONS), dtype=np.float32))
    graph: object | None = None  # an hnswlib Index once the partition outgrows exact search
    last_id: int = 0
    removed: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    building: bool = False

    def add(self, ids: list[int], questions: list[str], vectors: np.ndarray) -> None:
        """Append rows (under ``lock``). Past exact search's size a graph is built on a thread of its own:
        building one of 100k entries takes tens of seconds, and lookups stay exact (slower) meanwhile."""
        self.ids.extend(ids)
        self.questions.extend(questions)
        self.vectors = np.vstack([self.vectors, vectors])
        self.last_id = max(self.last_id, *ids)
        if self.graph is not None:
            _add_to_graph(self.graph, vectors, len(self.ids) - len(ids))
        elif len(self.ids) > settings.TOLLGATE_SEMANTIC_EXACT_MAX and not self.building:
            self.building = True
            threading.Thread(target=self._build_graph, args=(self.vectors,), name="semantic-index-build",
                             daemon=True).start()

    def _build_graph(self, snapshot: np.ndarray) -> None:
        graph = build_graph(snapshot)
        with self.lock:
            if len(self.vectors) > len(snapshot):  # rows added while it was built
                _add_to_graph(graph, self.vectors[len(snapshot):], len(snapshot))
            self.graph, self.building = graph, False

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(position, cosine similarity) of the k nearest questions, nearest first."""
        if not self.ids:
            return []
        if self.graph is None:
            scores = self.vectors @ vector
            k = min(k, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            return sorted(((int(i), float(scores[i])) for i in top), key=lambda pair: -pair[1])
        labels, distances = self.graph.knn_query(vector, k=min(k, len(self.ids)))
        return [(int(label), 1.0 - float(distance)) for label, distance in zip(labels[0], distances[0])]


def build_graph(vectors: np.ndarray):
    """An HNSW graph of ``vectors`` (labels = positions). hnswlib over usearch: in
    bench/semantic_lookup.py it answered in half usearch's time at 10k and 100k entries, with the same
    recall@1 (0.98 at 100k), and built in half the time under load (docs/benchmarks.md)."""
    import hnswlib  # only where a partition grows past exact search

    graph = hnswlib.Index(space="cosine", dim=DIMENSIONS)
    graph.init_index(max_elements=max(1024, 2 * len(vectors)), ef_construction=128, M=16)
    graph.set_ef(64)
    graph.add_items(vectors, np.arange(len(vectors)))
    return graph


def _add_to_graph(graph, vectors: np.ndarray, first_label: int) -> None:
    needed = first_label + len(vectors)
    if needed > graph.get_max_elements():
        graph.resize_index(2 * needed)
    graph.add_items(vectors, np.arange(first_label, needed))


_partitions: OrderedDict[str, _Partition] = OrderedDict()
_partitions_lock = threading.Lock()


def _partition(key: str) -> _Partition:
    with _partitions_lock:
        partition = _partitions.get(key)
        if partition is None:
            partition = _partitions[key] = _Partition()
            while len(_partitions) > settings.TOLLGATE_SEMANTIC_PARTITIONS_IN_MEMORY:
                _partitions.popitem(last=False)  # least recently used; rebuilt from its rows when asked again
        else:
            _partitions.move_to_end(key)
        return partition


def forget_indexes() -> None:
    with _partitions_lock:
        _partitions.clear()


def _refresh(key: str, partition: _Partition) -> None:
    # Rows after the newest one held. A row whose id was taken before, but committed after, a newer
    # one already read is not picked up until the partition is rebuilt: a miss, never a wrong answer.
    rows = list(SemanticEntry.objects.filter(partition=key, id__gt=partition.last_id, expires_at__gt=timezone.now())
                .order_by("id").values_list("id", "question", "vector"))
    if not rows:
        return
    pending = [i for i, row in enumerate(rows) if row[2] is None]
    if pending:  # questions kept without their vector (each was its partition's first): embedded now, once
        computed = embed_questions([rows[i][1] for i in pending])
        for i, vector in zip(pending, computed):
            rows[i] = (rows[i][0], rows[i][1], vector.tobytes())
            SemanticEntry.objects.filter(pk=rows[i][0], vector__isnull=True).update(vector=rows[i][2])
    vectors = np.frombuffer(b"".join(bytes(row[2]) for row in rows), dtype=np.float32).reshape(len(rows), -1)
    partition.add([row[0] for row in rows], [row[1] for row in rows], vectors)


def embed_questions(questions: list[str]) -> np.ndarray:
    """Unit vectors for questions kept without one, here on the lookup's thread: the serving embedder's
    model and arithmetic (``core.minilm``), so they compare with the vectors it gives the questions asked."""
    from core.minilm import get_encoder, token_ids  # torch: only once a partition has a second question

    return get_encoder().sentence_vectors(token_ids(questions)).numpy()


def occupied_here(scope: CacheScope, model: str, context: str) -> bool:
    """True when this process's index of the partition holds questions (no I/O: safe on the event loop).
    False says nothing: another process may have kept some; ``search`` without a vector asks the database."""
    with _partitions_lock:
        partition = _partitions.get(partition_of(scope, model, context))
    return partition is not None and bool(partition.ids)


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the answer (or None), and the nearest candidate's similarity and verdict."""

    answer: CachedAnswer | None
    nearest_similarity: float | None = None
    refusal: str = ""
    # Asked without a vector: the partition holds questions, so the question must be embedded and asked again.
    needs_vector: bool = False


def lookup(scope: CacheScope, model: str, context: str, question: str, vector, directives: CacheDirectives,
           ) -> CachedAnswer | None:
    return search(scope, model, context, question, vector, directives).answer


def search(scope: CacheScope, model: str, context: str, question: str, vector, directives: CacheDirectives,
           ) -> Lookup:
    """The partition's answer to ``question``, if one is the same question.

    With ``vector=None`` nothing is embedded: an empty partition answers a miss at once (most partitions
    never get a second question: each turn of a conversation has a history of its own), and one holding
    questions answers ``needs_vector``.
    """
    key = partition_of(scope, model, context)
    partition = _partition(key)
    if vector is None:
        with partition.lock:
            if partition.ids:
                return Lookup(None, needs_vector=True)
        held = SemanticEntry.objects.filter(partition=key, expires_at__gt=timezone.now()).exists()
        return Lookup(None, needs_vector=held)
    query = np.asarray(vector, dtype=np.float32)
    with partition.lock:
        _refresh(key, partition)
        candidates = [(partition.ids[i], partition.questions[i], similarity)
                      for i, similarity in partition.nearest(query, CANDIDATES)
                      if partition.ids[i] not in partition.removed]
    refusal = ""
    for entry_id, cached_question, similarity in candidates:
        verdict = same_question(question, cached_question, similarity)
        if not verdict.same:
            refusal = refusal or verdict.reason
            continue
        answer = _served(entry_id, directives, similarity)
        if answer is not None:
            return Lookup(answer, candidates[0][2])
        with partition.lock:
            partition.removed.add(entry_id)  # purged, expired or its key revoked: never again from this index
    return Lookup(None, candidates[0][2] if candidates else None, refusal)


def _served(entry_id: int, directives: CacheDirectives, similarity: float) -> CachedAnswer | None:
    now = timezone.now()
    rows = SemanticEntry.objects.filter(pk=entry_id, expires_at__gt=now)
    if directives.max_age_s is not None:
        rows = rows.filter(created_at__gte=now - timedelta(seconds=directives.max_age_s))
    row = rows.values("body", "created_at", "api_key_id").first()
    if row is None or not key_is_active(row["api_key_id"]):
        return None
    return CachedAnswer(body=row["body"], layer=SEMANTIC, stored_at=row["created_at"].timestamp(),
                        similarity=similarity)


def store(scope: CacheScope, model: str, context: str, question: str, vector, body: str, ttl_s: int) -> None:
    """Keep ``body`` as the answer to ``question``; ``vector`` may be None (embedded when first needed)."""
    if ttl_s <= 0:
        return
    now = timezone.now()
    SemanticEntry.objects.create(
        organization_id=scope.org_id, feature=scope.feature, partition=partition_of(scope, model, context),
        model=model, api_key_id=scope.api_key_id, question=question,
        vector=None if vector is None else np.asarray(vector, dtype=np.float32).tobytes(), body=body,
        created_at=now, expires_at=now + timedelta(seconds=ttl_s))


def delete_expired() -> int:
    """Remove rows past their TTL (they are never served; this only frees the space). A periodic task."""
    deleted, _ = SemanticEntry.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
