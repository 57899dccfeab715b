"""The batch-time points shipped in router/data match what the shared profiles compose to, and
the planner loads them when the shared profiles are absent."""

import numpy as np
import pytest

from router import profiles


@pytest.mark.parametrize("hw", ["h100", "a100"])
def test_shipped_points_equal_the_composed_ones(hw):
    if not profiles.DEFAULT_DIR.exists():
        pytest.skip("../shared/profiles not present")
    composed, shipped = profiles.load_points(hw), profiles._read_shipped(hw)
    np.testing.assert_array_equal(composed.x, shipped.x)
    np.testing.assert_allclose(composed.y, shipped.y, rtol=1e-12)
    assert composed.kind == shipped.kind


def test_without_shared_profiles_the_shipped_points_are_used(monkeypatch, tmp_path):
    monkeypatch.setattr(profiles, "DEFAULT_DIR", tmp_path / "absent")
    pts = profiles.load_points("h100")
    assert len(pts.y) > 500 and pts.hardware == "h100" and (pts.y > 0).all()
