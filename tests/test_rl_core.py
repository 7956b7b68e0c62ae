"""RL's pure parts: the IR's RLConfig, group advantages, sampled Datums, seeds, rewards.

The recipe end to end runs on crucible-local (plugins/crucible-local/tests/test_rl.py)
and through the Tinker server (plugins/crucible-tinker/tests/test_rl_tinker.py).
"""

from __future__ import annotations

import itertools
import math
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError, ValidationError
from crucible_core.hookspecs import hookimpl
from crucible_core.ir import TrainingJob, decode
from crucible_core.ir.training import RLConfig
from crucible_core.plugins import PluginHost
from crucible_core.train.rewards import call_reward, resolve_reward
from crucible_core.train.rl import rl_job
from crucible_core.train.rollouts import (
    ADVANTAGE_STD_FLOOR,
    group_advantages,
    sample_datum,
    sample_seed,
)

BASE = """
workflow = "rl"
[model_spec]
name = "tiny-llama"
[dataset_spec]
uri = "x.jsonl"
"""


def _job(extra: str) -> TrainingJob:
    return decode(BASE + extra, TrainingJob, format="toml")


# -- the IR --------------------------------------------------------------------------------


def test_an_rl_job_reads_its_settings_and_defaults() -> None:
    job = _job('[rl]\nreward = "gsm8k"\ngroup_size = 6\nloss = "ppo"\nmax_off_policy_steps = 2\n')
    assert job.rl_config.group_size == 6
    assert job.rl_config.loss == "ppo"
    assert job.rl_config.refresh_every == 1
    assert _job("").rl_config == RLConfig()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[rl]\nrefresh_every = 3\nmax_off_policy_steps = 2\n", "refresh_every"),
        ("[rl]\nrefresh_every = 2\n", "max_off_policy_steps = 0"),
        ("[rl]\ngroup_size = 1\n", "group_size"),
        ("[rl]\nclip_epsilon = 1.5\n", "clip_epsilon"),
        ('[rl]\nloss = "dpo"\n', "loss"),
        ('[learning_config.loss]\nname = "cross_entropy"\nparams = {a = 1}\n', "rl.loss"),
    ],
)
def test_bad_rl_settings_are_refused_naming_the_field(extra: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        _job(extra)
    assert words in str(info.value)


def test_rl_settings_need_workflow_rl() -> None:
    sft = BASE.replace('workflow = "rl"', 'workflow = "sft"') + "[rl]\n"
    with pytest.raises(ValidationError, match='only used with workflow = "rl"'):
        decode(sft, TrainingJob, format="toml")


@given(
    st.integers(0, 5),
    st.integers(1, 5),
    st.integers(0, 500),
)
def test_a_step_samples_from_past_weights_within_the_staleness_bound(
    most: int, refresh: int, step: int
) -> None:
    if refresh > max(1, most):
        with pytest.raises(ValueError, match="refresh_every"):
            RLConfig(max_off_policy_steps=most, refresh_every=refresh)
        return
    cfg = RLConfig(max_off_policy_steps=most, refresh_every=refresh)
    version = cfg.version_for(step)
    assert 0 <= version <= step
    assert step - version <= most
    assert version % refresh == 0
    if most == 0:
        assert version == step  # strictly on-policy
    elif step >= 1:
        assert version < step  # overlapped: the step's samples are drawn while the last trains


# -- advantages, Datums, seeds ---------------------------------------------------------------

rewards = st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=16)


@given(rewards)
def test_group_advantages_are_centred_and_keep_the_order(values: list[float]) -> None:
    adv = group_advantages(values)
    assert sum(adv) == pytest.approx(0.0, abs=1e-6 * max(1.0, max(map(abs, values))))
    for (a, b), (x, y) in zip(itertools.pairwise(values), itertools.pairwise(adv), strict=True):
        if a < b:
            assert x < y or math.isclose(x, y, abs_tol=1e-9)


@given(rewards)
def test_scaled_advantages_have_unit_spread_or_are_zero(values: list[float]) -> None:
    adv = group_advantages(values, scale=True)
    spread = math.sqrt(sum(a * a for a in adv) / len(adv))
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if std < ADVANTAGE_STD_FLOOR:  # (rewards 1.2e-7 apart are still told apart)
        assert adv == [0.0] * len(values)
    else:
        assert spread == pytest.approx(1.0, rel=1e-6)


def test_near_equal_rewards_are_still_told_apart_and_equal_ones_are_not() -> None:
    assert group_advantages([0.0, 1.192092896e-07], scale=True) == [-1.0, 1.0]
    assert group_advantages([0.25, 0.25, 0.25], scale=True) == [0.0, 0.0, 0.0]


@given(
    st.lists(st.integers(0, 300), min_size=1, max_size=20),
    st.lists(st.integers(0, 300), min_size=1, max_size=20),
    st.floats(-5, 5, allow_nan=False),
)
def test_a_sampled_datum_trains_on_the_completion_only(
    prompt: list[int], completion: list[int], advantage: float
) -> None:
    lps = [-0.5 - i for i in range(len(completion))]
    d = sample_datum(prompt, completion, lps, advantage)
    inputs = d.loss_fn_inputs
    assert d.model_input == (prompt + completion)[:-1]
    assert inputs.target_tokens == (prompt + completion)[1:]
    weights = inputs.weights or []
    # The weighted targets are exactly the completion, with the sampler's logprobs.
    picked = [t for t, w in zip(inputs.target_tokens, weights, strict=True) if w == 1.0]
    assert picked == completion
    assert [lp for lp, w in zip(inputs.logprobs or [], weights, strict=True) if w] == lps
    assert set(inputs.advantages or []) <= {0.0, advantage}
    assert sum(weights) == len(completion)


def test_a_gspo_datum_marks_the_completion_for_the_sequence_ratio() -> None:
    plain = sample_datum([1, 2, 3], [4, 5], [-0.5, -1.5], 2.0)
    assert plain.loss_fn_inputs.sequence_ratio_mask is None
    d = sample_datum([1, 2, 3], [4, 5], [-0.5, -1.5], 2.0, ratio_mask=True)
    assert d.loss_fn_inputs.sequence_ratio_mask == [0.0, 0.0, 1.0, 1.0]
    assert d.loss_fn_inputs.weights == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("loss", "params"),
    [
        ("importance_sampling", {}),
        ("ppo", {"clip_range": 0.3}),
        ("cispo", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}),
        ("gspo", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}),
    ],
)
def test_rl_loss_clips_at_one_plus_minus_clip_epsilon(loss: str, params: dict[str, float]) -> None:
    job = rl_job(_job(f'[rl]\nloss = "{loss}"\nclip_epsilon = 0.3\n'))
    assert job.learning_config.loss.name == loss
    assert job.learning_config.loss.params == pytest.approx(params)


def test_a_sampled_datum_needs_tokens_and_one_logprob_each() -> None:
    with pytest.raises(ValueError, match="completion token"):
        sample_datum([1, 2], [], [], 1.0)
    with pytest.raises(ValueError, match="one each"):
        sample_datum([1, 2], [3, 4], [-1.0], 1.0)


def test_sample_seeds_are_a_function_of_seed_step_and_prompt() -> None:
    assert sample_seed(0, 3, 0, 7) == sample_seed(0, 3, 0, 7)
    seeds = {sample_seed(s, step, 0, p) for s in (0, 1) for step in range(20) for p in range(10)}
    assert len(seeds) == 400
    assert all(0 <= s < 2**31 for s in seeds)


# -- rewards ---------------------------------------------------------------------------------


def _host_with(reward: object) -> PluginHost:
    def register_rewards(register: object) -> None:
        register("shout", reward, summary="1 if the completion is upper case")  # type: ignore[operator]

    host = PluginHost(autoload=False)
    host.add_plugin(
        types.SimpleNamespace(register_rewards=hookimpl(register_rewards)), name="shouting"
    )
    return host


def test_a_registered_reward_is_found_by_name_and_a_typo_gets_a_suggestion() -> None:
    host = _host_with(lambda completion, reference: float(completion.isupper()))
    fn = resolve_reward("shout", host)
    assert fn("HI", "") == 1.0
    assert fn("hi", "") == 0.0
    with pytest.raises(ConfigError) as info:
        resolve_reward("shot", host)
    assert "registered: shout" in info.value.message
    assert info.value.hint is not None
    assert "did you mean 'shout'?" in info.value.hint


def test_a_users_function_is_imported_by_module_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_rewards_mod.py").write_text(
        "def length(completion, reference):\n    return float(len(completion))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        fn = resolve_reward("my_rewards_mod:length", PluginHost(autoload=False))
        assert fn("abc", "") == 3.0
        with pytest.raises(ConfigError, match="cannot import 'my_rewards_mod:nothing'"):
            resolve_reward("my_rewards_mod:nothing", PluginHost(autoload=False))
    finally:
        sys.modules.pop("my_rewards_mod", None)


@pytest.mark.parametrize("value", ["1.0", None, float("nan"), float("inf"), True])
def test_a_reward_returning_a_non_number_names_the_reward_and_the_sample(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        call_reward(lambda c, r: value, "mine", "text", "ref", "step 3, prompt 1, completion 2")
    err = info.value
    assert "reward 'mine' returned" in err.message
    assert "step 3, prompt 1, completion 2" in err.message
    assert err.details == {"reward": "mine", "sample": "step 3, prompt 1, completion 2"}


def test_a_reward_that_raises_names_the_reward_the_error_and_the_sample() -> None:
    def broken(completion: str, reference: str) -> float:
        raise KeyError("answer")

    with pytest.raises(ConfigError) as info:
        call_reward(broken, "broken", "text", "ref", "step 1, prompt 0, completion 0")
    assert "reward 'broken' raised KeyError" in info.value.message
    assert "step 1, prompt 0, completion 0" in info.value.message
    assert call_reward(lambda c, r: 1, "int", "t", "r", "s") == 1.0


def test_crucible_train_reports_an_rl_runs_greedy_mean_reward(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from crucible_core.cli.train_cmd import _report  # pyright: ignore[reportPrivateUsage]
    from crucible_core.train.steps import TrainingOutcome

    outcome = TrainingOutcome(
        job_id="r",
        run_dir="/runs/r",
        initial_loss=0.0,
        final_loss=-0.01,
        steps=3,
        total_steps=3,
        tokens=10,
        cost=0.0,
        elapsed_s=1.0,
        evaluation={"split": "validation", "examples": 8, "eval_reward": 0.375},
    )
    _report(outcome, None, argparse.Namespace(json=False))
    out = capsys.readouterr().out
    assert "eval       validation: mean reward 0.375 (greedy)" in out
    assert "loss nan" not in out
