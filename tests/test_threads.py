"""Threads that follow the free cores: the decision rule on injected readings, /proc/stat."""

import pytest
import torch

from gpner.threads import CoreShare, parse_threads, read_cpu_seconds


class _Machine:
    """A fake clock and CPU counters: ``run(seconds, others, own)`` advances them."""

    def __init__(self):
        self.now = self.own = self.busy = 0.0

    def run(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.own += own * seconds
        self.busy += (others + own) * seconds

    def share(self, **kwargs) -> CoreShare:
        return CoreShare(
            clock=lambda: self.now,
            own_seconds=lambda: self.own,
            cpu_seconds=lambda: self.busy,
            **kwargs,
        )


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("others", "expected"),
    [(0.0, 2), (0.25, 2), (0.4, 1), (1.0, 1), (1.9, 1), (2.0, 1)],
)
def test_threads_are_the_cores_others_leave_free(others, expected):
    m = _Machine()
    cores = m.share(limit=2, interval=5.0)
    cores._last = cores._reading()
    m.run(1.0, others=others, own=0.0)
    assert cores.poll(force=True) == expected == torch.get_num_threads()
    assert cores.others == pytest.approx(others)


def test_own_work_does_not_count_and_decisions_wait_for_the_interval():
    m = _Machine()
    cores = m.share(limit=4, interval=5.0)
    cores._last = cores._reading()
    m.run(6.0, others=0.0, own=4.0)  # busy with its own 4 threads only: keeps them
    assert cores.poll() == 4
    m.run(2.0, others=2.0, own=2.0)  # another process starts: not re-decided yet
    assert cores.poll() == 4
    m.run(3.0, others=2.0, own=2.0)
    assert cores.poll() == 2  # 5 s later: 2 cores taken by the other process
    m.run(6.0, others=0.0, own=2.0)  # it ended: all 4 again
    assert cores.poll() == 4


def test_fixed_and_unreadable():
    m = _Machine()
    fixed = m.share(fixed=1, limit=2)
    assert fixed.start() == 1 == torch.get_num_threads()
    m.run(10.0, others=0.0, own=1.0)
    assert fixed.poll(force=True) == 1
    blind = CoreShare(limit=2, cpu_seconds=lambda: None)
    assert blind.start(sample=0.0) == 2 and blind.poll(force=True) == 2


def test_read_cpu_seconds_sums_busy_states_of_allowed_cores(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  30 0 30 1000 10 0 0 0 0 0\n"
        "cpu0 10 0 10 500 5 0 0 0 0 0\n"
        "cpu1 20 5 20 500 5 1 1 1 0 0\n"
        "intr 12345\n"
    )
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr("os.sysconf", lambda name: 100)
    assert read_cpu_seconds(stat) == pytest.approx((20 + 48) / 100)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {1})
    assert read_cpu_seconds(stat) == pytest.approx(48 / 100)
    assert read_cpu_seconds(tmp_path / "missing") is None


def test_parse_threads():
    assert parse_threads("auto") is None and parse_threads("3") == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="auto"):
            parse_threads(bad)


def test_cores_in_use_is_scoped_and_polled_by_inference(monkeypatch):
    from gpner import threads

    polled = []
    monkeypatch.setattr(CoreShare, "poll", lambda self, force=False: polled.append(self))
    before = torch.get_num_threads()
    threads.poll()  # outside a block: nothing
    assert polled == []
    with threads.cores_in_use(fixed=1) as share:
        assert torch.get_num_threads() == 1
        threads.poll()
        assert polled == [share]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("command", [["train"], ["evaluate", "m", "d"], ["predict", "m"]])
def test_every_computing_command_takes_threads(command, capsys):
    from gpner.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([*command]).threads is None  # auto
    assert parser.parse_args([*command, "--threads", "auto"]).threads is None
    assert parser.parse_args([*command, "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--threads", "0"])
    assert "positive whole number" in capsys.readouterr().err
