"""Renderers: exact assistant weights (property tests), formats, Jinja templates vs transformers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError
from crucible_core.plugins import PluginHost
from crucible_datasets import get_renderer
from crucible_datasets.render import BUILTIN_FORMATS, FormatRenderer, JinjaRenderer

from .conftest import CHATML_JINJA, ByteTokenizer, build_tokenizer

LLAMA3_OFFICIAL = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

content = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<|\x00"),
    max_size=24,
)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(content)})
    turns = draw(st.integers(1, 6))
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        if draw(st.integers(0, 9)) == 0:
            role = "tool" if role == "user" else "assistant"
        messages.append({"role": role, "content": draw(content)})
    return messages


def _runs(tokens: list[int], weights: list[float]) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = 0.0
    for t, w in zip(tokens, weights, strict=True):
        assert w in (0.0, 1.0)
        if w == 1.0:
            if prev == 1.0:
                runs[-1].append(t)
            else:
                runs.append([t])
        prev = w
    return runs


def _expected_text(name: str, messages: list[dict[str, str]], eos: str) -> str:
    if name == "chatml":
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if name == "llama3":
        return "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
            for m in messages
        )
    return "".join(
        f"<|{m['role']}|>\n{m['content']}" + (eos if m["role"] == "assistant" else "") + "\n"
        for m in messages
    )


@settings(max_examples=150, deadline=None)
@given(messages=conversations(), name=st.sampled_from(sorted(BUILTIN_FORMATS)))
def test_builtin_weights_are_one_exactly_on_assistant_tokens(
    tok: ByteTokenizer, messages: list[dict[str, str]], name: str
) -> None:
    renderer = get_renderer(name, tok)
    tokens, weights = renderer.render(messages)
    assert len(tokens) == len(weights)
    assert tok.decode(tokens) == _expected_text(name, messages, "<|endoftext|>")
    fmt = BUILTIN_FORMATS[name]
    expected: list[list[int]] = []
    for m in messages:
        if m["role"] != "assistant":
            continue
        text = m["content"].strip() if fmt.strip_content else m["content"]
        run = tok.encode(text) + tok.encode(fmt.footer)
        if fmt.eos_after_assistant:
            run.append(tok.eos_token_id or 0)
        expected.append(run)
    assert _runs(tokens, weights) == expected
    every = renderer.render(messages, train_on="all")
    assert every.tokens == tokens
    assert set(every.weights) == {1.0}


@settings(max_examples=100, deadline=None)
@given(messages=conversations())
def test_jinja_template_weights_cover_each_assistant_turn(
    tok_factory: Callable[..., ByteTokenizer], messages: list[dict[str, str]]
) -> None:
    tok = tok_factory(chat_template=CHATML_JINJA)
    jinja = get_renderer(None, tok)
    assert isinstance(jinja, JinjaRenderer)
    builtin = get_renderer("chatml", tok)
    tokens, weights = jinja.render(messages)
    assert tokens == builtin.render(messages).tokens
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = _runs(tokens, weights)
    # The template's assistant span is everything its turn adds: content, <|im_end|> and "\n".
    assert [tok.decode(r) for r in runs] == [f"{c}<|im_end|>\n" for c in assistant]
    assert jinja.render_prompt(messages) == builtin.render_prompt(messages)


@settings(max_examples=60, deadline=None)
@given(messages=conversations())
def test_llama3_matches_the_official_template_through_transformers(
    hf_llama: Any, messages: list[dict[str, str]]
) -> None:
    hf, ours = hf_llama
    text = hf.apply_chat_template(messages, tokenize=False)
    builtin = get_renderer("llama3", ours)
    jinja = get_renderer(None, ours)
    assert jinja.name == "chat_template"
    assert ours.decode(builtin.render(messages).tokens) == text
    assert jinja.render(messages) == builtin.render(messages)
    prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert builtin.render_prompt(messages) == hf.encode(prompt, add_special_tokens=False)


@pytest.fixture(scope="module")
def hf_llama() -> tuple[Any, ByteTokenizer]:
    from transformers import PreTrainedTokenizerFast

    raw = build_tokenizer()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA3_OFFICIAL,
    )

    class Wrapped(ByteTokenizer):
        bos_token = "<|begin_of_text|>"

    return hf, Wrapped(raw, chat_template=LLAMA3_OFFICIAL, eos="<|eot_id|>")


def test_generation_prompt_and_text_rows(tok: ByteTokenizer) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.decode(get_renderer("chatml", tok).render_prompt(msgs)).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        tok.decode(get_renderer("plain", tok).render_prompt(msgs))
        == "<|user|>\nhi\n<|assistant|>\n"
    )
    text = get_renderer("plain", tok).render_text("abc")
    assert tok.decode(text.tokens) == "abc<|endoftext|>"
    assert text.weights == [1.0] * 4


def test_template_resolution(
    tok: ByteTokenizer, tok_factory: Callable[..., ByteTokenizer], host: PluginHost
) -> None:
    assert get_renderer(None, tok).name == "plain"
    assert get_renderer("qwen", tok).name == "chatml"
    assert get_renderer("Llama-3", tok).name == "llama3"
    custom = get_renderer(CHATML_JINJA, tok)
    assert custom.name == "custom"
    assert custom.template_hash.startswith("sha256:")
    assert custom.template_hash != get_renderer("chatml", tok).template_hash
    with pytest.raises(ConfigError, match="has no chat_template"):
        get_renderer("chat_template", tok)
    with pytest.raises(ConfigError, match="unknown template 'vicuna'"):
        get_renderer("vicuna", tok)
    with pytest.raises(ConfigError, match="does not compile"):
        get_renderer("{% for %}", tok)
    # A renderer another plugin registers is found by name.
    host.add_plugin(_ExtraRenderers(), name="extra")
    assert get_renderer("shouty", tok).name == "shouty"


class _ShoutyRenderer(FormatRenderer):
    def __init__(self, tokenizer: Any) -> None:
        from crucible_datasets.render import ChatFormat

        super().__init__(tokenizer, ChatFormat("shouty", "", "{role}!\n", "", "\n"))


class _ExtraRenderers:
    from crucible_core.hookspecs import hookimpl

    @hookimpl
    def register_renderers(self, register: Any) -> None:
        register("shouty", _ShoutyRenderer)


def test_template_that_rewrites_history_is_refused(
    tok_factory: Callable[..., ByteTokenizer],
) -> None:
    last_only = (
        "{% for m in messages %}{% if loop.last %}{{ m['role'] + ': ' + m['content'] + '\n' }}"
        "{% else %}{{ m['role'] + '\n' }}{% endif %}{% endfor %}"
    )
    tok = tok_factory(chat_template=last_only)
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(ConfigError, match="does not render conversations turn by turn"):
        get_renderer(None, tok).render(msgs)
    refusing = tok_factory(chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ConfigError, match="roles must alternate"):
        get_renderer(None, refusing).render(msgs)


def test_special_markers_are_single_tokens_when_known(tok: ByteTokenizer) -> None:
    tokens, _ = get_renderer("chatml", tok).render([{"role": "assistant", "content": "x"}])
    assert tokens[0] == tok.tok.token_to_id("<|im_start|>")
    bare = ByteTokenizer(build_tokenizer(specials=()), eos=None)
    tokens, weights = get_renderer("chatml", bare).render([{"role": "assistant", "content": "x"}])
    assert bare.decode(tokens) == "<|im_start|>assistant\nx<|im_end|>\n"
    assert sum(weights) == len("x<|im_end|>")


class _CountingTokenizer(ByteTokenizer):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        self.calls += 1
        return super().encode(text, add_special_tokens=add_special_tokens)


@settings(max_examples=30, deadline=None)
@given(batch=st.lists(conversations(), min_size=1, max_size=12))
def test_batched_rendering_equals_one_by_one(batch: list[list[dict[str, str]]]) -> None:
    counting = _CountingTokenizer()
    together = get_renderer("chatml", counting)
    pieces = [together.pieces(m, add_generation_prompt=False) for m in batch]
    assert together.assemble(pieces) == [
        get_renderer("chatml", ByteTokenizer()).render(m) for m in batch
    ]


def test_recurring_short_texts_are_encoded_once() -> None:
    counting = _CountingTokenizer()
    renderer = get_renderer("chatml", counting)
    convo = [
        {"role": "user", "content": "a long enough question here"},
        {"role": "assistant", "content": "B"},
    ]
    renderer.assemble([renderer.pieces(convo, add_generation_prompt=False)] * 50)
    # Per row: the user part (long, unique in real data); "B<|im_end|>" and "\n" are cached.
    assert counting.calls == 50 + 2


# -- {% generation %} blocks (Hugging Face's assistant mask) -----------------------------

#: The template transformers' own tests use for ``return_assistant_tokens_mask``.
HF_GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] != 'assistant') %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% elif (message['role'] == 'assistant')%}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% generation %}"
    "{{message['content'] + '<|im_end|>'}}"
    "{% endgeneration %}"
    "{{'\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ascii_content = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="<|"),
    max_size=24,
)


@st.composite
def ascii_conversations(draw: st.DrawFn) -> list[dict[str, str]]:
    # transformers maps its character spans to tokens with char_to_token, which is exact
    # only when a character is one token: compare on ASCII (one byte, one token here).
    return [{"role": m["role"], "content": draw(ascii_content)} for m in draw(conversations())]


@pytest.fixture(scope="module")
def hf_generation() -> tuple[Any, ByteTokenizer]:
    from transformers import PreTrainedTokenizerFast

    raw = build_tokenizer()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", chat_template=HF_GENERATION_TEMPLATE
    )
    return hf, ByteTokenizer(raw, chat_template=HF_GENERATION_TEMPLATE, eos="<|im_end|>")


@settings(max_examples=80, deadline=None)
@given(messages=ascii_conversations())
def test_generation_blocks_match_transformers_assistant_mask(
    hf_generation: Any, messages: list[dict[str, str]]
) -> None:
    # Before: "{% generation %}" was an unknown tag and the template did not compile.
    hf, ours = hf_generation
    expected = hf.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    renderer = get_renderer(None, ours)
    rendered = renderer.render(messages)
    assert rendered.tokens == expected["input_ids"]
    assert [int(w) for w in rendered.weights] == expected["assistant_masks"]
    prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert renderer.render_prompt(messages) == hf.encode(prompt, add_special_tokens=False)


@settings(max_examples=60, deadline=None)
@given(messages=conversations())
def test_generation_blocks_weigh_exactly_their_text(
    tok_factory: Callable[..., ByteTokenizer], messages: list[dict[str, str]]
) -> None:
    tok = tok_factory(chat_template=HF_GENERATION_TEMPLATE)
    tokens, weights = get_renderer(None, tok).render(messages)
    assert tokens == get_renderer("chatml", tok).render(messages).tokens
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    # Only what the generation block holds: not the "\n" after it, unlike turn-by-turn.
    assert [tok.decode(r) for r in _runs(tokens, weights)] == [f"{c}<|im_end|>" for c in assistant]
    assert get_renderer(None, tok).render(messages, train_on="all").weights == [1.0] * len(tokens)


def test_generation_blocks_allow_templates_that_rewrite_history(
    tok_factory: Callable[..., ByteTokenizer],
) -> None:
    # Like reasoning models' templates: earlier assistant turns lose their <think> part,
    # so rendering turn by turn cannot work, but the generation blocks say what to train.
    rewriting = (
        "{% for m in messages %}"
        "{% if m['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ (m['content'] if loop.last else m['content'].split('</think>')[-1]) + '<|im_end|>' }}"
        "{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}"
    )
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>t1</think>b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "<think>t2</think>d"},
    ]
    tok = tok_factory(chat_template=rewriting)
    tokens, weights = get_renderer(None, tok).render(msgs)
    assert [tok.decode(r) for r in _runs(tokens, weights)] == [
        "b<|im_end|>",
        "<think>t2</think>d<|im_end|>",
    ]
    without_tags = rewriting.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(ConfigError, match="does not render conversations turn by turn"):
        get_renderer(None, tok_factory(chat_template=without_tags)).render(msgs)


def test_generation_block_that_cannot_be_located_is_refused(
    tok_factory: Callable[..., ByteTokenizer],
) -> None:
    # Inside {% set %} the block's text is captured, not output where it was recorded.
    captured = (
        "{% for m in messages %}{% set body %}{% generation %}{{ m['content'] }}"
        "{% endgeneration %}{% endset %}{{ m['role'] + ': ' + body + '\n' }}{% endfor %}"
    )
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ConfigError, match="generation %\\} blocks cannot be located"):
        get_renderer(None, tok_factory(chat_template=captured)).render(msgs)
