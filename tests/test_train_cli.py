"""`qwen2audio train` from the command line."""



def test_command_line_trains(tiny, tmp_path, capsys):
    from qwen2audio.cli import main

    (tmp_path / "r.yaml").write_text(f"model:\n  path: {tiny / 'ckpt'}\n  lm: full\n  precision: 32-true\n"
                                     f"data:\n  train: [{tiny / 'task.jsonl'}]\n  num_workers: 0\n"
                                     "train:\n  max_steps: 2\nlogging:\n  progress: false\n"
                                     "checkpoint:\n  save_final: false\n")
    assert main(["train", "--stage", "pretrain", "--config", str(tmp_path / "r.yaml"), f"out_dir={tmp_path / 'o'}",
                 "optim.lr=1e-2"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert main(["train", "--stage", "pretrain", "--config", str(tmp_path / "r.yaml"), "optim.nope=1"]) == 1
    assert "unknown key(s) nope" in capsys.readouterr().err
