import pytest
import torch

from catdog.fast import FastCatDogCNN
from catdog.module import CatDogModule, KerasRMSprop


def test_keras_rmsprop_agrees_with_torch_rmsprop_without_eps_and_puts_eps_inside_the_root():
    """Keras's update is ``p -= lr * g / sqrt(v + eps)``; torch's RMSprop divides by ``sqrt(v) + eps``. With eps 0
    the two are one algorithm (weight decay included); with Keras's eps of 1e-7 they part where gradients are tiny."""
    torch.manual_seed(0)
    start = torch.randn(6)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    keras = KerasRMSprop([ours], lr=1e-2, rho=0.9, eps=0.0, weight_decay=0.01)
    reference = torch.optim.RMSprop([theirs], lr=1e-2, alpha=0.9, eps=0.0, weight_decay=0.01)
    for _ in range(4):
        grad = torch.randn(6)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        keras.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours, start)

    # the first step from v = 0: v = 0.1 g^2. A large gradient moves a weight by lr / sqrt(0.1) = 3.16 lr whichever
    # the eps; a tiny one (g^2 << eps) by about lr * |g| / sqrt(eps) under Keras's rule, 100 times less than torch's
    lr, eps = 1e-3, 1e-7
    for g, keras_step, torch_step in ((1.0, 3.1623e-3, 3.1623e-3), (1e-5, 3.162e-5, 3.07e-3)):
        p, q = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        p.grad, q.grad = torch.full((1,), g), torch.full((1,), g)
        KerasRMSprop([p], lr=lr, rho=0.9, eps=eps).step()
        torch.optim.RMSprop([q], lr=lr, alpha=0.9, eps=eps).step()
        assert float(-p) == pytest.approx(keras_step, rel=1e-3) and float(-q) == pytest.approx(torch_step, rel=1e-2)


def test_training_runs_and_checkpoint_reloads_without_config(tmp_path):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    x = torch.rand(40, 3, 64, 64)
    y = (x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))).float()[:, None]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20)
    module = CatDogModule(lr=1e-4, input_size=(64, 64))
    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, loader, loader)
    assert "val_acc" in trainer.callback_metrics and "train_loss" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    reloaded = CatDogModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert reloaded.hparams.lr == 1e-4 and reloaded.hparams.fast
    module.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x[:4]), module(x[:4]))

    # a checkpoint of an older version: its hyper-parameters hold the two halves of ``fast``, the same weights
    from catdog.weights import load_weights

    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"])
    del hparams["fast"]
    checkpoint["hyper_parameters"] = {**hparams, "channels_last": True, "relu_after_pool": True}
    checkpoint["datamodule_hyper_parameters"] = {"image_size": [64, 64]}  # as train.py's runs save it
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = CatDogModule.load_from_checkpoint(tmp_path / "old.ckpt").eval()
    assert old.hparams.lr == 1e-4 and old.hparams.fast and "relu_after_pool" not in old.hparams
    plain = load_weights(tmp_path / "old.ckpt").model()
    with torch.no_grad():
        torch.testing.assert_close(old(x[:4]), module(x[:4]))
        torch.testing.assert_close(plain(x[:4]), module(x[:4]))


def test_the_steps_run_the_fast_arrangement_of_the_network_and_its_moving_average():
    torch.manual_seed(0)
    module = CatDogModule(ema_decay=0.5, input_size=(64, 64))
    runners = module.__dict__["_runners"]
    for net in (module.model, module.ema.module):
        assert isinstance(runners[net], FastCatDogCNN)
        assert all(a is b for a, b in zip(runners[net].parameters(), net.parameters(), strict=True))  # shared
    plain = CatDogModule(ema_decay=0.5, input_size=(64, 64), fast=False)
    assert plain.__dict__["_runners"] == {plain.model: plain.model, plain.ema.module: plain.ema.module}
    assert module.state_dict().keys() == plain.state_dict().keys()  # saved once, under the plain names
    x = torch.rand(3, 3, 64, 64)
    module.update_average()
    with torch.no_grad():
        for p in module.model.parameters():
            p.mul_(1.5)  # the weights and their average differ
        for mode in (module.train, module.eval):  # training: the weights; evaluating: their average
            mode()
            torch.testing.assert_close(module.network(x), module(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(module.ema.module(x), module.model(x))


def test_ema_validates_the_moving_average_of_the_weights():
    torch.manual_seed(0)
    module = CatDogModule(ema_decay=0.5)
    x = torch.rand(2, 3, 150, 150)
    start = [p.detach().clone() for p in module.model.parameters()]
    module.update_average()  # the first update copies the weights
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    module.update_average()  # then averages: 0.5 * old + 0.5 * new
    for p0, p, e in zip(start, module.model.parameters(), module.ema.module.parameters(), strict=True):
        torch.testing.assert_close(e, (p0 + p) / 2)
    module.train()
    assert module.inference_model is module.model
    module.eval()
    assert module.inference_model is module.ema.module
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.ema.module(x))
    assert "ema.module.conv1.weight" in module.state_dict()
