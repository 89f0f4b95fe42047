"""The gateway's prompt counter remembers each message's tokens, and its counts equal the template's.

Every request's prompt is counted before it runs (the context-window check, the budget hold, token
optimization), and a conversation sends its system prompt and whole history again on every turn.
``ChatTokenizer.count_chat`` counts a message once; these tests hold it to ``len(encode_chat(...))``, the
template itself, on the shapes a prompt takes.
"""

import pytest

from serving.engines.base import ChatMessage
from serving.engines.cpu import tokenizer as tokenizer_module
from serving.engines.cpu.tokenizer import ChatTokenizer

PROMPTS = [
    (),
    (ChatMessage("user", "hi"),),
    (ChatMessage("system", "You are terse."), ChatMessage("user", "Explain continuous batching.")),
    (ChatMessage("user", ""), ChatMessage("assistant", "   "), ChatMessage("user", "¿Qué tal? Ünïcödé 🚀 \t tabs\n")),
    (ChatMessage("user", "word " * 3000),),
    (ChatMessage("system", "hi"), ChatMessage("user", "hi")),  # the same text in two roles counts apart
]


@pytest.fixture
def tok():
    return ChatTokenizer()


@pytest.mark.parametrize("messages", PROMPTS)
def test_a_count_is_the_templates_length_first_time_and_again(tok, messages):
    expected = len(tok.encode_chat(messages))
    assert tok.count_chat(messages) == expected
    assert tok.count_chat(messages) == expected  # remembered this time


def test_a_conversation_counts_each_message_once_and_every_turn_exactly(tok):
    history = [ChatMessage("system", "You answer questions about budgets.")]
    for turn in range(4):
        history.append(ChatMessage("user", f"Question {turn}: how much did the feature spend?"))
        assert tok.count_chat(tuple(history)) == len(tok.encode_chat(tuple(history)))
        history.append(ChatMessage("assistant", f"Answer {turn}: less than its budget."))
    assert len(tok._counts) == 1 + 4 + 3  # the system prompt, four questions, three answers counted so far


def test_the_remembered_counts_stay_bounded(tok, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "COUNTED_MESSAGES", 4)
    for i in range(10):
        messages = (ChatMessage("user", f"message number {i}"),)
        assert tok.count_chat(messages) == len(tok.encode_chat(messages))
    assert len(tok._counts) == 4
    early = (ChatMessage("user", "message number 0"),)  # forgotten, counted again: still right
    assert tok.count_chat(early) == len(tok.encode_chat(early))
