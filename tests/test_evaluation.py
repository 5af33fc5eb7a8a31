"""Evaluation averages the logits of several views of one sample."""

import torch

from adaptformer.data.loading import Batch
from adaptformer.evaluation import evaluate, view_averaged_logits


class Scaled(torch.nn.Module):
    """Logits = the per-sample mean of each of 3 channels: easy to compute by hand."""

    def forward(self, x):
        return x.flatten(2).mean(-1)


def test_views_are_averaged_before_scoring():
    torch.manual_seed(0)
    inputs = torch.randn(4, 5, 3, 2, 2)  # 4 samples x 5 views
    logits = view_averaged_logits(Scaled(), inputs, input_ndim=4)
    expected = torch.stack([Scaled()(inputs[:, v]) for v in range(5)]).mean(0)
    torch.testing.assert_close(logits, expected)
    labels = expected.argmax(1)
    labels[0] = (labels[0] + 1) % 3  # one sample wrong after averaging
    batch = Batch(inputs, labels, torch.arange(4), [])
    result = evaluate(Scaled(), [batch], torch.device("cpu"), "fp32", 3, input_ndim=4)
    assert result["top1"] == 75.0 and result["samples"] == 4


def test_single_view_batches_and_empty_batches():
    inputs = torch.randn(2, 3, 2, 2)
    labels = Scaled()(inputs).argmax(1)
    batches = [Batch(None, None, None, []), Batch(inputs, labels, torch.arange(2), [])]
    assert evaluate(Scaled(), batches, torch.device("cpu"), "fp32", 3)["top1"] == 100.0
