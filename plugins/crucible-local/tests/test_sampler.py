"""The sampler honours SamplingParams, and the inference side streams what it completes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from crucible_local.backend import LocalBackend
from crucible_local.sampler import LocalSampler

from crucible_core.errors import ConfigError, exit_code_for
from crucible_core.ir.backend import (
    AdamParams,
    Datum,
    LossFnInputs,
    Message,
    Prompt,
    SamplingParams,
)
from crucible_core.ir.training import Loss, ModelSpec


@pytest.fixture
def base(backend: LocalBackend) -> Iterator[LocalSampler]:
    sampler = backend.load_sampler(ModelSpec(name="tiny-llama"), None)
    yield sampler
    sampler.close()


def _sample(sampler: LocalSampler, text: str = "Once upon", **params: Any) -> list[Any]:
    return sampler.sample(Prompt(text=text), SamplingParams(**params)).result()


def test_greedy_is_deterministic_and_top_k_1_is_greedy(base: LocalSampler) -> None:
    [a] = _sample(base, max_tokens=12, temperature=0.0)
    [b] = _sample(base, max_tokens=12, temperature=0.0)
    assert a.tokens == b.tokens
    assert len(a.tokens) == 12
    assert a.finish_reason == "length"
    [k1] = _sample(base, max_tokens=12, temperature=1.5, top_k=1, seed=7)
    assert k1.tokens == a.tokens
    [p0] = _sample(base, max_tokens=12, temperature=1.0, top_p=1e-6, seed=7)
    assert p0.tokens == a.tokens


def test_seed_reproduces_and_n_draws_distinct_samples(base: LocalSampler) -> None:
    first = _sample(base, max_tokens=10, temperature=1.0, seed=3, n=4)
    again = _sample(base, max_tokens=10, temperature=1.0, seed=3, n=4)
    other = _sample(base, max_tokens=10, temperature=1.0, seed=4, n=4)
    assert len(first) == 4
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.tokens for c in first] != [c.tokens for c in other]
    assert len({tuple(c.tokens) for c in first}) > 1
    for c in first:
        assert c.usage.completion_tokens == len(c.tokens) == len(c.logprobs or []) == 10
        assert c.usage.prompt_tokens == len("Once upon")


def test_top_k_limits_the_choice(base: LocalSampler) -> None:
    import torch

    prompt = base.tokenizer.encode("Once upon")
    allowed = set(torch.topk(base.logits(prompt)[-1], 3).indices.tolist())
    firsts = {c.tokens[0] for c in _sample(base, max_tokens=1, top_k=3, seed=0, n=32)}
    assert firsts <= allowed
    assert len(firsts) > 1


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_logprobs_are_the_models_own(backend: LocalBackend, model: str) -> None:
    import torch

    # Generation runs with a KV cache; these logprobs come from one full forward pass.
    base = backend.load_sampler(ModelSpec(name=model), None)
    [c] = _sample(base, max_tokens=12, temperature=0.7, seed=1)
    prompt = base.tokenizer.encode("Once upon")
    logits = base.logits(prompt + c.tokens[:-1])
    lps = torch.log_softmax(logits, -1)[len(prompt) - 1 :]
    expected = lps[torch.arange(len(c.tokens)), torch.tensor(c.tokens)]
    assert c.logprobs == pytest.approx(expected.tolist(), abs=1e-5)


def test_stop_strings_cut_the_text(base: LocalSampler) -> None:
    [full] = _sample(base, max_tokens=24, temperature=0.0)
    stop = full.text[5:7]
    cut = full.text.index(stop)
    [stopped] = _sample(base, max_tokens=24, temperature=0.0, stop=["zzzz-never", stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.tokens == full.tokens[: len(stopped.tokens)]
    assert base.tokenizer.decode(stopped.tokens).endswith(stop)


def test_training_to_stop_ends_with_eos(
    backend: LocalBackend, make_job: Callable[..., Any]
) -> None:
    session = backend.create_session(make_job())
    tok = session.tokenizer
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        add_generation_prompt=False,
    )
    datum = Datum(model_input=ids[:-1], loss_fn_inputs=LossFnInputs(target_tokens=ids[1:]))
    for _ in range(40):
        session.forward_backward([datum], Loss())
        session.optim_step(AdamParams(learning_rate=2e-2))
    sampler = session.save_weights_for_sampler("chat").result()
    prompt = Prompt(messages=[Message(role="user", content="hi")])
    [c] = sampler.sample(prompt, SamplingParams(max_tokens=20, temperature=0.0)).result()
    assert c.text == "hello!"
    assert c.finish_reason == "stop"
    assert c.tokens[-1] == tok.eos_token_id


def test_stream_adds_up_to_the_completion(backend: LocalBackend) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.0)
    prompt = Prompt(text="Once upon")
    completion = backend.complete(prompt, params)
    chunks = list(backend.stream(prompt, params))
    assert "".join(c.text for c in chunks) == completion.text
    assert [t for c in chunks for t in c.tokens] == completion.tokens
    assert chunks[-1].finish_reason == completion.finish_reason
    assert all(c.finish_reason is None for c in chunks[:-1])
    # With a stop string, no chunk ever shows it.
    stop = completion.text[4:6]
    stopped = list(
        backend.stream(prompt, SamplingParams(max_tokens=16, temperature=0, stop=[stop]))
    )
    text = "".join(c.text for c in stopped)
    assert text == completion.text[: completion.text.index(stop)]
    assert stopped[-1].finish_reason == "stop"


def test_prompts_as_tokens_and_messages(base: LocalSampler) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    ids = base.tokenizer.encode("Once upon")
    [by_text] = base.sample(Prompt(text="Once upon"), params).result()
    [by_tokens] = base.sample(Prompt(tokens=ids), params).result()
    assert by_text.tokens == by_tokens.tokens
    [chat] = base.sample(Prompt(messages=[Message(role="user", content="x")]), params).result()
    # <|bos|> <|user|> x <|eos|> <|assistant|>
    assert chat.usage.prompt_tokens == 5


def test_context_overflow_is_a_config_error(base: LocalSampler) -> None:
    with pytest.raises(ConfigError, match=r"params\.max_tokens = 600.*\(512 tokens\)") as info:
        base.sample(Prompt(text="Once upon"), SamplingParams(max_tokens=600))
    assert "set max_tokens <= 503" in str(info.value)
    assert exit_code_for(info.value) == 2
    with pytest.raises(ConfigError, match="token id 9999"):
        base.sample(Prompt(tokens=[1, 9999]), SamplingParams(max_tokens=1))
    small = LocalBackend(model="tiny-llama")
    with pytest.raises(ConfigError, match="a stream carries one completion"):
        list(small.stream(Prompt(text="a"), SamplingParams(n=2)))
    with pytest.raises(ConfigError, match="complete returns one completion"):
        small.complete(Prompt(text="a"), SamplingParams(n=2))
