"""The Hugging Face integration in a real ``transformers.Trainer`` on tiny random models (CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from dropkit import find_sites, schedules

transformers = pytest.importorskip("transformers")
from dropkit.integrations.transformers import (  # noqa: E402
    DropoutScheduleCallback,
    RDropTrainer,
)

STEPS, ACCUMULATE, BATCH, SEQ, VOCAB = 6, 2, 2, 8, 40
SCHEDULE = schedules.early(0.3, cutoff=4, shape="linear")  # 0.3, 0.2, 0.1, 0, 0, 0


class Examples(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def _classification_data(n: int) -> Examples:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return Examples(
        [
            {"input_ids": i, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": y}
            for i, y in zip(ids, labels)
        ]
    )


def _lm_data(n: int) -> Examples:
    """Next-token data whose rows have very different numbers of scored tokens."""
    g = torch.Generator().manual_seed(2)
    rows = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[2 + (5 * i) % (SEQ - 2) :] = -100  # 2 to 7 labelled positions
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": labels,
            }
        )
    return Examples(rows)


def _bert(dropout: float = 0.1) -> "transformers.PreTrainedModel":
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ,
        num_labels=3,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return transformers.BertForSequenceClassification(config)


def _llama(attention_dropout: float = 0.0) -> "transformers.PreTrainedModel":
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        attention_dropout=attention_dropout,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config)


def _args(tmp_path: Path, **overrides: object) -> "transformers.TrainingArguments":
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE,
        max_steps=STEPS,
        logging_steps=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def _record_rates_at_forward(trainer: "transformers.Trainer") -> list[tuple[int, bool, set]]:
    """(global step, training mode, dropout rates) as every forward starts."""
    model, seen = trainer.model, []
    sites = [s for s in find_sites(model) if s.kind == "dropout" and s.controllable]

    def record(module: torch.nn.Module, args: object) -> None:
        seen.append((trainer.state.global_step, module.training, {s.p for s in sites}))

    model.register_forward_pre_hook(record)
    return seen


def _dropout_config(model: "transformers.PreTrainedModel") -> dict[str, object]:
    return {k: v for k, v in model.config.to_dict().items() if "dropout" in k}


def _expected(steps: int = STEPS) -> list[tuple[int, bool, set]]:
    return [(k, True, {SCHEDULE(k, steps)}) for k in range(steps) for _ in range(ACCUMULATE)]


@pytest.mark.parametrize(
    ("build", "data", "site_names"),
    [
        (_bert, _classification_data, "bert.embeddings.dropout"),  # nn.Dropout modules
        (_llama, _lm_data, "model.layers.0.self_attn:attention_dropout"),  # attention floats
    ],
)
def test_schedule_reaches_the_forward_at_every_step(tmp_path, build, data, site_names) -> None:
    model = build()
    names = {s.name for s in find_sites(model) if s.kind == "dropout"}
    assert site_names in names
    built_config = _dropout_config(model)
    callback = DropoutScheduleCallback(dropout=SCHEDULE)
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path), train_dataset=data(16), callbacks=[callback]
    )
    seen = _record_rates_at_forward(trainer)
    trainer.train()
    # model.train() ran before every forward, and the rates it saw are the schedule's
    assert seen == _expected()
    assert _dropout_config(model) == built_config  # rates live in modules, not the config
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == list(range(1, STEPS + 1))
    for entry in logged:  # like learning_rate, a log describes the step that just ran
        assert entry["dropout/p"] == SCHEDULE(entry["step"] - 1, STEPS)


def test_resume_from_checkpoint_continues_the_schedule(tmp_path: Path) -> None:
    args = _args(tmp_path, save_strategy="steps", save_steps=3)
    first = transformers.Trainer(
        model=_bert(),
        args=args,
        train_dataset=_classification_data(24),
        callbacks=[DropoutScheduleCallback(dropout=SCHEDULE)],
    )
    first.train()
    resumed = transformers.Trainer(
        model=_bert(),
        args=args,
        train_dataset=_classification_data(24),
        callbacks=[DropoutScheduleCallback(dropout=SCHEDULE)],
    )
    seen = _record_rates_at_forward(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert seen == _expected()[3 * ACCUMULATE :]


@pytest.mark.filterwarnings("ignore:R-Drop. the model has no active dropout")
def test_rdrop_trainer_logs_ce_and_kl_under_the_schedule(tmp_path: Path) -> None:
    alpha = 0.5
    trainer = RDropTrainer(
        model=_bert(),
        args=_args(tmp_path),
        train_dataset=_classification_data(24),
        callbacks=[DropoutScheduleCallback(dropout=SCHEDULE)],
        rdrop_alpha=alpha,
    )
    seen = _record_rates_at_forward(trainer)
    trainer.train()
    assert seen == _expected()  # one doubled forward per micro-batch
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == STEPS
    for entry in logged:
        rate = SCHEDULE(entry["step"] - 1, STEPS)
        assert entry["dropout/p"] == rate
        # per micro-batch the loss is ce1 + ce2 + alpha * kl, so the logged means obey it too
        assert entry["loss"] == pytest.approx(2 * entry["rdrop/ce"] + alpha * entry["rdrop/kl"])
        if rate > 0:
            assert entry["rdrop/kl"] > 0
        else:  # no dropout: both passes are the same function, so they agree exactly
            assert entry["rdrop/kl"] == pytest.approx(0.0, abs=1e-7)


def _one_step(
    tmp_path: Path, trainer_class: type, batch: int, accumulate: int, lr: float, **kwargs: object
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = _llama()  # attention_dropout 0: both R-Drop passes agree, so its loss is 2 x CE
    args = _args(
        tmp_path / f"{trainer_class.__name__}{batch}",
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulate,
        max_steps=1,
        learning_rate=lr,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
    )
    trainer_class(model=model, args=args, train_dataset=_lm_data(4), **kwargs).train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.filterwarnings("ignore:R-Drop. the model has no active dropout")
def test_rdrop_trainer_normalises_over_tokens_of_the_accumulated_batch(tmp_path: Path) -> None:
    counts = [int((row["labels"][1:] != -100).sum()) for row in _lm_data(4)]
    assert counts[0] + counts[1] != counts[2] + counts[3]  # micro-batch means would weigh wrong
    lr = 0.5
    accumulated = _one_step(tmp_path, RDropTrainer, 2, 2, lr)
    whole_batch = _one_step(tmp_path, RDropTrainer, 4, 1, lr)
    plain_trainer = _one_step(tmp_path, transformers.Trainer, 2, 2, 2 * lr)  # 2 x CE = 2 x lr
    initial = {name: p.detach() for name, p in _seeded_llama().named_parameters()}
    for name, value in accumulated.items():
        assert not torch.equal(value, initial[name]), name  # the step did train it
        torch.testing.assert_close(value, whole_batch[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(value, plain_trainer[name], rtol=1e-4, atol=1e-6)


class _TrainerWithoutShiftFlag(RDropTrainer):
    """RDropTrainer on a Trainer without the private ``_loss_shifts_labels`` (transformers < 5.10
    or a later one that drops it)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        del self._loss_shifts_labels


@pytest.mark.filterwarnings("ignore:R-Drop. the model has no active dropout")
def test_rdrop_trainer_without_the_private_shift_flag_scores_the_same_loss(tmp_path) -> None:
    from dropkit.integrations.transformers import _shifts_labels

    assert _shifts_labels(_llama()) and not _shifts_labels(_bert())
    t5 = transformers.T5Config(
        vocab_size=VOCAB, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2
    )  # its loss_type maps to the causal loss, but an encoder-decoder scores unshifted targets
    assert not _shifts_labels(transformers.T5ForConditionalGeneration(t5))
    # one accumulation step: without the flag the Trainer cannot count num_items_in_batch either
    # (it falls back to the micro-batch mean), which is the same normalisation here
    lr = 0.5
    with_flag = _one_step(tmp_path, RDropTrainer, 4, 1, lr)
    without = _one_step(tmp_path, _TrainerWithoutShiftFlag, 4, 1, lr)
    plain_trainer = _one_step(tmp_path, transformers.Trainer, 4, 1, 2 * lr)
    initial = {name: p.detach() for name, p in _seeded_llama().named_parameters()}
    for name, value in without.items():
        assert not torch.equal(value, initial[name]), name
        torch.testing.assert_close(value, with_flag[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(value, plain_trainer[name], rtol=1e-4, atol=1e-6)


def _seeded_llama() -> "transformers.PreTrainedModel":
    torch.manual_seed(0)
    return _llama()


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf")])
def test_rdrop_trainer_rejects_an_alpha_that_is_not_finite_and_non_negative(
    tmp_path: Path, alpha: float
) -> None:
    with pytest.raises(ValueError, match=r"rdrop_alpha=.* must be a finite number >= 0"):
        RDropTrainer(model=_bert(), args=_args(tmp_path), rdrop_alpha=alpha)


def test_callback_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="compile_levels"):
        DropoutScheduleCallback(dropout=0.1, levels=4)


def test_integrations_package_imports_no_framework() -> None:
    code = (
        "import sys, dropkit, dropkit.integrations; "
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _fused_run(tmp_path: Path, fused: bool, tie: bool) -> tuple[dict, list[dict]]:
    torch.manual_seed(0)
    model = _llama(attention_dropout=0.2)
    if tie:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    args = _args(
        tmp_path / f"fused{fused}{tie}",
        max_steps=2,
        optim="sgd",
        lr_scheduler_type="constant",
        learning_rate=0.5,
        weight_decay=0.0,
        max_grad_norm=0.0,
    )
    trainer = RDropTrainer(
        model=model,
        args=args,
        train_dataset=_lm_data(8),
        rdrop_alpha=0.7,
        rdrop_fused_linear=fused,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {name: p.detach().clone() for name, p in model.named_parameters()}, logs


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_fused_linear_rdrop_matches_the_unfused_loss_and_update(tmp_path: Path, tie: bool) -> None:
    fused_params, fused_logs = _fused_run(tmp_path, fused=True, tie=tie)
    params, logs = _fused_run(tmp_path, fused=False, tie=tie)
    assert [e["loss"] for e in fused_logs] == pytest.approx([e["loss"] for e in logs], rel=1e-5)
    assert [e["rdrop/kl"] for e in fused_logs] == pytest.approx(
        [e["rdrop/kl"] for e in logs],
        rel=1e-4,  # a small KL: float32 round-off is relative
    )
    assert all(e["rdrop/kl"] > 0 for e in logs)  # dropout was on: the passes differed
    initial = {name: p.detach() for name, p in _seeded_llama().named_parameters()}
    for name, value in params.items():
        if not tie:
            assert not torch.equal(value, initial[name]), name  # every parameter trained
        torch.testing.assert_close(fused_params[name], value, rtol=1e-4, atol=1e-6)


def test_fused_linear_refuses_logit_soft_capping_and_names_the_fallback(tmp_path: Path) -> None:
    config = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=SEQ,
        final_logit_softcapping=5.0,
        attn_implementation="eager",
    )
    model = transformers.Gemma2ForCausalLM(config)
    trainer = RDropTrainer(
        model=model, args=_args(tmp_path), train_dataset=_lm_data(8), rdrop_fused_linear=True
    )
    with pytest.raises(ValueError, match=r"soft-capping.*rdrop_fused_linear=False"):
        trainer.train()


def test_fused_linear_refuses_a_model_without_a_linear_output_layer(tmp_path: Path) -> None:
    trainer = RDropTrainer(
        model=_bert(),
        args=_args(tmp_path),
        train_dataset=_classification_data(8),
        rdrop_fused_linear=True,
    )
    with pytest.raises(TypeError, match=r"plain nn\.Linear.*rdrop_fused_linear=False"):
        trainer.train()


class Preempted(Exception):
    pass


class CrashAt(transformers.TrainerCallback):
    """Kills training like a preempted job once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            raise Preempted


def _trial(tmp_path: Path, budget: float = 1.0):
    from dropkit.experiments import Trial

    return Trial(setting="s", variant="v", seed=0, dropout=SCHEDULE, drop_path=None,
                 rdrop_alpha=0.0, double_batch=False, params={}, budget=budget,
                 dir=tmp_path / "trial")  # fmt: skip


def _trial_run(tmp_path: Path, extra: list, model_seed: int = 0) -> "transformers.Trainer":
    from dropkit.integrations.transformers import TrialCallback

    callback = TrialCallback(_trial(tmp_path))
    torch.manual_seed(model_seed)
    args = _args(tmp_path, output_dir=callback.output_dir, save_strategy="steps", save_steps=3,
                 eval_strategy="steps", eval_steps=3)  # fmt: skip
    trainer = transformers.Trainer(
        model=_bert(), args=args, train_dataset=_classification_data(24),
        eval_dataset=_classification_data(6), callbacks=[callback, *extra],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=callback.resume_from)
    return trainer


def test_trial_callback_resumes_a_killed_trial_to_the_uninterrupted_numbers(tmp_path: Path):
    from dropkit.experiments.engine.trial import read_log

    whole = _trial_run(tmp_path / "a", [])
    with pytest.raises(Preempted):
        _trial_run(tmp_path / "b", [CrashAt(4)])  # after checkpoint-3
    resumed = _trial_run(tmp_path / "b", [], model_seed=123)  # a new process, other weights
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
    log = read_log(tmp_path / "a" / "trial")
    assert [row["step"] for row in log if "train_loss" in row] == list(range(1, STEPS + 1))
    assert [row["step"] for row in log if "val_loss" in row] == [3, 6]
    resumed_log = read_log(tmp_path / "b" / "trial")  # steps 1-4, then 4-6 again from step 3
    assert [row["step"] for row in resumed_log] == [row["step"] for row in log]
    assert resumed_log[-1] == pytest.approx(log[-1])


def test_the_budget_stops_training_with_the_schedule_laid_over_the_whole_run(tmp_path: Path):
    from dropkit.integrations.transformers import TrialCallback

    callback = TrialCallback(_trial(tmp_path, budget=0.5))
    trainer = transformers.Trainer(
        model=_bert(), args=_args(tmp_path), train_dataset=_classification_data(16),
        callbacks=[callback],
    )  # fmt: skip
    seen = _record_rates_at_forward(trainer)
    trainer.train()
    assert trainer.state.global_step == 3 and callback.scheduler.total_steps == STEPS
    assert seen == _expected()[: 3 * ACCUMULATE]
    with pytest.raises(ValueError, match="budget"):
        DropoutScheduleCallback(dropout=SCHEDULE, budget=1.5)
