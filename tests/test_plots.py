"""Report plots and report.html: what is drawn (inspected on the figure), and that the page
embeds every picture and needs nothing outside itself."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from bench.report import plots
from bench.report.html import markdown_to_html
from tests.conftest import make_neu_flat

MODELS = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5")
CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def _png(path):
    with Image.open(path) as im:
        im.load()  # decodes every pixel, not only the header
        return im.format, im.size


def _history(epochs, offset):
    return [
        {"epoch": str(e), "train_loss": str(2 - 0.3 * e + offset), "val_loss": str(1.9 - 0.2 * e),
         "val_accuracy": str(min(1.0, 0.2 * e + offset))}
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def test_training_curves_have_one_line_per_model_and_seed_in_each_panel(tmp_path):
    histories = {(m, s): _history(4, 0.1 * s) for m in MODELS for s in (0, 1)}
    fig = plots.plot_training_curves(histories, tmp_path / "curves.png")
    assert _png(tmp_path / "curves.png") == ("PNG", (13 * plots.DPI, int(4.4 * plots.DPI)))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["train loss", "validation loss", "validation accuracy (%)"]
    expected = {f"{m} seed {s}" for m in MODELS for s in (0, 1)}
    for ax in fig.axes:
        assert {line.get_label() for line in ax.get_lines()} == expected
        assert len(ax.get_lines()) == len(expected)
    # Accuracy is drawn in %; a model keeps its colour across seeds, seeds differ in style.
    acc = {line.get_label(): line for line in fig.axes[2].get_lines()}
    assert list(acc["resnet18 seed 1"].get_ydata()) == pytest.approx([30, 50, 70, 90])
    assert acc["resnet18 seed 0"].get_color() == acc["resnet18 seed 1"].get_color()
    assert acc["resnet18 seed 0"].get_linestyle() != acc["resnet18 seed 1"].get_linestyle()
    assert len(fig.legends[0].get_texts()) == len(expected)
    assert [ax.get_yscale() for ax in fig.axes] == ["linear"] * 3

    # A diverging model must not flatten the others: its loss panel switches to log scale.
    histories[("vgg16_bn", 0)] = [h | {"val_loss": str(10.0**e)} for e, h in
                                  enumerate(_history(4, 0), 1)]  # fmt: skip
    fig = plots.plot_training_curves(histories, tmp_path / "curves.png")
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "log", "linear"]
    assert fig.axes[1].get_title() == "validation loss (log scale)"


def test_confusion_heatmap_shows_counts_and_row_shares(tmp_path):
    cm = np.diag([10, 9, 8, 10, 10, 7]).tolist()
    cm[1][2], cm[5][0] = 1, 3
    fig = plots.plot_confusion(cm, CLASSES, tmp_path / "cm.png", title="m seed 0")
    assert _png(tmp_path / "cm.png")[0] == "PNG"
    ax = fig.axes[0]
    shares = ax.images[0].get_array()
    assert shares.shape == (6, 6)
    assert shares[5, 0] == pytest.approx(0.3) and shares[0, 0] == pytest.approx(1.0)
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((0, 5), "3") in texts and ((2, 1), "1") in texts
    assert len(ax.texts) == 8  # one per non-zero cell
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES


def _speed_row(model, runtime, samples, batch=1, **extra):
    return {"model": model, "runtime": runtime, "provider": "cpu", "precision": "fp32",
            "batch_size": batch, "n": len(samples), "latency_ms_samples": samples, **extra}  # fmt: skip


def test_latency_distribution_draws_one_box_per_batch1_runtime_from_its_samples(tmp_path):
    rng = np.random.default_rng(0)
    a = (5 + rng.exponential(1, 200)).round(4).tolist()
    b = (2 + rng.exponential(0.3, 300)).round(4).tolist()
    rows = [
        _speed_row("resnet18", "torch", a),
        _speed_row("resnet18", "onnxruntime", b),
        _speed_row("resnet18", "torch", a, batch=32),  # throughput row: not a latency box
        {"model": "resnet18", "phase": "train", "train_img_s": 10.0},
        {"model": "vgg", "runtime": "torch", "error": "OOM"},
    ]
    fig = plots.plot_latency_distribution(rows, tmp_path / "lat.png")
    assert _png(tmp_path / "lat.png")[0] == "PNG"
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["resnet18 · onnxruntime/cpu (n=300)", "resnet18 · torch/cpu (n=200)"]
    medians = [line for line in ax.get_lines() if line.get_color() == "tab:red"]
    assert [m.get_xdata()[0] for m in medians] == pytest.approx([np.median(b), np.median(a)])
    with pytest.raises(ValueError, match="no batch-1 speed rows"):
        plots.plot_latency_distribution(rows[2:], tmp_path / "none.png")


def test_html_renders_the_markdown_subset_and_embeds_images(tmp_path):
    plots.plot_confusion(np.eye(6, dtype=int).tolist(), CLASSES, tmp_path / "cm.png", title="t")
    md = "\n\n".join([
        "# neu-bench run: demo",
        "> **QUICK PRESET**: a first look",
        "Data: `data/NEU-CLS` <b>not bold</b> & more",
        "| model | val acc | note |\n|---|---|---|\n| a\\|b | 96.39% | <script>x</script> |",
        "![confusion](cm.png)",
        "![remote](https://example.com/x.png)",
        "![outside](../cm.png)",
    ])  # fmt: skip
    page = markdown_to_html(md, base=tmp_path)
    assert "<title>neu-bench run: demo</title>" in page
    assert "<blockquote><strong>QUICK PRESET</strong>: a first look</blockquote>" in page
    assert "<code>data/NEU-CLS</code> &lt;b&gt;not bold&lt;/b&gt; &amp; more" in page
    assert "<th>model</th><th>val acc</th><th>note</th>" in page
    assert '<td>a|b</td><td class="num">96.39%</td><td>&lt;script&gt;x&lt;/script&gt;</td>' in page
    assert "<script" not in page
    (uri,) = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', page)
    assert base64.b64decode(uri.split(",", 1)[1]) == (tmp_path / "cm.png").read_bytes()
    # Remote and out-of-folder images are neither fetched, embedded nor linked.
    assert "example.com" not in page.replace("[image not available: https://example.com", "")
    assert page.count("image not available") == 2
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def _embedded_pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(u) for u in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    ]


def test_tiny_run_leaves_plots_embedded_in_report_md_and_html(tmp_path):
    data = make_neu_flat(tmp_path / "NEU-CLS", per_class=6, size=(40, 40))
    out = tmp_path / "run"
    from bench.__main__ import main
    from bench.report.core import write_outputs

    # --no-speed: speed needs an ONNX export per model, minutes on a shared 2-core CPU; the
    # latency plot is wired in below from speed rows added to the same results.
    argv = [
        "run", "--models", "shufflenet_v2_x0_5,mobilenet_v3_small", "--data", str(data),
        "--out", str(out), "--weights", "none", "--image-size", "32", "--epochs", "2",
        "--batch-size", "8", "--threads", "1", "--no-speed", "--export", "none",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    p = results["plots"]
    assert p["errors"] == []
    assert set(p["confusion"]) == {"shufflenet_v2_x0_5 seed 0", "mobilenet_v3_small seed 0"}
    pngs = [p["training_curves"], *p["confusion"].values()]
    # the corruption benchmark's heatmap, SNR plot and examples strip (default --robustness)
    pngs += list(results["robustness"]["plots"].values())
    # ...and the calibration plots and Grad-CAM overlays (bench.release.calibrate, bench.release.explain)
    cal = results["calibration"]["plots"]
    pngs += [*cal["reliability"].values(), cal["risk_coverage"]]
    pngs += [i["png"] for items in results["explanations"]["models"].values() for i in items]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    embedded = _embedded_pngs(page)
    for name in pngs:
        assert _png(out / name)[0] == "PNG"
        assert f"]({name})" in md  # report.md shows it...
        assert (out / name).read_bytes() in embedded  # ...and report.html carries it inside
    assert len(embedded) == len(pngs)
    for blob in embedded:
        assert Image.open(io.BytesIO(blob)).format == "PNG"
    assert not re.search(r"https?://", page)  # readable offline: nothing to fetch
    assert "mobilenet_v3_small seed 0" in page and "<table>" in page

    # With speed rows (as `bench run` measures them), the final write adds the latency plot.
    rng = np.random.default_rng(0)
    results["speed"] = [
        _speed_row(m, rt, (1 + rng.exponential(0.2, 50)).round(4).tolist(), threads=1)
        | {"latency_ms_p50": 1.2, "latency_ms_p90": 1.5, "latency_ms_p99": 2.0,
           "throughput_img_s": 800.0}
        for m in ("shufflenet_v2_x0_5", "mobilenet_v3_small") for rt in ("torch", "onnxruntime")
    ]  # fmt: skip
    write_outputs(out, results, final=True)
    latency = json.loads((out / "results.json").read_text())["plots"]["latency"]
    assert "](latency_distribution.png)" in (out / "report.md").read_text()
    assert (out / latency).read_bytes() in _embedded_pngs((out / "report.html").read_text())
    assert "latency_ms_samples" not in (out / "speed.csv").read_text().splitlines()[0]


def _cpu_variant_rows():
    """Speed rows of one model as a CPU run with --variants all makes them: two torch fp32 rows
    (contiguous and channels_last) that differ only by their variant."""
    base = {"model": "shufflenet_v2_x1_0", "provider": "cpu", "precision": "fp32", "batch_size": 1}
    return [
        {**base, "variant": "torch_fp32", "runtime": "torch", "latency_ms_p50": 24.8},
        {**base, "variant": "torch_channels_last_fp32", "runtime": "torch", "channels_last": True,
         "latency_ms_p50": 17.6},
        {**base, "variant": "ort_fp32", "runtime": "onnxruntime", "latency_ms_p50": 4.4},
    ]  # fmt: skip


def test_accuracy_vs_latency_tells_variants_of_one_runtime_apart(tmp_path):
    """A CPU run's two torch fp32 variants once collided ('duplicated: ... (torch/cpu)') and the
    error ended `bench run` after training, before its exports were recorded."""
    from bench.measure import plot_accuracy_vs_latency

    rows = [{**r, "accuracy": 0.96} for r in _cpu_variant_rows()]
    path = plot_accuracy_vs_latency(rows, tmp_path / "p.png", ylabel="test accuracy (%)")
    assert _png(path)[0] == "PNG"


def test_latency_boxes_and_the_pareto_plot_name_variants_alike(tmp_path):
    """Eager and compiled torch fp32 were both 'torch/cpu' in the box plot while the Pareto
    plot named the variant: one labeller serves both now."""
    from bench.measure import plot_accuracy_vs_latency
    from bench.measure.pareto import row_label

    rows = [{**r, "n": 2, "latency_ms_samples": [r["latency_ms_p50"]] * 2}
            for r in _cpu_variant_rows()]  # fmt: skip
    rows.append({**rows[0], "variant": "torch_compile_fp32", "latency_ms_p50": 15.0})
    fig = plots.plot_latency_distribution(rows, tmp_path / "lat.png")
    boxes = [t.get_text().rsplit(" (n=", 1)[0] for t in fig.axes[0].get_yticklabels()]
    assert len(set(boxes)) == len(rows)
    assert "shufflenet_v2_x1_0 · torch_compile_fp32" in boxes
    assert sorted(boxes) == sorted(row_label(r) for r in rows)
    # the Pareto plot refuses duplicated labels: the same rows plot there too
    plot_accuracy_vs_latency([{**r, "accuracy": 0.96} for r in rows], tmp_path / "p.png")


def test_a_plot_that_fails_is_recorded_and_the_export_step_goes_on(tmp_path, monkeypatch):
    from bench.release import export as exporting

    def boom(*a, **k):
        raise RuntimeError("no display")

    monkeypatch.setattr(exporting.speed, "plot_accuracy_vs_latency", boom)
    ok = {"status": "ok", "model": "shufflenet_v2_x1_0", "seed": 0, "accuracy_split": "test",
          "test_accuracy": 0.96, "test_correct": 346, "test_images": 360, "val_accuracy": 0.94,
          "val_loss": 0.2, "test_macro_f1": 0.96, "train_seconds": 600.0,
          "pipeline_efficiency": 0.98, "train_img_s": 30.0}  # fmt: skip
    from bench.release.section import assign
    from bench.summary import summarize_models

    results = {"rows": [ok], "summary": summarize_models([ok]), "speed": _cpu_variant_rows()}
    assign(results, exporting.plot_section(results, tmp_path))  # must not raise
    assert results["plot_errors"] == ["accuracy vs latency: RuntimeError: no display"]
    assert "plot" not in results
