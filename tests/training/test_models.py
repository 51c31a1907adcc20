"""Every registered model family: contract, training, export readiness, view handling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mplstm.training.models import drop_views, get_model, list_models, register_model
from mplstm.training.models.base import ModelConfig, MultiViewModel

FAMILIES = ["cnn_convlstm", "convlstm", "early_fusion", "late_fusion", "mplstm", "single_view"]
FEATURE_FAMILIES = ["early_fusion", "late_fusion", "mplstm", "single_view"]
V, T, C, H = 3, 8, 1, 32


def small_config(name: str, **overrides: object) -> dict:
    """Test-sized configs: a few seconds of CPU per family."""
    config: dict = {"num_classes": 4, "num_views": V, "widths": (8, 16, 32), "dropout": 0.0}
    if name == "convlstm":
        config["convlstm_channels"] = (8, 16)
    elif name == "cnn_convlstm":
        config["convlstm_channels"] = 16
    else:
        config["hidden_size"] = 32
    config.update(overrides)
    return config


def clips(batch: int, steps: int = T, size: int = H, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, V, steps, C, size, size), dtype=torch.uint8, generator=gen)


def test_registry_lists_every_family() -> None:
    assert list_models() == FAMILIES


def test_unknown_model_and_unknown_field_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="known models: cnn_convlstm, convlstm"):
        get_model("transformer")
    with pytest.raises(
        ValueError, match=r"unknown config field\(s\) \['hiden_size'\].*hidden_size"
    ):
        get_model("mplstm", hiden_size=8)


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_model("mplstm")
        class Duplicate(MultiViewModel):
            config_class = ModelConfig


@pytest.mark.parametrize("name", FAMILIES)
def test_model_rebuilds_from_its_name_and_config_alone(name: str) -> None:
    model = get_model(name, **small_config(name))
    again = get_model(model.name, **dataclasses.asdict(model.config))
    again.load_state_dict(model.state_dict())
    assert again.config == model.config


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_and_backward_with_mask_and_lengths(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **small_config(name))
    mask = torch.tensor([[True, False, True], [True, True, True]])
    logits = model(clips(2), mask, torch.tensor([T, 5]))
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", FAMILIES)
def test_exports_with_a_dynamic_batch_and_matches_eager_on_another_batch_size(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **small_config(name)).eval()
    x, mask, lengths = clips(2, 4, 16), torch.ones(2, V, dtype=torch.bool), torch.tensor([4, 3])
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        model, (x, mask, lengths), dynamic_shapes=({0: batch}, {0: batch}, {0: batch})
    )
    x2 = clips(5, 4, 16, seed=1)
    mask2 = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    lengths2 = torch.tensor([4, 1, 2, 4, 3])
    with torch.no_grad():
        expected = model(x2, mask2, lengths2)
        got = program.module()(x2, mask2, lengths2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_overfits_sixteen_random_clips_within_twenty_steps(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **small_config(name))
    x = clips(16)
    labels = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
    # Training accuracy: batch-norm statistics of the batch itself (no dropout configured).
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == labels).float().mean().item()
    assert accuracy == 1.0


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "single_view"])
def test_pixels_of_a_missing_view_do_not_change_the_logits(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **small_config(name)).eval()
    x = clips(2)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    other = x.clone()
    other[0, 1] = 255 - other[0, 1]
    other[1, 0] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(other, mask), model(x, mask))
        assert not torch.allclose(model(other), model(x))  # the views do matter when present


def test_single_view_model_reads_only_its_view() -> None:
    model = get_model("single_view", **small_config("single_view", view=2)).eval()
    x = clips(2)
    other = x.clone()
    other[:, :2] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(other), model(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_uint8_input_is_normalised_with_the_config_mean_and_std(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **small_config(name, mean=(0.5,), std=(0.25,))).eval()
    x = clips(2)
    normalised = (x.float() / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(normalised), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FEATURE_FAMILIES)
def test_features_mode_reads_precomputed_features(name: str) -> None:
    model = get_model(name, **small_config(name, feature_dim=12))
    assert not any("frontend" in n for n, _ in model.named_parameters())
    logits = model(torch.randn(2, V, T, 12), torch.tensor([[1, 1, 0], [1, 1, 1]]), None)
    assert logits.shape == (2, 4)
    logits.sum().backward()


@pytest.mark.parametrize("name", ["convlstm", "cnn_convlstm"])
def test_convlstm_families_refuse_features_mode(name: str) -> None:
    with pytest.raises(ValueError, match="reads pixels"):
        get_model(name, **small_config(name, feature_dim=12))


def test_wrong_input_shape_names_the_expected_layout() -> None:
    model = get_model("mplstm", **small_config("mplstm"))
    with pytest.raises(ValueError, match=r"\[B, V=3, T, C=1, H, W\]"):
        model(torch.zeros(2, 2, T, C, H, H, dtype=torch.uint8))


def test_sample_with_every_view_missing_is_refused() -> None:
    model = get_model("mplstm", **small_config("mplstm"))
    with pytest.raises(ValueError, match="masks every view"):
        model(clips(2), torch.tensor([[True, False, False], [False, False, False]]))


def test_view_dropout_keeps_a_view_per_sample_and_never_restores_a_missing_one() -> None:
    torch.manual_seed(0)
    mask = torch.rand(4000, 5) < 0.8
    mask[:, 0] |= ~mask.any(dim=1)  # every sample has a view to start with
    dropped = drop_views(mask, 0.5)
    assert dropped.any(dim=1).all()
    assert not (dropped & ~mask).any()
    rate = 1 - dropped.sum() / mask.sum()
    assert 0.4 < rate < 0.5  # p = 0.5, less the views kept so that no sample goes empty


def test_view_dropout_applies_in_training_mode_only() -> None:
    torch.manual_seed(0)
    model = get_model("mplstm", **small_config("mplstm", view_dropout=0.9))
    x = clips(2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        outputs = [model(x) for _ in range(4)]
    assert any(not torch.allclose(outputs[0], o) for o in outputs[1:])


@pytest.mark.parametrize("name", FEATURE_FAMILIES)
def test_steps_past_a_clip_length_do_not_change_its_logits(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **small_config(name, feature_dim=12)).eval()
    feats = torch.randn(1, V, T, 12)
    padded = feats.clone()
    padded[:, :, 5:] = 100.0
    with torch.no_grad():
        short = model(feats[:, :, :5], None, torch.tensor([5]))
        torch.testing.assert_close(model(padded, None, torch.tensor([5])), short)
        assert not torch.allclose(model(padded), short)


def test_convlstm_state_stops_at_the_clip_length() -> None:
    torch.manual_seed(0)
    model = get_model("convlstm", **small_config("convlstm")).eval()
    x = clips(1)
    padded = x.clone()
    padded[:, :, 5:] = 255
    with torch.no_grad():
        short = model(x[:, :, :5], None, torch.tensor([5]))
        torch.testing.assert_close(model(padded, None, torch.tensor([5])), short)
        assert not torch.allclose(model(padded), short)


def test_view_dropout_is_held_off_until_the_trainer_turns_it_on() -> None:
    torch.manual_seed(0)
    model = get_model("mplstm", **small_config("mplstm", view_dropout=0.6)).train()
    x = clips(4)
    model.drop_views_in_training = False
    with torch.no_grad():
        held = model(x)
        torch.testing.assert_close(model(x), held)  # every view, every time
        model.drop_views_in_training = True
        dropped = [model(x) for _ in range(4)]
    assert any(not torch.allclose(d, held) for d in dropped)


def _live(pooling: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model(
        "mplstm",
        num_classes=4,
        num_views=3,
        widths=(4, 8, 8),
        hidden_size=8,
        bidirectional=False,
        causal=True,
        pooling=pooling,
        **config,
    ).eval()


def _zero_state(model: torch.nn.Module, batch: int, size: int) -> dict[str, torch.Tensor]:
    shapes = model.step_state_shapes(size, size)
    return {name: torch.zeros(batch, *shape) for name, shape in shapes.items()}


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_a_causal_model_run_chunk_by_chunk_gives_its_whole_clip_logits(pooling: str) -> None:
    model = _live(pooling, num_layers=2)
    clip = torch.randint(0, 256, (2, 3, 9, 1, 16, 16), dtype=torch.uint8)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    state = _zero_state(model, 2, 16)
    with torch.no_grad():
        for start, stop in ((0, 1), (1, 4), (4, 9)):
            logits, state = model.step(model.normalise(clip[:, :, start:stop]), mask, state)
            prefix = model(clip[:, :, :stop], mask)
            torch.testing.assert_close(logits, prefix, rtol=0, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "offline"])
def test_only_a_causal_front_end_keeps_features_free_of_later_frames(causal: bool) -> None:
    model = (
        _live("attention")
        if causal
        else get_model("mplstm", num_classes=4, num_views=3, widths=(4, 8, 8), hidden_size=8).eval()
    )
    clip = model.normalise(torch.randint(0, 256, (1, 3, 6, 1, 16, 16), dtype=torch.uint8))
    changed = clip.clone()
    changed[:, :, 4:] = -changed[:, :, 4:]
    with torch.no_grad():
        before = model.frontend(clip)[:, :, :4]
        after = model.frontend(changed)[:, :, :4]
    assert torch.equal(before, after) == causal


def test_a_causal_model_must_be_unidirectional_and_offline_models_do_not_step() -> None:
    with pytest.raises(ValueError, match="bidirectional = false"):
        get_model("mplstm", num_classes=4, num_views=3, causal=True, bidirectional=True)
    offline = get_model("mplstm", num_classes=4, num_views=3, widths=(4, 8, 8), hidden_size=8)
    with pytest.raises(ValueError, match="causal = true"):
        offline.step(torch.zeros(1, 3, 1, 1, 16, 16), torch.ones(1, 3, dtype=torch.bool), {})
