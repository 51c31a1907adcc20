"""Margin losses and the embedding head: what open-set identity training relies on."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mplstm.training.config import ConfigError, load_config
from mplstm.training.losses import MarginLoss, make_criterion
from mplstm.training.models import get_model

SCALE = 30.0


def _logits(cosines: list[list[float]]) -> torch.Tensor:
    return SCALE * torch.tensor(cosines)


def test_cosface_takes_the_margin_off_the_true_class_cosine() -> None:
    logits, labels = _logits([[0.5, 0.2, -0.1]]), torch.tensor([0])
    margined = logits.clone()
    margined[0, 0] = SCALE * (0.5 - 0.3)
    expected = F.cross_entropy(margined, labels, reduction="none")
    got = MarginLoss("cosface", 0.3, SCALE)(logits, labels)
    torch.testing.assert_close(got, expected)
    assert got > F.cross_entropy(logits, labels, reduction="none")


def test_arcface_adds_the_margin_to_the_true_class_angle() -> None:
    logits, labels = _logits([[0.5, 0.2, -0.1]]), torch.tensor([0])
    margined = logits.clone()
    margined[0, 0] = SCALE * math.cos(math.acos(0.5) + 0.4)
    expected = F.cross_entropy(margined, labels, reduction="none")
    torch.testing.assert_close(MarginLoss("arcface", 0.4, SCALE)(logits, labels), expected)


def test_arcface_keeps_penalising_past_an_angle_of_pi() -> None:
    # cos(angle + m) grows again past pi: the guard keeps the loss rising as the cosine falls.
    loss = MarginLoss("arcface", 0.5, SCALE)
    labels = torch.tensor([0, 0])
    near_opposite = loss(_logits([[-0.95, 0.0], [-0.999, 0.0]]), labels)
    assert near_opposite[1] > near_opposite[0]


def test_softmax_beside_the_margin_loss_adds_plain_cross_entropy() -> None:
    logits, labels = _logits([[0.1, 0.3], [0.6, -0.2]]), torch.tensor([0, 0])
    alone = MarginLoss("cosface", 0.2, SCALE)(logits, labels)
    beside = MarginLoss("cosface", 0.2, SCALE, softmax_weight=0.5)(logits, labels)
    plain = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(beside, alone + 0.5 * plain)


def test_a_margin_loss_without_an_embedding_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=r"model\.embedding_size"):
        make_criterion("arcface", margin=0.3, scale=None, label_smoothing=0, softmax_weight=0)
    with pytest.raises(ValueError, match="cross_entropy"):
        make_criterion("triplet", margin=0.3, scale=30, label_smoothing=0, softmax_weight=0)


def test_negative_margin_is_refused_by_the_config() -> None:
    from mplstm.training.config import check_train_config

    with pytest.raises(ConfigError, match="margin"):
        check_train_config(load_config(None, ["train.margin=-0.1"]).train)


@pytest.mark.parametrize("name", ["mplstm", "early_fusion", "late_fusion", "single_view"])
def test_embedding_head_gives_unit_embeddings_and_the_same_logits_as_forward(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(
        name, num_classes=5, num_views=3, widths=(8, 8, 16), hidden_size=16, embedding_size=12
    ).eval()
    clip = torch.randint(0, 256, (4, 3, 6, 1, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        logits, embedding = model.embed(clip, mask)
        torch.testing.assert_close(logits, model(clip, mask))
    assert embedding.shape == (4, 12)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(4))
    # The logits are the scaled cosines with each class's unit weight.
    assert logits.abs().max() <= model.config.embedding_scale + 1e-4


def test_a_plain_classifier_embeds_its_normalised_features() -> None:
    model = get_model("mplstm", num_classes=5, num_views=3, widths=(8, 8, 16), hidden_size=16)
    clip = torch.randint(0, 256, (2, 3, 6, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        _, embedding = model.eval().embed(clip)
    assert embedding.shape == (2, 32)  # bidirectional 2 x 16, the pooled features
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("name", ["convlstm", "cnn_convlstm"])
def test_families_without_clip_features_refuse_an_embedding_head(name: str) -> None:
    with pytest.raises(ValueError, match="embedding_size must be 0"):
        get_model(name, num_classes=5, num_views=3, embedding_size=8)


def test_a_run_can_start_its_front_end_from_another_family_checkpoint(
    tiny_checkpoint, tmp_path
) -> None:
    from mplstm.training.checkpoint import load_checkpoint
    from mplstm.training.distributed import World
    from mplstm.training.train import _init_frontend

    source = tiny_checkpoint("single_view")
    model = get_model("mplstm", num_classes=5, num_views=3, widths=(8, 8, 16), hidden_size=16)
    _init_frontend(model, source, World())
    state = load_checkpoint(source)["model"]["state_dict"]
    for name, value in model.state_dict().items():
        if name.startswith("frontend."):
            torch.testing.assert_close(value, state[name])
    other = get_model("mplstm", num_classes=5, num_views=3, widths=(4, 4, 4), hidden_size=16)
    with pytest.raises(ConfigError, match="no front-end of this model's shapes"):
        _init_frontend(other, source, World())
