"""Manifests: the released files load and round-trip; every malformed input fails with a precise message."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bindweave.io.manifest import (
    ManifestEntry,
    ManifestError,
    entry_to_dict,
    load_manifest,
    resolve_hidden_states,
    resolve_images,
    save_manifest,
    with_fields,
)

RELEASED = ["test_case.json", "test_case_with_features.json", "Open-Domain_Eval.json"]
GOOD_ENTRY: dict[str, Any] = {
    "img_paths": ["Images/human.jpg"],
    "prompt": "a man waves",
    "synthesis_flag": "True",
    "class_label": ["Man"],
}


def _write(tmp_path: Path, data: Any, name: str = "m.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _entry(**overrides: Any) -> ManifestEntry:
    fields: dict[str, Any] = {"id": "case_1", "img_paths": ("a.jpg",), "prompt": "p"}
    fields.update(overrides)
    return ManifestEntry(**fields)


# --- the released manifests -------------------------------------------------------------------------


@pytest.mark.parametrize("name", RELEASED)
def test_released_manifest_round_trip(fixtures_dir: Path, tmp_path: Path, name: str) -> None:
    source = fixtures_dir / name
    entries = load_manifest(source)
    raw = json.loads(source.read_text(encoding="utf-8"))
    assert list(entries) == list(raw)  # file order kept
    assert all(entry.id == key for key, entry in entries.items())

    copy = save_manifest(entries, tmp_path / name)
    assert load_manifest(copy) == entries
    reloaded_raw = json.loads(copy.read_text(encoding="utf-8"))
    assert reloaded_raw == raw
    assert [list(v) for v in reloaded_raw.values()] == [list(v) for v in raw.values()]  # key order


def test_test_case_contents(fixtures_dir: Path) -> None:
    entries = load_manifest(fixtures_dir / "test_case.json")
    assert list(entries) == ["faceobj_1", "singleface_1", "multihuman_14"]
    faceobj = entries["faceobj_1"]
    assert faceobj.img_paths == ("Images/human.jpg", "Images/dog.jpg", "Images/school.jpg")
    assert faceobj.prompt == "a man playing with his dog in front of the house"
    assert faceobj.class_label == ("Man", "Dog", "School")
    assert faceobj.synthesis_flag == "Wrong"
    assert faceobj.hidden_states_path is None and dict(faceobj.extra) == {}


def test_open_domain_has_180_cases(fixtures_dir: Path) -> None:
    entries = load_manifest(fixtures_dir / "Open-Domain_Eval.json")
    assert len(entries) == 180
    assert all(1 <= len(e.img_paths) <= 4 for e in entries.values())


def test_with_features_hidden_states(fixtures_dir: Path) -> None:
    manifest = fixtures_dir / "test_case_with_features.json"
    entry = load_manifest(manifest)["singleface_1"]
    positive, negative = resolve_hidden_states(entry, manifest.parent)
    assert positive == manifest.parent / "s2v/OpenS2V-Eval/hidden_states/singleface_1_hidden_states.pt"
    assert (
        negative == manifest.parent / "s2v/OpenS2V-Eval/hidden_states/singleface_1_hidden_states_negative.pt"
    )


def test_resolve_images_fixture(fixtures_dir: Path) -> None:
    entry = load_manifest(fixtures_dir / "test_case.json")["faceobj_1"]
    paths = resolve_images(entry, fixtures_dir)
    assert paths == [fixtures_dir / "Images" / n for n in ("human.jpg", "dog.jpg", "school.jpg")]
    assert all(p.is_file() for p in paths)


# --- resolving ------------------------------------------------------------------------------------------


def test_resolve_images_reports_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "here.jpg").write_bytes(b"")
    entry = _entry(img_paths=("here.jpg", "gone1.jpg", "sub/gone2.png"))
    with pytest.raises(FileNotFoundError, match="'case_1'") as info:
        resolve_images(entry, tmp_path)
    message = str(info.value)
    assert "gone1.jpg" in message and "gone2.png" in message and "here.jpg" not in message


def test_resolve_hidden_states_absent_and_absolute(tmp_path: Path) -> None:
    assert resolve_hidden_states(_entry(), tmp_path) == (None, None)
    absolute = tmp_path / "elsewhere" / "h.pt"
    entry = _entry(hidden_states_path=str(absolute), hidden_states_path_negative="rel/n.pt")
    assert resolve_hidden_states(entry, tmp_path / "base") == (absolute, tmp_path / "base" / "rel/n.pt")


# --- entries and copies ------------------------------------------------------------------------------


def test_entry_is_immutable_and_hashable() -> None:
    entry = _entry(img_paths=["a.jpg", "b.jpg"], class_label=["A", "B"], extra={"k": 1})
    assert entry.img_paths == ("a.jpg", "b.jpg") and entry.class_label == ("A", "B")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.prompt = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.extra["k"] = 2  # type: ignore[index]
    assert hash(entry) == hash(_entry(img_paths=["a.jpg", "b.jpg"], class_label=["A", "B"], extra={"k": 1}))


def test_entry_rejects_string_as_paths_and_known_keys_in_extra() -> None:
    with pytest.raises(TypeError, match="img_paths"):
        _entry(img_paths="a.jpg")
    with pytest.raises(ValueError, match="prompt"):
        _entry(extra={"prompt": "x"})


def test_with_fields_known_and_extra() -> None:
    entry = _entry(extra={"first": 1})
    refined = with_fields(entry, prompt="refined", prompt_original=entry.prompt, hidden_states_path="h.pt")
    assert refined.prompt == "refined" and refined.hidden_states_path == "h.pt"
    assert list(refined.extra.items()) == [("first", 1), ("prompt_original", "p")]
    assert entry.prompt == "p" and dict(entry.extra) == {"first": 1}  # original untouched
    assert with_fields(refined, hidden_states_path=None).hidden_states_path is None
    assert with_fields(entry, id="case_2", img_paths=("x.jpg",)).id == "case_2"
    assert dict(with_fields(entry, extra={"other": 2}).extra) == {"other": 2}


def test_with_fields_validates() -> None:
    with pytest.raises(ManifestError, match="'prompt' is empty"):
        with_fields(_entry(), prompt="  ")
    with pytest.raises(ManifestError, match="img_paths"):
        with_fields(_entry(), img_paths=[])


def test_extra_fields_round_trip_in_order(tmp_path: Path) -> None:
    raw = {"c1": {**GOOD_ENTRY, "zeta": {"nested": [1, 2]}, "alpha": None, "prompt_original": "’orig"}}
    entries = load_manifest(_write(tmp_path, raw))
    assert list(entries["c1"].extra) == ["zeta", "alpha", "prompt_original"]
    out = save_manifest(entries, tmp_path / "out" / "copy.json")
    assert json.loads(out.read_text(encoding="utf-8")) == raw
    assert list(json.loads(out.read_text(encoding="utf-8"))["c1"]) == list(raw["c1"])


def test_entry_to_dict_omits_unset_optionals() -> None:
    assert entry_to_dict(_entry()) == {"img_paths": ["a.jpg"], "prompt": "p"}


def test_save_manifest_from_iterable_and_checks_ids(tmp_path: Path) -> None:
    first, second = _entry(), _entry(id="case_2")
    path = save_manifest([first, second], tmp_path / "m.json")
    assert list(load_manifest(path)) == ["case_1", "case_2"]
    assert path.read_text(encoding="utf-8").startswith('{\n    "case_1": {\n        "img_paths"')
    with pytest.raises(ValueError, match="does not match"):
        save_manifest({"other": first}, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="duplicate"):
        save_manifest([first, first], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


# --- malformed manifests ------------------------------------------------------------------------------


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_manifest(tmp_path / "nope.json")


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "c1": {\n    "prompt": "x",,\n  }\n}')
    with pytest.raises(ManifestError, match=rf"{re.escape(str(path))}: invalid JSON at line 3 column 19"):
        load_manifest(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"c1": {"prompt": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(ManifestError, match="UTF-8"):
        load_manifest(path)


def test_duplicate_case_id(tmp_path: Path) -> None:
    entry = json.dumps(GOOD_ENTRY)
    path = _write(tmp_path, f'{{"c1": {entry}, "c1": {entry}}}')
    with pytest.raises(ManifestError, match="duplicate key 'c1'"):
        load_manifest(path)


@pytest.mark.parametrize("data", [[GOOD_ENTRY], "just text", 3])
def test_top_level_not_an_object(tmp_path: Path, data: Any) -> None:
    path = _write(tmp_path, json.dumps(data))
    with pytest.raises(ManifestError, match=r"m\.json: expected a JSON object mapping case id"):
        load_manifest(path)


def test_empty_manifest_is_allowed(tmp_path: Path) -> None:
    assert load_manifest(_write(tmp_path, {})) == {}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD_ENTRY.items() if k != key}


@pytest.mark.parametrize(
    ("case_id", "entry", "expected"),
    [
        ("c1", ["not", "a", "dict"], "expected a JSON object"),
        ("c1", _without("prompt"), "missing required field 'prompt'"),
        ("c1", {**GOOD_ENTRY, "prompt": ""}, "field 'prompt' is empty"),
        ("c1", {**GOOD_ENTRY, "prompt": "   "}, "field 'prompt' is empty"),
        ("c1", {**GOOD_ENTRY, "prompt": 5}, "field 'prompt' must be a string, got int"),
        ("c1", {**GOOD_ENTRY, "prompt": None}, "field 'prompt' must be a string, got NoneType"),
        ("c1", _without("img_paths"), "missing required field 'img_paths'"),
        ("c1", {**GOOD_ENTRY, "img_paths": []}, "field 'img_paths' must be a non-empty list"),
        (
            "c1",
            {**GOOD_ENTRY, "img_paths": "Images/a.jpg"},
            "field 'img_paths' must be a list of strings, got str",
        ),
        (
            "c1",
            {**GOOD_ENTRY, "img_paths": ["a.jpg", 3]},
            r"field 'img_paths'\[1\] must be a non-empty string",
        ),
        ("c1", {**GOOD_ENTRY, "img_paths": [""]}, r"field 'img_paths'\[0\] must be a non-empty string"),
        ("c1", {**GOOD_ENTRY, "class_label": "Man"}, "field 'class_label' must be a list of strings"),
        ("c1", {**GOOD_ENTRY, "class_label": [None]}, r"field 'class_label'\[0\]"),
        (
            "c1",
            {**GOOD_ENTRY, "synthesis_flag": True},
            "field 'synthesis_flag' must be a non-empty string or null",
        ),
        (
            "c1",
            {**GOOD_ENTRY, "hidden_states_path": 7},
            "field 'hidden_states_path' must be a non-empty string",
        ),
        ("c1", {**GOOD_ENTRY, "hidden_states_path_negative": ""}, "'hidden_states_path_negative' must be"),
        ("", GOOD_ENTRY, "case id must be a non-empty string"),
        ("../escape", GOOD_ENTRY, "usable as a file name"),
        ("sub/case", GOOD_ENTRY, "usable as a file name"),
    ],
)
def test_invalid_entries_name_file_id_and_field(
    tmp_path: Path, case_id: str, entry: Any, expected: str
) -> None:
    path = _write(tmp_path, {"ok_1": GOOD_ENTRY, case_id: entry})
    with pytest.raises(ManifestError, match=expected) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: entry {case_id!r}"), message
    assert isinstance(info.value, ValueError)


def test_optional_fields_may_be_absent_or_null(tmp_path: Path) -> None:
    raw = {"c1": {"img_paths": ["a.jpg"], "prompt": "p", "synthesis_flag": None}}
    entry = load_manifest(_write(tmp_path, raw))["c1"]
    assert entry.class_label == () and entry.synthesis_flag is None and entry.hidden_states_path is None
