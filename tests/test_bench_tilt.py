"""benchmarks/tilt.py: the turns it applies to a scan and its labels."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.tilt import main, parse_turns, table, tilt


def test_turns_are_parsed_and_bad_ones_refused():
    turns = parse_turns("pitch:10,roll:-20,yaw:0")
    assert turns == [("pitch", 10.0), ("roll", -20.0), ("yaw", 0.0)]
    for bad in ("tilt:10", "pitch:ten", "pitch"):
        with pytest.raises(ValueError, match="pitch\\|roll\\|yaw"):
            parse_turns(bad)


def test_no_turn_is_identity_and_a_pitch_takes_the_front_up():
    labels = np.zeros((21, 21, 21), np.int32)
    labels[10, 16, 10] = 7  # in front of the centre (RAS: +y)
    labels[4, 10, 10] = 3  # left of it
    np.testing.assert_array_equal(tilt(labels, "pitch", 0, 0), labels)
    up = tilt(labels, "pitch", 90, 0)  # about left-right, right-hand rule: front -> top
    assert set(np.unique(up)) == {0, 3, 7}
    assert up[10, 10, 16] == 7 and up[4, 10, 10] == 3  # left stays left
    assert tilt(labels, "yaw", 90, 0)[4, 10, 10] == 7  # a yaw of 90 degrees: the front to the left


def test_missing_data_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--output", str(tmp_path / "o"), "--scan", str(tmp_path / "none.nii.gz")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


def test_the_table_gives_both_settings_and_the_pose_read():
    tissue = {"GM": 0.8712, "WM": 0.93, "CSF": 0.9}
    row = {"turn": "roll+30",
           "pose": {"dice": 0.8349, "seconds": 64.0, "tissue": tissue,
                    "pose": {"degrees": 27.2, "segmented_upright": True}},
           "no pose": {"dice": 0.7198, "seconds": 28.0, "pose": None}}
    unread = row | {"turn": "pitch+0", "pose": row["pose"] | {"pose": None}}
    fast = {"dice": None, "seconds": 9.0, "pose": None, "tissue": tissue}  # a tissue network
    lines = table([row, unread, {"turn": "yaw+30", "pose": fast, "no pose": fast}])
    assert lines[2] == ("| roll+30 | 27.2 (upright) | 0.835 | 0.720 | 0.871 / 0.930 / 0.900 "
                        "|  | 64 / 28 |")
    assert lines[3].startswith("| pitch+0 | none |") and len(lines) == 5
    assert lines[4] == ("| yaw+30 | none |  |  | 0.871 / 0.930 / 0.900 | 0.871 / 0.930 / 0.900 "
                        "| 9 / 9 |")


def test_the_figure_colours_labels_and_refuses_missing_outputs(tmp_path, capsys):
    from benchmarks.tilt_figure import colour
    from benchmarks.tilt_figure import main as figure

    rgba = colour(np.array([[0, 17], [18, 0]]))
    assert rgba.shape == (2, 2, 4) and rgba[0, 0, 3] == 0 and rgba[0, 1, 3] > 0
    assert not np.allclose(rgba[0, 1], rgba[1, 0])  # hippocampus and amygdala: FreeSurfer's colours
    with pytest.raises(SystemExit) as e:
        figure(["--tilt-output", str(tmp_path), "--output", str(tmp_path / "f.png")])
    assert e.value.code == 2 and "benchmarks/tilt.py" in capsys.readouterr().err
