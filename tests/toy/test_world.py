"""The toy world: seeded scenes, sprites and masks, clips that follow the scene, a valid training manifest."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from bindweave.io.video import read_video
from bindweave.toy.dataset import read_scenes, toy_scene, write_scenes, write_toy_dataset
from bindweave.toy.sprites import PATTERNS, SHAPES, Sprite, draw_sprite, random_sprite, reference_image
from bindweave.toy.world import (
    BACKGROUNDS,
    DIRECTIONS,
    FRAME_SIZE,
    NUM_FRAMES,
    SPEED,
    Scene,
    render_clip,
    render_subject_mask,
    trajectory,
)
from bindweave.training.manifest import read_clip_manifest


def test_scenes_are_deterministic_and_splits_independent():
    a, b = toy_scene(0, "train", 7), toy_scene(0, "train", 7)
    assert a == b
    assert np.array_equal(render_clip(a), render_clip(b))
    assert toy_scene(0, "heldout", 7) != a
    assert toy_scene(1, "train", 7) != a
    with pytest.raises(ValueError, match="unknown split"):
        toy_scene(0, "validation", 0)


def test_scene_round_trips_through_json():
    scene = toy_scene(0, "train", 3)
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_sprite_pixels_follow_the_mask(shape, pattern):
    sprite = Sprite(shape, pattern, body=(200, 30, 40), accent=(20, 220, 240), size=18)
    rgb, mask = draw_sprite(sprite)
    assert rgb.shape == (18, 18, 3) and mask.shape == (18, 18) and mask.dtype == bool
    assert 0.2 < mask.mean() < 1.0 or shape == "square"
    assert (rgb[~mask] == 0).all()
    colours = {tuple(c) for c in rgb[mask]}
    assert colours <= {(200, 30, 40), (20, 220, 240)}
    assert ((20, 220, 240) in colours) == (pattern != "solid")


def test_reference_image_is_the_sprite_on_white_with_its_mask():
    sprite = random_sprite(np.random.default_rng(5))
    image, mask_image = reference_image(sprite)
    rgb, mask = draw_sprite(sprite)
    pixels, mask_pixels = np.asarray(image), np.asarray(mask_image)
    assert image.size == mask_image.size == (sprite.size, sprite.size)
    assert np.array_equal(mask_pixels > 127, mask)
    assert np.array_equal(pixels[mask], rgb[mask])
    assert (pixels[~mask] == 255).all()


def test_prompt_names_background_and_every_subject_in_order():
    for index in range(40):
        scene = toy_scene(0, "train", index)
        assert 1 <= len(scene.subjects) <= 4
        assert scene.prompt.startswith(f"On a {scene.background} background, ")
        ordinals = ["first", "second", "third", "fourth"]
        for k in range(1, len(scene.subjects)):
            assert f"the {ordinals[k]} " in scene.prompt or f"image {k + 1}" in scene.prompt
        cells = [s.cell for s in scene.subjects]
        assert len(set(cells)) == len(cells)


def test_clip_draws_each_subject_on_its_trajectory():
    scene = toy_scene(0, "train", 11)
    clip = render_clip(scene)
    assert clip.shape == (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3) and clip.dtype == np.uint8
    last = scene.subjects[-1]  # drawn on top: fully visible
    rgb, mask = draw_sprite(last.sprite)
    path = trajectory(last)
    for frame, (y, x) in zip(clip, path, strict=True):
        size = last.sprite.size
        window = frame[y : y + size, x : x + size]
        assert np.array_equal(window[mask], rgb[mask])
    step = np.array(DIRECTIONS[last.direction]) * SPEED
    assert np.array_equal(path[-1] - path[0], np.rint(step * (NUM_FRAMES - 1)).astype(int))
    # Everything else is the background.
    covered = np.zeros(clip.shape[:3], bool)
    for subject in scene.subjects:
        _, m = draw_sprite(subject.sprite)
        for f, (y, x) in enumerate(trajectory(subject)):
            covered[f, y : y + m.shape[0], x : x + m.shape[1]] |= m
    assert (clip[~covered] == np.array(BACKGROUNDS[scene.background])).all()


def test_every_motion_stays_inside_the_frame():
    for index in range(200):
        for subject in toy_scene(0, "train", index).subjects:
            path = trajectory(subject)
            assert path.min() >= 0 and path.max() + subject.sprite.size <= FRAME_SIZE


def test_dataset_is_a_valid_training_manifest_and_resumes(tmp_path):
    manifest_path = write_toy_dataset(tmp_path, 6, split="heldout", seed=3)
    manifest = read_clip_manifest(manifest_path)
    scenes = read_scenes(tmp_path / "scenes.jsonl")
    assert len(manifest) == len(scenes) == 6
    for i, (clip, scene) in enumerate(zip(manifest.clips, scenes, strict=True)):
        assert scene == toy_scene(3, "heldout", i)
        assert clip.prompt == scene.prompt
        assert len(clip.references) == len(scene.subjects)
        for ref, subject in zip(clip.references, scene.subjects, strict=True):
            _, mask = draw_sprite(subject.sprite)
            assert np.array_equal(np.asarray(PIL.Image.open(ref.mask)) > 127, mask)
        frames, fps = read_video(clip.video)
        assert frames.shape == (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3) and fps == 16
        # Highest-quality H.264: close to the rendered clip (chroma is subsampled).
        assert np.abs(frames.astype(int) - render_clip(scene).astype(int)).mean() < 8
        mask_frames, _ = read_video(clip.subject_mask)  # white on the subjects, exactly after the codec
        assert np.array_equal(mask_frames.mean(axis=-1) > 127, render_subject_mask(scene))

    first_video = manifest.clips[0].video
    stamp = first_video.stat().st_mtime_ns
    write_toy_dataset(tmp_path, 6, split="heldout", seed=3)  # a rerun keeps finished samples
    assert first_video.stat().st_mtime_ns == stamp


def test_the_subject_mask_is_where_the_clip_differs_from_its_background():
    checked = 0
    for index in range(20):
        scene = toy_scene(0, "train", index)
        clip, mask = render_clip(scene), render_subject_mask(scene)
        off_background = (clip != np.array(scene.background_rgb, np.uint8)).any(axis=-1)
        sprite_colours = {tuple(c) for s in scene.subjects for c in draw_sprite(s.sprite)[0].reshape(-1, 3)}
        if tuple(scene.background_rgb) in sprite_colours:
            continue  # a sprite pixel of the background's colour would hide in the clip
        assert np.array_equal(mask, off_background) and mask.shape == (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE)
        checked += 1
    assert checked >= 10


def test_write_scenes_writes_the_given_scenes_in_order(tmp_path):
    scenes = [toy_scene(5, "train", i) for i in (7, 2)]
    manifest = read_clip_manifest(write_scenes(tmp_path, iter(scenes)))
    assert read_scenes(tmp_path / "scenes.jsonl") == scenes
    assert [clip.prompt for clip in manifest.clips] == [scene.prompt for scene in scenes]
    frames, _ = read_video(manifest.clips[1].video)
    assert np.abs(frames.astype(int) - render_clip(scenes[1]).astype(int)).mean() < 8
    with pytest.raises(ValueError, match="no scenes"):
        write_scenes(tmp_path / "empty", iter(()))
