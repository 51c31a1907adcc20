"""The in-memory index: exact cosine search over templates, updates, removal, growth."""

from __future__ import annotations

import numpy as np

from mplstm.core.openset import normalise, template
from mplstm.service.gallery.index import ModelIndex


def _people(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return normalise(np.random.default_rng(seed).normal(size=(n, dim)))


def test_search_is_exact_cosine_over_templates_best_first() -> None:
    vectors = _people(50)
    index = ModelIndex(16, capacity=4)  # grows by doubling past the first 4
    for i, v in enumerate(vectors):
        index.set(f"p{i:02d}", [v])
    probe = normalise(vectors[7] + 0.3 * _people(1, seed=1)[0])
    found = index.search(probe, 5)
    expected = np.argsort(-(vectors @ probe))[:5]
    assert [p for p, _ in found] == [f"p{i:02d}" for i in expected]
    np.testing.assert_allclose([s for _, s in found], np.sort(vectors @ probe)[::-1][:5], rtol=1e-5)
    assert len(index) == 50 and index.nbytes >= 50 * 16 * 4


def test_a_person_with_several_embeddings_is_matched_by_their_template() -> None:
    a, b = _people(2)
    index = ModelIndex(16)
    index.set("ada", [a, b])
    np.testing.assert_allclose(index.score("ada", template(np.stack([a, b]))), 1.0, rtol=1e-6)
    assert index.score("nobody", a) is None


def test_removal_keeps_every_other_person_findable() -> None:
    vectors = _people(10)
    index = ModelIndex(16)
    for i, v in enumerate(vectors):
        index.set(f"p{i}", [v])
    for gone in ("p0", "p5", "p9", "p3"):
        index.remove(gone)
    index.remove("never-there")
    assert sorted(index.people()) == ["p1", "p2", "p4", "p6", "p7", "p8"]
    for i in (1, 2, 4, 6, 7, 8):
        assert index.search(vectors[i], 1)[0][0] == f"p{i}"
    index.set("p4", [])  # no embedding left: gone
    assert "p4" not in index


def test_an_empty_index_finds_no_one_and_a_wrong_size_embedding_is_ignored() -> None:
    index = ModelIndex(16)
    assert index.search(_people(1)[0], 3) == []
    index.set("odd", [np.ones(8, np.float32)])
    assert len(index) == 0
