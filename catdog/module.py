"""``CatDogModule``: the seed's training recipe (binary cross-entropy, RMSprop, accuracy) around ``CatDogCNN``."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import TQDMProgressBar
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import Metric

from catdog import CatDogError
from catdog.fast import FastCatDogCNN
from catdog.model import INPUT_SIZE, CatDogCNN


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop exactly as Keras 3 updates: ``v = rho*v + (1-rho)*g^2;  p -= lr * g / sqrt(v + eps)``.

    ``torch.optim.RMSprop`` adds eps *outside* the square root (``sqrt(v) + eps``); with Keras's eps of 1e-7
    the two differ for parameters with tiny gradients, so the seed's optimizer is reproduced here.
    """

    def __init__(self, params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            velocity = [self.state[p].setdefault("velocity", torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(velocity, group["rho"])
            torch._foreach_addcmul_(velocity, grads, grads, value=1 - group["rho"])
            denom = torch._foreach_add(velocity, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])
        return loss


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def set_tf32(enabled: bool) -> None:
    """float32 matmuls and convolutions on a GPU in TF32 (``enabled``: faster on Ampere and later, about 3 decimal
    digits) or in full float32, as Keras computes them (PyTorch's own default lets cuDNN's convolutions use TF32)."""
    precision = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = precision  # the API of torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


class WeightedMean(Metric):
    """The epoch's mean of a per-batch value weighted by batch size, accumulated on the device (no host sync per
    step); the same arithmetic as ``self.log(..., on_epoch=True, batch_size=n)``: sum of value * n over sum of n."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, n: int) -> None:
        self.total = self.total + value.float() * n
        self.count = self.count + n

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class LogitAccuracy(Metric):
    """Accuracy of a single logit, p(dog) = sigmoid(logit) thresholded at 0.5 as Keras's ``binary_accuracy``,
    counted on the device. torchmetrics' ``BinaryAccuracy`` checks its targets with ``torch.unique`` (a host sync
    per step on a GPU) and takes a batch whose logits all lie in [0, 1] for probabilities."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.correct = self.correct + ((torch.sigmoid(logits) > 0.5) == (y > 0.5)).sum()
        self.count = self.count + y.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.count.float()


class Total(Metric):
    """The epoch's sum of a per-batch count, on the device."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:
        self.total = self.total + value

    def compute(self) -> torch.Tensor:
        return self.total


class RunningLossBar(TQDMProgressBar):
    """Lightning's progress bar plus the latest training loss, read from the device only when the bar refreshes
    and at most every ``every_s`` seconds: a GPU waits for the host at most that often, not at every step."""

    def __init__(self, *args, every_s: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.every_s, self._read_at, self._loss = every_s, -float("inf"), None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "running_loss", None)
        if loss is not None and time.monotonic() - self._read_at >= self.every_s:
            self._loss, self._read_at = float(loss), time.monotonic()
        if self._loss is not None:
            items["loss"] = self._loss
        return items


class CatDogModule(pl.LightningModule):
    """Trains ``CatDogCNN`` with BCE-with-logits (the stable form of sigmoid + binary cross-entropy).

    Logs ``train_loss``/``train_acc``/``val_loss``/``val_acc`` per epoch and ``test_loss``/``test_acc``: sums kept
    on the device (``WeightedMean``, ``LogitAccuracy``), registered with ``self.log`` once per epoch and computed
    by Lightning at the epoch's end, so no step waits for the host to read a metric.
    All arguments are saved as hyper-parameters, so ``CatDogModule.load_from_checkpoint(path)`` needs no config.

    ``fast``: the training, validation and test steps call the network through ``catdog.fast`` (ReLU after pooling,
    channels_last, ...): the same outputs and gradients, faster; the parameters are shared, so checkpoints hold the
    plain network's. ``compile``: ``torch.compile`` what the steps call (``true`` or a mode: ``default``,
    ``reduce-overhead`` (CUDA graphs), ``max-autotune``, ``max-autotune-no-cudagraphs``). ``forward`` (predictions,
    hooks, snapshots) runs the plain network, eagerly, so hooks see what the seed plots.
    Checkpoints of older versions, whose hyper-parameters hold ``channels_last`` and ``relu_after_pool`` (the two
    halves of ``fast``), load as they are: Lightning passes ``__init__`` only the arguments it takes.
    """

    CHECK_EVERY = 50  # steps between reads of the non-finite-loss watch (each read waits for the device)

    def __init__(
        self,
        lr: float = 1e-3,
        rho: float = 0.9,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        init: str = "keras",
        fast: bool = True,
        dropout: float = 0.0,
        lr_schedule: str | None = None,
        ema_decay: float = 0.0,
        input_size: tuple[int, int] = INPUT_SIZE,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr_schedule not in (None, "cosine"):
            raise CatDogError(f"model.lr_schedule must be null or cosine, got {lr_schedule!r}")
        if compile not in (False, True, *COMPILE_MODES):
            raise CatDogError(
                f"model.compile must be false, true or one of {', '.join(COMPILE_MODES)}; got {compile!r}"
            )
        try:
            start = "keras" if init not in ("keras", "torch") else init
            self.model = CatDogCNN(start, dropout, tuple(input_size))
        except ValueError as err:
            raise CatDogError(f"data.image_size: {err}") from err
        if init not in ("keras", "torch"):  # pretrained, latest or a weights file: fine-tune from those weights
            self._start_from(init)
        # an exponential moving average of the weights: validated, tested and shipped in their place
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
        # per stage: the epoch's loss, accuracy and undecodable files, summed on the device; keyed by logged name
        self.epoch_metrics = torch.nn.ModuleDict()
        for stage in ("train", "val", "test"):
            self.epoch_metrics[f"{stage}_loss"] = WeightedMean()
            self.epoch_metrics[f"{stage}_acc"] = LogitAccuracy()
            self.epoch_metrics[f"{stage}_skipped_files"] = Total()
        self._registered: set[str] = set()  # stages whose metrics are logged this epoch
        self.running_loss: torch.Tensor | None = None  # the latest training loss, for the progress bar
        self._recent: torch.Tensor | None = None  # the losses of the steps since the last non-finite check ...
        self._recent_steps: list[int] = []  # ... and their global steps
        self.dropout_seed = torch.initial_seed()  # seed= sets it (drawing nothing); saved in checkpoints
        # What the steps call for each network (the weights and their moving average): its fast arrangement, sharing
        # its parameters, and compiled if asked. Kept out of the module tree, so state_dict holds each weight once.
        nets = [self.model] + ([self.ema.module] if self.ema is not None else [])
        self.__dict__["_runners"] = {net: FastCatDogCNN(net) if fast else net for net in nets}
        self.__dict__["_compiled"] = None  # the moving average is evaluated uncompiled: it runs once an epoch
        if compile:
            runner = self.__dict__["_runners"][self.model]
            self.__dict__["_compiled"] = torch.compile(runner, mode=None if compile is True else compile)

    def _start_from(self, spec: str) -> None:
        from catdog.weights import load_weights

        weights = load_weights(spec)
        if weights.preprocessing.image_size != self.model.input_size:
            raise CatDogError(
                f"model.init={spec}: {weights.source} were trained on {list(weights.preprocessing.image_size)} images, "
                f"data.image_size is {list(self.model.input_size)}"
            )
        with torch.no_grad():
            weights.model()  # checks every key and shape
            self.model.load_state_dict(weights.state_dict)
        print(f"model.init={spec}: starting from {weights.source}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inference_model(x)

    @property
    def inference_model(self) -> CatDogCNN:
        """The network that validates and tests: the weights' moving average when ``ema_decay > 0``."""
        return self.ema.module if self.ema is not None and not self.training else self.model

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the training, validation and test steps: ``forward``'s, computed by the fast arrangement of
        the network (``fast``), compiled when ``compile`` is set (and the weights' moving average is not the one
        evaluating)."""
        net = self.inference_model
        compiled = self.__dict__["_compiled"]
        return compiled(x) if compiled is not None and net is self.model else self.__dict__["_runners"][net](x)

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> torch.Tensor | None:
        x, y, *skipped = batch  # the datamodule's batches also count the files that failed to decode
        names = [f"{stage}_loss", f"{stage}_acc"] + ([f"{stage}_skipped_files"] if skipped else [])
        metrics = self.epoch_metrics
        if stage not in self._registered:  # once an epoch: Lightning computes, logs and resets them at its end
            self._registered.add(stage)
            for name in names:
                self.log(name, metrics[name], on_step=False, on_epoch=True, prog_bar=not name.endswith("_files"))
        if skipped:
            metrics[f"{stage}_skipped_files"].update(skipped[0])
        if len(x) == 0:
            return None  # every file of the batch was bad: Lightning skips the step
        logits = self.network(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        if stage == "train":
            self._watch_loss(loss)
        metrics[f"{stage}_loss"].update(loss.detach(), len(x))
        metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss

    def _epoch_start(self, stage: str) -> None:
        self._registered.discard(stage)

    def on_train_epoch_start(self) -> None:
        self._epoch_start("train")

    def on_validation_epoch_start(self) -> None:
        self._epoch_start("val")

    def on_test_epoch_start(self) -> None:
        self._epoch_start("test")

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Stop on the first non-finite training loss. The losses are kept on the device (one copy a step) and
        read every ``CHECK_EVERY`` steps and at the epoch's end, so a GPU never waits for the host at each step."""
        if self._recent is None or self._recent.device != loss.device:
            self._recent = torch.zeros(self.CHECK_EVERY, device=loss.device)
        self._recent[len(self._recent_steps)] = loss.detach()
        self._recent_steps.append(self.global_step)
        self.running_loss = self._recent[len(self._recent_steps) - 1]
        if len(self._recent_steps) == self.CHECK_EVERY:
            self._raise_if_bad()

    def _raise_if_bad(self) -> None:
        steps, self._recent_steps = self._recent_steps, []
        if not steps:
            return
        recent = self._recent[: len(steps)]
        bad = (~torch.isfinite(recent)).nonzero()
        if len(bad):
            first = int(bad[0, 0])
            raise CatDogError(
                f"the training loss is {recent[first].item()} at step {steps[first]} (epoch {self.current_epoch}); "
                "lower model.lr, or check the data"
            )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if not self.hparams.dropout:
            return self._step(batch, "train")
        # dropout's masks depend only on the run's dropout seed and the step, not on what else drew random numbers
        # before: a resumed run draws the same masks as an uninterrupted one
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.dropout_seed + self.global_step)
            return self._step(batch, "train")

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_average()

    def update_average(self) -> None:
        """Fold the weights just stepped into their moving average (in the step itself, so a checkpoint saved
        after the step holds both)."""
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dropout_seed"] = self.dropout_seed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.dropout_seed = checkpoint.get("dropout_seed", self.dropout_seed)

    def on_train_epoch_end(self) -> None:
        self._raise_if_bad()

    def configure_callbacks(self) -> list[pl.Callback]:
        """Lightning's own progress bar, as configured, becomes a ``RunningLossBar`` with the same settings: the
        running loss is no logged metric (Lightning would read one from the device after every step)."""
        bar = self.trainer.progress_bar_callback if self._trainer is not None else None
        if type(bar) is not TQDMProgressBar:
            return []
        return [RunningLossBar(refresh_rate=bar.refresh_rate, process_position=bar.process_position, leave=bar._leave)]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        h = self.hparams
        optimizer = KerasRMSprop(self.parameters(), lr=h.lr, rho=h.rho, eps=h.eps, weight_decay=h.weight_decay)
        if h.lr_schedule != "cosine":
            return optimizer
        # cosine decay to zero over the run, stepped per epoch
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs))
        return {"optimizer": optimizer, "lr_scheduler": schedule}
