"""The distillation benchmark (benchmarks/distill): the grid's cells and their dependencies, a
tiny grid trained end to end through the shared cell runner, and the report from its JSONs.
Synthetic data only; seconds."""

from benchmarks.distill import report, run
from tests.conftest import tiny_config_toml

G = run.G


def test_the_grid_searches_on_a_split_of_train_and_blocks_on_the_teacher(tmp_path):
    entries = G.plan(G.KINDS, tmp_path)
    ids = [e.cell.id for e in entries]
    assert len(ids) == len(set(ids)) and ids[0] == "teacher/s1"
    by_id = {e.cell.id: e for e in entries}
    # without a teacher only the teacher and the from-scratch students can run
    runnable = {e.cell.id for e in entries if e.status != "blocked"}
    assert runnable == {"teacher/s1", "search/scratch/s1"} | {
        f"final/scratch/s{k}" for k in (1, 2, 3)
    }
    search = by_id["search/scratch/s1"].config
    assert search.data.validation_fraction == 0.1 and search.distill.teacher is None
    assert by_id["teacher/s1"].config.encoder.path == "m3e-small"
    seeds = {by_id[f"final/scratch/s{k}"].config.train.seed for k in (1, 2, 3)}
    assert seeds == {42, 43, 44}
    text = report.report(entries, None)
    assert "pending" in text and "Pending: `python3 -m benchmarks.distill.predict_speed`" in text


def _tiny_configs(tmp_path, tiny_data):
    teacher, student = tmp_path / "teacher.toml", tmp_path / "student.toml"
    encoder = ["[encoder]", "hidden_size = 16", "num_layers = 1", "num_heads = 2", "ffn_size = 32"]
    teacher.write_text(tiny_config_toml(*tiny_data, encoder), encoding="utf-8")
    student_encoder = encoder[:-2] + ['kind = "bilstm"']
    student.write_text(tiny_config_toml(*tiny_data, student_encoder), encoding="utf-8")
    return str(teacher), str(student)


def test_a_tiny_grid_trains_once_and_the_report_shows_it(tmp_path, tiny_data, monkeypatch):
    teacher, student = _tiny_configs(tmp_path, tiny_data)
    models = tmp_path / "models"
    monkeypatch.setattr(G, "TEACHER_CONFIG", teacher)
    monkeypatch.setattr(G, "STUDENT_CONFIG", student)
    monkeypatch.setattr(G, "MODELS", models)
    monkeypatch.setattr(G, "TEACHER_DIR", models / "teacher")
    monkeypatch.setattr(G, "CACHE_DIR", models / "teacher_logits")
    monkeypatch.setattr(G, "BETAS", {"gp_kl": (0.1, 0.5), "softmax_kl": (0.1,), "mse": (0.01,)})
    monkeypatch.setattr(G, "TEMPERATURES", {"gp_kl": (2.0,)})
    monkeypatch.setattr(G, "SEEDS", 2)
    results = tmp_path / "results"
    first = run.run_grid(G.DEFAULT_KINDS, results, threads=1)
    assert not first["failed"] and first["left"] == []
    assert len(first["ran"]) == 1 + 6 + 2 * 4  # teacher, search (scratch, 4 betas, 1 T), finals
    assert run.run_grid(G.DEFAULT_KINDS, results, threads=1)["ran"] == []  # all done: skipped
    entries = G.plan(G.DEFAULT_KINDS, results)
    done = {e.cell.id: e.result for e in entries}
    beta, temperature = G.best_setting("gp_kl", done)
    final = done["final/gp_kl/s2"]
    assert (final["beta"], final["temperature"]) == (beta, temperature)
    assert final["config"]["train"]["seed"] == 43 and final["validation"]["split"] == "CLUENER dev"
    assert done["search/gp_kl/t2/s1"]["validation"]["split"] == "10 % of train"
    assert final["command"].startswith(f"gpner distill {G.rel(G.TEACHER_DIR)} {student}")
    assert (models / "teacher" / "gpner.json").is_file()
    assert (models / "final__gp_kl__s1" / "gpner.json").is_file()
    # two teacher caches: the 90 % split of the search and the full training set
    sizes = {m["examples"] for m in final["teacher_caches"]}
    assert sizes == {48, 48 - round(48 * 0.1)}
    text = report.report(entries, None)
    assert "Cells not finished yet" not in text and "waiting" not in text
    assert f"{100 * final['validation']['f1']:.2f}" in text
    assert "- Goal: the gp_kl student's mean dev F1 >= 75.0: it misses it" in text
    assert "The gp_kl row's command (seed 1): `gpner distill" in text
