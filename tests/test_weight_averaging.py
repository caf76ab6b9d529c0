"""RunLengthEMA: the exported weights are the EMA of the last steps, sized to the run, even for a short run."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from ldm.training.weight_averaging import RunLengthEMA


class Line(L.LightningModule):
    """y = w x + b fitted by SGD with a large lr, so consecutive steps' weights differ a lot."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.history: list[torch.Tensor] = []  # the weights after each optimizer step

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.history.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.3)


def _fit(steps: int, ema: RunLengthEMA) -> Line:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) + torch.randn(64, 1, generator=generator))
    model = Line()
    trainer = L.Trainer(
        max_steps=steps, callbacks=[ema], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    return model


def test_the_final_weights_are_the_ema_of_the_steps_from_start_on() -> None:
    ema = RunLengthEMA(start=0.5, horizon=0.2)  # 10 steps: average from step index 5, decay 1 - 1/2
    model = _fit(10, ema)
    assert (ema.start_step, ema.decay) == (5, 0.5)
    expected = model.history[5]
    for weights in model.history[6:]:
        expected = expected + (weights - expected) * 0.5
    torch.testing.assert_close(model.layer.weight.detach(), expected)
    assert not torch.allclose(model.layer.weight.detach(), model.history[-1])  # not the last step's weights


def test_a_short_run_still_averages_its_own_steps() -> None:
    ema = RunLengthEMA(start=0.33, horizon=0.15)  # the shapes base model's setting, on a 3-step smoke run
    model = _fit(3, ema)
    assert ema.start_step == 0
    torch.testing.assert_close(model.layer.weight.detach(), model.history[-1])  # decay 0: horizon < 1 step
    assert not torch.allclose(model.layer.weight.detach(), Line().layer.weight.detach())  # never the initial


@pytest.mark.parametrize(("start", "horizon", "name"), [(1.0, 0.1, "start=1.0"), (0.3, 0.0, "horizon=0.0")])
def test_bad_shares_name_the_key(start: float, horizon: float, name: str) -> None:
    with pytest.raises(ValueError, match=f"callbacks.ema.{name}"):
        RunLengthEMA(start=start, horizon=horizon)
