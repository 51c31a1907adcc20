"""Open-set metrics: the protocol, thresholds at a false-accept rate, EER, rank-1, DIR/FPIR."""

from __future__ import annotations

import numpy as np
import pytest

from mplstm.core.openset import (
    OpenSetError,
    equal_error_rate,
    evaluate_open_set,
    make_protocol,
    template,
    threshold_at_far,
)


def _clips(people: int, per_person: int) -> tuple[list[str], list[str]]:
    labels = [f"p{p}" for p in range(people) for _ in range(per_person)]
    ids = [f"{label}_c{i % per_person}" for i, label in enumerate(labels)]
    return ids, labels


def test_protocol_enrols_the_first_clips_of_the_first_half_and_probes_with_the_rest() -> None:
    ids, labels = _clips(5, 4)
    protocol = make_protocol(ids[::-1], labels[::-1], enrol_clips=2)  # order by id, not input
    assert protocol.people == ("p0", "p1", "p2") and protocol.impostor_people == ("p3", "p4")
    reversed_ids = ids[::-1]
    assert [reversed_ids[i] for i in protocol.enrol[0]] == ["p0_c0", "p0_c1"]
    assert sorted(reversed_ids[i] for i in protocol.genuine)[:2] == ["p0_c2", "p0_c3"]
    assert len(protocol.genuine) == 3 * 2 and len(protocol.impostors) == 2 * 4


def test_a_person_with_no_clip_left_to_probe_is_refused() -> None:
    ids, labels = _clips(2, 2)
    with pytest.raises(OpenSetError, match="no clip left"):
        make_protocol(ids, labels, enrol_clips=2)


def test_threshold_accepts_at_most_the_asked_share_of_impostors() -> None:
    impostor = np.random.default_rng(0).normal(size=10_000)
    for far in (0.1, 0.01, 0.001):
        t = threshold_at_far(impostor, far)
        accepted = np.mean(impostor >= t)
        assert accepted <= far and accepted > far * 0.8


def test_eer_is_zero_when_separable_and_one_half_when_not() -> None:
    rng = np.random.default_rng(1)
    assert equal_error_rate(rng.uniform(0.6, 1, 200), rng.uniform(-1, 0.5, 900))[0] == 0
    same = rng.normal(size=5000)
    assert abs(equal_error_rate(same[:2500], same[2500:])[0] - 0.5) < 0.03


def test_template_is_the_normalised_mean_of_unit_embeddings() -> None:
    got = template(np.array([[2.0, 0.0], [0.0, 5.0]]))
    np.testing.assert_allclose(got, [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)


def test_well_separated_people_are_all_found_and_no_impostor_is_accepted() -> None:
    rng = np.random.default_rng(2)
    ids, labels = _clips(8, 5)
    centres = np.eye(16)[:8] * 3
    person = np.array([int(label[1:]) for label in labels])
    embeddings = centres[person] + 0.1 * rng.normal(size=(40, 16))
    result = evaluate_open_set(embeddings, make_protocol(ids, labels, enrol_clips=2))
    assert result.rank1 == 1.0 and result.eer == 0.0
    for point in result.operating:
        assert point.tar == point.dir == 1.0 and point.far_measured <= point.far
    assert result.at(0.001).fpir == 0.0  # above every impostor score
    assert result.genuine_pairs == 4 * 3 and result.impostor_pairs == 12 * 3 + 20 * 4


def test_an_impostor_who_looks_like_a_gallery_person_is_a_false_positive() -> None:
    ids, labels = _clips(4, 3)
    embeddings = np.eye(4)[[int(label[1:]) for label in labels]].astype(np.float32)
    embeddings[[i for i, label in enumerate(labels) if label == "p3"]] = np.eye(4)[0]  # p3 = p0
    protocol = make_protocol(ids, labels, enrol_clips=1)
    # Gallery p0, p1; impostors p2 (unlike anyone) and p3 (a double of p0): 3 of the 16
    # impostor pairs score 1, as high as any genuine pair.
    result = evaluate_open_set(embeddings, protocol, fars=(0.25, 0.01))
    assert result.rank1 == 1.0
    assert result.at(0.25).fpir == pytest.approx(0.5) and result.at(0.25).tar == 1.0
    assert result.at(0.01).fpir == 0.0 and result.at(0.01).tar == 0.0
