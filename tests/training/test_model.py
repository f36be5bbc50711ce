"""The training model's bookkeeping: the DiT sequence length that tokens/s is counted in."""

from __future__ import annotations

from bindweave.toy.model import build_toy_pipeline, toy_vae
from bindweave.training.config import DataConfig
from bindweave.training.model import dit_tokens_per_clip


def test_tokens_per_clip_follow_the_vaes_compression_in_time_and_space():
    """Counted by hand: (4 slots + latent frames) x (64 px / spatial / 4-latent patches)^2."""
    data = DataConfig(height=64, width=64, num_frames=17)
    no_time = build_toy_pipeline(toy_vae(spatial_compression=2, temporal_compression=1, latent_channels=4))
    assert dit_tokens_per_clip(no_time, data) == (4 + 17) * 8 * 8
    two_x = build_toy_pipeline(toy_vae(spatial_compression=2, temporal_compression=2, latent_channels=4))
    assert dit_tokens_per_clip(two_x, data) == (4 + 9) * 8 * 8
