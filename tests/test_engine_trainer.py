"""The per-scan trainer: converges, stops on time/plateau, cancels within a step, reproducible."""

from __future__ import annotations

import time

import pytest
import torch

from napari_medgen.engine import TrainConfig, Trainer
from napari_medgen.errors import Cancelled, FamilyError, ParamError
from napari_medgen.family import RunContext

TRUE_W = torch.tensor([[1.5, -2.0, 0.5, 3.0]])


def regression(seed: int = 0, **ctx_kw):
    """A linear model, its context, and a step that draws a random batch with ctx.rng."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    events = []
    ctx = RunContext(device="cpu", seed=seed, progress=lambda d, t, m: events.append((d, t, m)), **ctx_kw)

    def step_fn(model, step):
        x = torch.as_tensor(ctx.rng.normal(size=(32, 4)), dtype=torch.float32)
        x = x + 0.01 * torch.randn_like(x)  # torch's RNG too, seeded by fit()
        y = x @ TRUE_W.T + 0.7
        return torch.nn.functional.mse_loss(model(x), y)

    return model, ctx, step_fn, events


def test_tiny_regression_converges_and_reports():
    model, ctx, step_fn, events = regression()
    history = Trainer(model, None, step_fn, TrainConfig(max_steps=300, lr=0.05, log_every=10, warmup_steps=10), ctx).fit()
    assert history.stop_reason == "max_steps" and history.steps == 300
    assert history.losses[-1] < history.losses[0] / 10
    assert history.best_loss == min(history.losses)
    assert not model.training  # left ready for inference
    # metrics every log_every steps, as the dock plots them
    metrics = [e for e in ctx.events if "loss" in e]
    assert [m["step"] for m in metrics] == list(range(10, 301, 10)) == history.loss_steps
    assert [m["loss"] for m in metrics] == history.losses
    # progress: step counts out of max_steps, with loss and ETA in words
    assert events and events[-1][:2] == (300, 300)
    assert all(t == 300 for _, t, _ in events)
    assert "training: loss" in events[-1][2] and "ETA" in events[-1][2]


def test_time_budget_stops_cleanly():
    model, ctx, step_fn, _ = regression()

    def slow_step(model, step):
        time.sleep(0.01)
        return step_fn(model, step)

    start = time.perf_counter()
    history = Trainer(model, None, slow_step, TrainConfig(max_steps=100_000, time_budget=0.2), ctx).fit()
    assert history.stop_reason == "time_budget"
    assert 0 < history.steps < 100_000
    assert time.perf_counter() - start < 2.0
    assert history.losses  # the partial interval is kept


def test_the_run_context_budget_is_honoured_too():
    model, ctx, step_fn, _ = regression(time_budget=0.15)

    def slow_step(model, step):
        time.sleep(0.01)
        return step_fn(model, step)

    history = Trainer(model, None, slow_step, TrainConfig(max_steps=100_000, time_budget=60), ctx).fit()
    assert history.stop_reason == "time_budget" and history.elapsed < 1.0


def test_cancel_raises_within_a_step():
    model, ctx, step_fn, _ = regression()
    calls = []

    def step(model, i):
        calls.append(i)
        if i == 3:
            ctx.cancel()
        return step_fn(model, i)

    with pytest.raises(Cancelled):
        Trainer(model, None, step, TrainConfig(max_steps=1000), ctx).fit()
    assert calls == [0, 1, 2, 3]
    assert not model.training


def test_same_seed_gives_identical_losses():
    def run(seed):
        model, ctx, step_fn, _ = regression(seed=seed)
        return Trainer(model, None, step_fn, TrainConfig(max_steps=40, log_every=5), ctx).fit().losses

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_early_stop_on_a_plateau():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    ctx = RunContext(device="cpu", seed=0)
    config = TrainConfig(max_steps=1000, log_every=5, early_stop_patience=3)
    # a loss that cannot improve
    history = Trainer(model, None, lambda m, s: m.weight.sum() * 0 + 1.0, config, ctx).fit()
    assert history.stop_reason == "early_stop"
    assert history.steps == 20  # the first evaluation sets the bar, three more fail to beat it


def test_diverging_loss_is_a_clear_error():
    model = torch.nn.Linear(2, 1)
    ctx = RunContext(device="cpu", seed=0)
    with pytest.raises(FamilyError, match="diverged"):
        Trainer(model, None, lambda m, s: m.weight.sum() * float("nan"), TrainConfig(max_steps=20, log_every=5), ctx).fit()


def test_given_optimizer_and_constant_schedule():
    model, ctx, step_fn, _ = regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = Trainer(model, opt, step_fn, TrainConfig(max_steps=50, schedule="constant", grad_clip=None), ctx)
    history = trainer.fit()
    assert history.steps == 50
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_bad_config_is_refused():
    with pytest.raises(ParamError):
        TrainConfig(max_steps=0)
    with pytest.raises(ParamError):
        TrainConfig(max_steps=10, schedule="linear")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_with_mixed_precision_converges():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    ctx = RunContext(device="cuda", seed=0)

    def step_fn(model, step):
        x = torch.randn(64, 4, device="cuda")
        return torch.nn.functional.mse_loss(model(x).float(), x @ TRUE_W.T.cuda() + 0.7)

    history = Trainer(model, None, step_fn, TrainConfig(max_steps=300, lr=0.05), ctx).fit()
    assert next(model.parameters()).device.type == "cuda"
    assert history.losses[-1] < history.losses[0] / 10


def test_training_limits_follow_the_users_choices():
    """auto: the preset's steps and time; a step limit alone: exactly those steps, no clock; a budget: both."""
    import math

    from napari_medgen.engine import training_limits

    assert training_limits("auto", 100, 60.0, None) == (100, 60.0)
    assert training_limits(40, 100, 60.0, None) == (40, math.inf)
    assert training_limits(40, 100, 60.0, 5.0) == (40, 5.0)
    assert training_limits("auto", 100, 60.0, 5.0) == (100, 5.0)
    assert TrainConfig(max_steps=1, time_budget=math.inf).time_budget is None
