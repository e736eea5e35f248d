import pytest

from stt.cli import main


def test_evaluate_identity_prints_the_table(tiny_synthetic, tmp_path, capsys):
    assert main(["evaluate", "davis", "--data", str(tiny_synthetic), "--model", "identity", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "J&F-Mean" in out and "global_results-val.csv" in out


def test_missing_data_is_a_clean_error(tmp_path, capsys):
    code = main(["evaluate", "davis", "--data", str(tmp_path / "none"), "--model", "lab", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no DAVIS dataset under" in capsys.readouterr().err


def test_propagation_flags_reach_the_settings(tiny_synthetic, tmp_path):
    import json

    out = tmp_path / "o"
    main(["evaluate", "davis", "--data", str(tiny_synthetic), "--model", "lab", "--out", str(out), "--topk", "3",
          "--radius", "4", "--window", "circle", "--no-radius-first-frame", "--first-label", "bilinear", "--no-minmax",
          "--temperature", "0.05", "--context", "2"])
    p = json.loads((out / "settings.json").read_text())["propagation"]
    assert p == {"topk": 3, "radius": 4.0, "window": "circle", "radius_first_frame": False,
                 "first_label": "bilinear", "minmax": False, "temperature": 0.05, "context": 2}


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "davis"])
    assert e.value.code == 2
