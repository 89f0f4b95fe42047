"""The semantic cache's second opinion: does a close question really ask the same thing?

Sentence embeddings place near-opposites close together ("enable" and
"disable" email notifications score 0.81 with all-MiniLM-L6-v2) and sibling
questions closer still ("daily" and "weekly" reports), while real
paraphrases may score lower. So a cosine threshold only proposes a
candidate; this module decides, on the words in which the two questions
differ.

The two questions must be about the same concepts. Words that only frame a
question ("how can I", "what's the way to") are dropped; each other word
becomes a concept: interchangeable words share one through a small table
(turn on = enable = activate; update = change = edit), any other word is its
Snowball stem (so "uploads" and "uploaded" agree). A concept on one side
only makes them different questions, however close their embeddings:
a negation (not, without, never), a polarity word (disable for enable,
unlock for lock), a number ("60 days" for "30 days") or a sibling topic
("SMS" for "email", "Mac" for "Windows"); a one-word difference is exactly
what a near-miss looks like. The table never joins opposites (a test checks
it against the polarity list). What agrees must still clear
``MIN_SIMILARITY`` in embedding space, a floor far below a plain
threshold's, because the words already agree.

Why a hand-written word table rather than a thesaurus library: no offline
thesaurus is in the dependency set (WordNet needs a data download), and the
table only ever turns a miss into a hit for words it names; an unknown word
is a miss, so precision does not depend on the table being complete.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import snowballstemmer

# The embedding similarity a verified candidate must still have (the lexical checks carry the precision).
MIN_SIMILARITY = 0.70

_CONTRACTIONS = [(re.compile(p), r) for p, r in (
    (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"), (r"\bwon't\b", "will not"), (r"n't\b", " not"),
    (r"'s\b", " is"), (r"'re\b", " are"), (r"'ve\b", " have"), (r"'ll\b", " will"), (r"'d\b", " would"),
    (r"'m\b", " am"),
)]
_WORD = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")

# Words that only frame a question or carry no topic of their own.
FRAMING = frozenset("""
a an the i me my mine we our us you your it its this that these those there here is are was were be been being am
do does did done can could would should will shall may might must how what whats which who whom where when why
way ways steps step process procedure possible able please want wanted need needed like tell know help anyone
any some to of for in on at by with from into onto about as and or so if then than just also really
get got go going make let one new someone something thing things exactly actually
""".split())

# Polarity words, as opposite pairs (a test checks that no pair shares a concept). On one side only, the
# questions ask opposite things; every differing concept refuses a match, these name the reason.
NEGATIONS = frozenset("not no never without none nothing nobody neither nor stop prevent".split())
_OPPOSITE_PAIRS = """
enable disable turn-on turn-off add remove increase decrease raise lower start end open close
upload download import export login logout log-in log-out subscribe unsubscribe follow unfollow lock unlock show hide allow block
accept decline accept reject before after maximum minimum max min more less most least create delete
install uninstall activate deactivate encrypt decrypt buy sell send receive upgrade downgrade first last old new
public private include exclude connect disconnect mute unmute pause resume archive unarchive join leave hire fire
credit debit inbound outbound push pull read write pin unpin share unshare block unblock merge split
visible invisible daily weekly monthly yearly start stop grant revoke approve deny
"""
_OPPOSITES = _OPPOSITE_PAIRS.split()
POLARITY = frozenset(_OPPOSITES)

# Interchangeable words -> one concept. Never two polarity words with opposite meaning in one concept.
_CONCEPTS = {
    "enable": "enable", "activate": "enable", "turn-on": "enable", "switch-on": "enable", "set-up": "setup",
    "setup": "setup", "configure": "setup",
    "disable": "disable", "deactivate": "disable", "turn-off": "disable", "switch-off": "disable",
    "change": "change", "update": "change", "edit": "change", "modify": "change",
    "create": "create", "generate": "create", "make": "create",
    "delete": "delete", "remove": "delete", "erase": "delete",
    "restore": "restore", "recover": "restore", "undelete": "restore",
    "find": "find", "see": "find", "view": "find", "locate": "find",
    "invite": "add", "add": "add",
    "member": "user", "user": "user", "someone": "user", "person": "user", "colleague": "colleague",
    "coworker": "colleague",
    "cost": "price", "price": "price", "pricing": "price",
    "largest": "maximum", "biggest": "maximum", "maximum": "maximum", "max": "maximum", "limit": "limit",
    "email": "email", "e-mail": "email", "inbox": "email",
    "notification": "notification", "alert": "notification",
    "app": "app", "application": "app",
    "log-out": "logout", "logout": "logout", "sign-out": "logout",
    "log-in": "login", "login": "login", "sign-in": "login",
    "doc": "document", "document": "document",
    "begin": "start", "start": "start",
    "submit": "create", "open": "open",
    "permission": "allow", "let": "allow", "allow": "allow",
    "call": "request", "request": "request",
    "sso": "single-sign-on", "2fa": "two-factor-authentication",
    "refunded": "refund", "refund": "refund",
    "retain": "keep", "keep": "keep", "kept": "keep",
    "accepted": "accept", "accept": "accept", "take": "accept",
    "subscription": "subscription", "plan": "plan",
}
# Multi-word expressions first, so "turn on" is one word before it is looked up.
_PHRASES = [(re.compile(r"\b" + p + r"\b"), r) for p, r in (
    (r"turn(?:ed|ing)? on", "turn-on"), (r"switch(?:ed|ing)? on", "switch-on"), (r"turn(?:ed|ing)? off", "turn-off"),
    (r"switch(?:ed|ing)? off", "switch-off"), (r"set(?:ting)? up", "set-up"), (r"sign(?:ed|ing)? out", "sign-out"),
    (r"sign(?:ed|ing)? in", "sign-in"), (r"log(?:ged|ging)? out", "log-out"), (r"log(?:ged|ging)? in", "log-in"),
    (r"single sign-on", "sso"), (r"two-factor authentication", "2fa"), (r"by email", "email"),
    (r"per minute", "per-minute"), (r"per day", "per-day"), (r"every week", "weekly"), (r"each week", "weekly"),
    (r"every day", "daily"), (r"credit card", "card"), (r"payment card", "card"),
)]


# A snowball stemmer keeps its state in the object while it stems, so one shared by the gateway's threads
# mixes words up (IndexError, or a wrong stem): each thread gets its own.
_stemmers = threading.local()


def _stem(word: str) -> str:
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = snowballstemmer.stemmer("english")
    return stemmer.stemWord(word)


def words(text: str) -> list[str]:
    """Lower-cased words with contractions expanded and multi-word expressions joined ("turn-on")."""
    text = text.lower().replace("\u2019", "'")
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)
    return _WORD.findall(text)


def concepts(text: str) -> frozenset[str]:
    """What a question is about: its words less the framing ones, each as its concept (or its stem)."""
    out = set()
    for word in words(text):
        if word in FRAMING:
            continue
        concept = _CONCEPTS.get(word)
        if concept is None:
            stem = _stem(word)
            concept = _CONCEPTS.get(stem, stem)
        out.add(concept)
    return frozenset(out)


@dataclass(frozen=True)
class Verdict:
    same: bool
    reason: str


_POLARITY_STEMS = frozenset(_stem(w) for w in POLARITY) | POLARITY


def _why_different(word: str, other: frozenset[str]) -> str:
    if word in NEGATIONS:
        return "negation"
    if word in _POLARITY_STEMS or any(word == p + o or o == p + word for o in other for p in ("un", "dis", "de")):
        return "polarity"
    if any(c.isdigit() for c in word):
        return "number"
    return "topic"


def same_question(query: str, cached: str, similarity: float) -> Verdict:
    """Whether ``query`` may be answered with the answer to ``cached`` (their embedding ``similarity`` given).

    The same concepts on both sides, and a similarity above the floor; the
    reason of a refusal names the first differing word's kind (negation,
    polarity, number, topic), for the benchmark's report and the span.
    """
    if similarity < MIN_SIMILARITY:
        return Verdict(False, "similarity")
    a, b = concepts(query), concepts(cached)
    if a == b:
        return Verdict(True, "same")
    kinds = sorted({_why_different(w, b if w in a else a) for w in a ^ b})
    return Verdict(False, ",".join(kinds))
