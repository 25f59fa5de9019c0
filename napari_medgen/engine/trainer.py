"""One trainer for per-scan (self-supervised) training: progress, cancel, time budget, early stop, seed.

A family supplies ``step_fn(model, step) -> loss`` (it draws its own batch, e.g. random
patches of the user's scan with ``ctx.rng``); the trainer runs the optimisation loop the
same way for every family, so every learned family reports, cancels and stops alike.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from ..errors import DeviceError, FamilyError, ParamError
from ..family import AUTO
from .device import autocast, autocast_dtype, is_oom, resolve_device

__all__ = ["TrainConfig", "TrainHistory", "Trainer", "warmup_cosine", "format_eta"]

log = logging.getLogger(__name__)

#: how often (seconds) the trainer reports progress at most; it reports at least once a second
PROGRESS_INTERVAL = 0.25


@dataclass
class TrainConfig:
    """How long and how to train. ``early_stop_patience`` counts logged evaluations (every ``log_every`` steps)."""

    max_steps: int
    time_budget: float | None = None
    lr: float = 1e-3
    log_every: int = 10
    early_stop_patience: int | None = None
    min_delta: float = 0.0
    grad_clip: float | None = 1.0
    amp: bool = True
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self) -> None:
        if int(self.max_steps) < 1:
            raise ParamError(f"max_steps must be at least 1, got {self.max_steps}")
        if int(self.log_every) < 1:
            raise ParamError(f"log_every must be at least 1, got {self.log_every}")
        if self.time_budget is not None and math.isinf(self.time_budget) and self.time_budget > 0:
            self.time_budget = None  # an unbounded budget is no budget
        if self.time_budget is not None and self.time_budget < 0:
            raise ParamError(f"time_budget must be >= 0 seconds, got {self.time_budget}")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ParamError(f"early_stop_patience must be at least 1, got {self.early_stop_patience}")
        if self.warmup_steps < 0:
            raise ParamError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("cosine", "constant"):
            raise ParamError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")


@dataclass
class TrainHistory:
    """What happened: steps run, the loss averaged over each log interval, why it stopped."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    loss_steps: list[int] = field(default_factory=list)
    elapsed: float = 0.0
    stop_reason: Literal["max_steps", "time_budget", "early_stop"] = "max_steps"
    best_loss: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "losses": list(self.losses),
            "loss_steps": list(self.loss_steps),
            "elapsed": self.elapsed,
            "stop_reason": self.stop_reason,
            "best_loss": self.best_loss,
        }


def warmup_cosine(step: int, warmup_steps: int, max_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then a cosine decay to 0 at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def format_eta(seconds: float) -> str:
    """'45s', '1m20s', '2h03m': short enough for a progress bar."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def training_limits(max_steps: Any, preset_steps: int, preset_seconds: float,
                    time_budget: float | None) -> tuple[int, float]:
    """A training's step limit and time budget (seconds; ``math.inf`` = none) from the user's choices.

    ``max_steps`` is a family's ``max_steps`` parameter ("auto" or a number). A step limit with no
    time budget trains exactly that many steps, its schedule following the steps and not the clock,
    so the same seed gives the same model on any machine; otherwise the user's time budget, or the
    preset's training time, bounds it as well.
    """
    step_limit = max_steps != AUTO
    steps = int(max_steps) if step_limit else int(preset_steps)
    if time_budget is not None:
        return steps, float(time_budget)
    return steps, (math.inf if step_limit else float(preset_seconds))


class TimeCosine:
    """Learning rate: short warm-up, then cosine decay over the time budget or the step limit, whichever ends first.

    Pass it to :class:`Trainer` as ``scheduler`` when training is bounded by wall-clock time.
    """

    def __init__(self, optimizer, lr: float, budget: float, max_steps: int, warmup: int = 50) -> None:
        self.opt, self.lr, self.budget, self.max_steps, self.warmup = optimizer, lr, budget, max_steps, warmup
        self.start = time.perf_counter()
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        frac = max(self.steps / self.max_steps, (time.perf_counter() - self.start) / max(self.budget, 1e-6))
        factor = min(1.0, self.steps / self.warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for group in self.opt.param_groups:
            group["lr"] = self.lr * factor


class Trainer:
    """Optimise ``model`` by calling ``step_fn(model, step)`` (step counts from 0) up to ``config.max_steps`` times.

    The model is moved to ``ctx.device``. Without an optimizer an AdamW with ``config.lr`` is
    built; without a scheduler one is built from ``config.schedule`` (``"cosine"``: linear
    warm-up then cosine decay; ``"constant"``: warm-up then flat).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        step_fn: Callable[[torch.nn.Module, int], torch.Tensor],
        config: TrainConfig,
        ctx: Any,
        scheduler: Any = None,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.device = torch.device(resolve_device(ctx.device))
        self.model = model.to(self.device)
        self.step_fn = step_fn
        self.optimizer = optimizer or torch.optim.AdamW(self.model.parameters(), lr=config.lr)
        if scheduler is None:
            warmup, total = config.warmup_steps, config.max_steps
            if config.schedule == "cosine":
                factor = lambda s: warmup_cosine(s, warmup, total)  # noqa: E731
            else:
                factor = lambda s: min(1.0, (s + 1) / (warmup + 1))  # noqa: E731
            scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scheduler = scheduler

    def _budget(self) -> float | None:
        budgets = [b for b in (self.config.time_budget, self.ctx.budget_left()) if b is not None]
        return min(budgets) if budgets else None

    def fit(self) -> TrainHistory:
        """Train until max_steps, the time budget or a loss plateau; raise Cancelled on cancel."""
        cfg, ctx, model = self.config, self.ctx, self.model
        torch.manual_seed(ctx.seed)
        amp_dtype = autocast_dtype(self.device) if (cfg.amp and getattr(ctx, "amp", True)) else None
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        scaler = torch.amp.GradScaler(
            "cuda", enabled=amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        budget = self._budget()
        history = TrainHistory()
        pending: list[torch.Tensor] = []  # detached losses of the current log interval
        last_loss = math.nan
        bad_evals = 0
        reference = math.inf  # the loss an evaluation must beat by min_delta to reset the patience
        start = time.perf_counter()
        last_report = -math.inf
        stop_reason: str = "max_steps"

        def elapsed() -> float:
            return time.perf_counter() - start

        def flush(step_count: int) -> float:
            """Average the pending interval, log it; raise if training diverged."""
            values = torch.stack(pending).float().cpu()
            pending.clear()
            finite = values[torch.isfinite(values)]
            if finite.numel() == 0:
                raise FamilyError(
                    f"training diverged (the loss is NaN or infinite at step {step_count}); "
                    "try a lower learning rate"
                )
            mean = float(finite.mean())
            history.losses.append(mean)
            history.loss_steps.append(step_count)
            ctx.log_metric(step=step_count, loss=mean)
            return mean

        model.train()
        try:
            for step in range(cfg.max_steps):
                ctx.check_cancelled()
                if budget is not None and elapsed() >= budget:
                    stop_reason = "time_budget"
                    break
                self.optimizer.zero_grad(set_to_none=True)
                try:
                    with autocast(self.device, enabled=amp_dtype is not None):
                        loss = self.step_fn(model, step)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise TypeError("step_fn must return the loss as a one-element tensor")
                    scaler.scale(loss.float()).backward()
                    if cfg.grad_clip is not None:
                        scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(self.optimizer)
                    scaler.update()
                except Exception as exc:
                    if is_oom(exc):
                        raise DeviceError(
                            f"out of memory while training on {self.device}; try a smaller patch or "
                            "batch size, or run on the CPU"
                        ) from None
                    raise
                self.scheduler.step()
                pending.append(loss.detach().reshape(()))
                history.steps = done = step + 1

                if done % cfg.log_every == 0 or done == cfg.max_steps:
                    last_loss = flush(done)
                    history.best_loss = min(history.best_loss, last_loss)
                    if last_loss < reference - cfg.min_delta:  # an improvement worth waiting for
                        reference = last_loss
                        bad_evals = 0
                    else:
                        bad_evals += 1
                    if cfg.early_stop_patience is not None and bad_evals >= cfg.early_stop_patience:
                        stop_reason = "early_stop"
                        self._report(done, last_loss, elapsed(), budget)
                        break

                now = elapsed()
                if now - last_report >= PROGRESS_INTERVAL or done == cfg.max_steps:
                    shown = last_loss if not math.isnan(last_loss) else float(pending[-1]) if pending else math.nan
                    self._report(done, shown, now, budget)
                    last_report = now
            if pending:  # stopped between two log points: keep the last partial interval
                last_loss = flush(history.steps)
                history.best_loss = min(history.best_loss, last_loss)
        finally:
            model.eval()
        history.elapsed = elapsed()
        history.stop_reason = stop_reason  # type: ignore[assignment]
        if stop_reason == "time_budget":
            log.info("training stopped by the time budget after %d steps", history.steps)
        return history

    def _report(self, done: int, loss: float, now: float, budget: float | None) -> None:
        total = self.config.max_steps
        eta = now / done * (total - done) if done else math.inf
        if budget is not None:
            eta = min(eta, max(0.0, budget - now))
            if done and now > 0:  # the budget ends training first: count towards the steps it allows
                total = max(done, min(total, int(round(done / now * budget))))
        loss_text = "..." if math.isnan(loss) else f"{loss:.4g}"
        eta_text = format_eta(eta) if math.isfinite(eta) else "?"
        self.ctx.progress(done, total, f"training: loss {loss_text}, ETA {eta_text}")
