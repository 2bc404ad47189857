"""tests/fuzz/batch.py, the fixed batch of generated programs that the lent-GPU run replays:
drawn cases survive the file round trip and replay on the reference and the emulator."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import batch  # noqa: E402
import gen  # noqa: E402


def test_drawn_cases_round_trip_and_replay(tmp_path, capsys):
    path = tmp_path / "batch.jsonl"
    batch.draw(4, path)
    cases = batch.read(path)
    assert len(cases) == 4 and len({c.source for c in cases}) == 4
    again = batch.read(path)
    assert [c.to_json() for c in again] == [c.to_json() for c in cases]
    assert batch.run(path, ["emulator"], limit=2, compile_only=False) == 0
    assert "2 cases on emulator: 0 with problems" in capsys.readouterr().out


def test_shards_split_the_batch(tmp_path, capsys):
    path = tmp_path / "batch.jsonl"
    batch.draw(3, path)
    for index in range(2):
        batch.run(path, ["emulator"], None, True, (index, 2))
    out = capsys.readouterr().out
    assert "2 cases on emulator" in out and "1 cases on emulator" in out


def test_available_targets_need_the_compiler_for_cpu(monkeypatch):
    monkeypatch.setattr(gen.importlib.util, "find_spec", lambda name: None)
    assert "cpu" not in gen.available_targets()
