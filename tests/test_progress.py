"""engine.progress: a stage's console output followed as it grows (log lines, a redrawn progress bar)."""
from engine.progress import LogFollower


def test_log_lines_starts_and_bars_are_followed_as_the_file_grows(tmp_path):
    log = tmp_path / "launch.log"
    log.write_text("an earlier launch's lines are not shown\n")
    follow = LogFollower(log, every=3600)
    bar = "supernet:  {p}%|##        | {n}/40 [00:{n:02d}<01:08,  1.95s/it, loss=1.{n:02d}]"
    chunks = ["\n== 2026-12-05 00:19:37 /venv/bin/python /repo/train.py exp.yaml --set seed=0 --resume\n",
              "00:19:43 supernet: output /o/supernet, device cpu\n",
              "\r" + bar.format(p=0, n=0), "\r" + bar.format(p=2, n=1) + "\r" + bar.format(p=5, n=2)[:30],
              bar.format(p=5, n=2)[30:] + "\r" + bar.format(p=7, n=3) + "00:20:01 epoch 3: val 50.0\n",
              "\r" + bar.format(p=100, n=40) + "\n", "error: something failed; fix it\n", "Traceback (most recent"]
    seen = []
    for chunk in chunks:
        with open(log, "a", encoding="utf-8") as f:
            f.write(chunk)
        seen.append(follow.poll())
    assert seen == [
        ["resumes train.py"],
        ["supernet: output /o/supernet, device cpu"],
        ["supernet 0/40 [00:00<01:08, 1.95s/it, loss=1.00]"],
        [],  # every hour at most: the bar's next states wait
        ["epoch 3: val 50.0"],
        ["supernet 40/40 [00:40<01:08, 1.95s/it, loss=1.40]"],  # its end is always shown
        ["error: something failed; fix it"],
        [],
    ]


def test_a_multibyte_character_split_between_reads_is_kept_whole(tmp_path):
    log = tmp_path / "launch.log"
    follow = LogFollower(log)
    data = "12:00:00 note: ±3 points\n".encode()
    cut = data.index("±".encode()) + 1
    log.write_bytes(data[:cut])
    assert follow.poll() == []
    with open(log, "ab") as f:
        f.write(data[cut:])
    assert follow.poll() == ["note: ±3 points"]
