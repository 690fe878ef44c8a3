"""``CatDogModule``: the seed's training recipe (binary cross-entropy, RMSprop, accuracy) around ``CatDogCNN``."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import BinaryAccuracy

from catdog import CatDogError
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


class CatDogModule(pl.LightningModule):
    """Trains ``CatDogCNN`` with BCE-with-logits (the stable form of sigmoid + binary cross-entropy).

    Logs ``train_loss``/``train_acc``/``val_loss``/``val_acc`` per epoch and ``test_loss``/``test_acc``.
    All arguments are saved as hyper-parameters, so ``CatDogModule.load_from_checkpoint(path)`` needs no config.
    """

    CHECK_EVERY = 50  # steps between reads of the non-finite-loss watch (each read waits for the device)

    def __init__(
        self,
        lr: float = 1e-3,
        rho: float = 0.9,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        init: str = "keras",
        channels_last: bool = False,
        relu_after_pool: bool = False,
        dropout: float = 0.0,
        lr_schedule: str | None = None,
        ema_decay: float = 0.0,
        input_size: tuple[int, int] = INPUT_SIZE,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr_schedule not in (None, "cosine"):
            raise CatDogError(f"model.lr_schedule must be null or cosine, got {lr_schedule!r}")
        try:
            start = "keras" if init not in ("keras", "torch") else init
            self.model = CatDogCNN(start, relu_after_pool, dropout, tuple(input_size))
        except ValueError as err:
            raise CatDogError(f"data.image_size: {err}") from err
        if init not in ("keras", "torch"):  # pretrained, latest or a weights file: fine-tune from those weights
            self._start_from(init)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # an exponential moving average of the weights: validated, tested and shipped in their place
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
        self.metrics = torch.nn.ModuleDict({f"{s}_acc": BinaryAccuracy() for s in ("train", "val", "test")})
        self._first_bad: tuple[torch.Tensor, torch.Tensor] | None = None  # step and value of a non-finite loss
        self.dropout_seed = torch.initial_seed()  # seed= sets it (drawing nothing); saved in checkpoints

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
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inference_model(x)

    @property
    def inference_model(self) -> CatDogCNN:
        """The network that validates and tests: the weights' moving average when ``ema_decay > 0``."""
        return self.ema.module if self.ema is not None and not self.training else self.model

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> torch.Tensor | None:
        x, y, *skipped = batch  # the datamodule's batches also count the files that failed to decode
        if skipped:
            self.log(f"{stage}_skipped_files", skipped[0].float(), on_epoch=True, reduce_fx="sum", sync_dist=True)
        if len(x) == 0:
            return None  # every file of the batch was bad: Lightning skips the step
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        if stage == "train":
            self._watch_loss(loss)
        accuracy = self.metrics[f"{stage}_acc"]
        accuracy(logits, y)  # torchmetrics applies the sigmoid to logits and thresholds at 0.5
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        if stage == "train":  # a running loss in the progress bar; the epoch means above go to the loggers
            self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Stop on the first non-finite training loss. The step and loss are kept on the device and read every
        ``CHECK_EVERY`` steps and at the epoch's end, so a GPU never waits for the host at each step."""
        if self._first_bad is None:
            self._first_bad = (torch.full((), -1, device=loss.device), torch.zeros_like(loss))
        first_step, first_loss = self._first_bad
        new = ~torch.isfinite(loss) & (first_step < 0)
        self._first_bad = (torch.where(new, self.global_step, first_step), torch.where(new, loss.detach(), first_loss))
        if self.global_step % self.CHECK_EVERY == 0:
            self._raise_if_bad()

    def _raise_if_bad(self) -> None:
        if self._first_bad is not None and self._first_bad[0] >= 0:
            step, loss = (t.item() for t in self._first_bad)
            raise CatDogError(
                f"the training loss is {loss} at step {step} (epoch {self.current_epoch}); "
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
