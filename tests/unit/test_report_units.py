"""What a finished run leaves behind, called directly with small inputs: loss.png's curves, labels and size (the
figure kept by a patched plt.close), samples.md's before/after answers and its general check section (scores, verdict,
the answers that turned wrong or right), and the package versions summary.json records — no model trained."""

from __future__ import annotations

import struct

import pytest

from peftsft.training import report

# ---------------------------------------------------------------------------------------------- loss.png


@pytest.fixture
def plotted(monkeypatch):
    """plot_loss with plt.close patched to keep its figure: (call, the figures it drew)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig if fig is not None else plt.gcf()))
    yield lambda records, path: report.plot_loss(records, path), kept
    for fig in kept:
        close(fig)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


RECORDS = [
    {"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "learning_rate": 1e-4}, {"step": 2, "eval_loss": 2.2},
    {"step": 3, "loss": 1.5}, {"step": 4, "eval_loss": 1.9}, {"step": 4, "train_runtime": 9.0},
]


def test_loss_png_draws_train_loss_as_a_line_and_eval_loss_with_markers(plotted, tmp_path):
    plot, kept = plotted
    plot(RECORDS, tmp_path / "loss.png")
    [fig] = kept
    [ax] = fig.axes
    train, evals = ax.get_lines()
    assert train.get_label() == "train loss"
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [2.5, 2.0, 1.5]
    assert train.get_marker() == "None" and train.get_linestyle() == "-"
    assert evals.get_label() == "eval loss"
    assert list(evals.get_xdata()) == [2, 4] and list(evals.get_ydata()) == [2.2, 1.9]
    assert evals.get_marker() == "o" and evals.get_linestyle() == "-"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss", "eval loss"]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"


def test_loss_png_has_a_faint_grid_and_a_tight_7_by_4_inch_layout(plotted, tmp_path):
    plot, kept = plotted
    plot(RECORDS, tmp_path / "loss.png")
    [fig] = kept
    ax = fig.axes[0]
    assert tuple(fig.get_size_inches()) == (7.0, 4.0)
    for line in ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines():
        assert line.get_visible() and line.get_alpha() == 0.3
    assert fig.subplotpars.left < 0.125 and fig.subplotpars.right > 0.9  # tight_layout moved the default margins


def test_loss_png_is_written_at_100_dpi_in_place_of_the_old_one_with_no_temporary_left(plotted, tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "savefig.dpi", 72)  # a user's matplotlibrc does not change loss.png
    plot, kept = plotted
    path = tmp_path / "loss.png"
    path.write_bytes(b"old")
    plot(RECORDS, path)
    assert png_size(path) == (700, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]


def test_loss_png_is_written_through_a_hidden_png_beside_it(plotted, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, fname, **kw: (saved.append(fname), savefig(fig, fname, **kw)))
    plotted[0](RECORDS, tmp_path / "loss.png")
    assert saved == [tmp_path / ".loss.png.tmp.png"]


def test_loss_png_of_a_run_with_only_eval_or_only_train_records_draws_that_curve(plotted, tmp_path):
    plot, kept = plotted
    plot([{"step": 5, "eval_loss": 1.0}], tmp_path / "eval.png")
    plot([{"step": 5, "loss": 1.0}], tmp_path / "train.png")
    assert [[line.get_label() for line in fig.axes[0].get_lines()] for fig in kept] == [["eval loss"], ["train loss"]]
    assert (tmp_path / "eval.png").exists() and (tmp_path / "train.png").exists()


# ---------------------------------------------------------------------------------------------- samples.md


def test_samples_md_lists_each_prompt_with_the_start_and_tuned_answers(tmp_path):
    path = tmp_path / "samples.md"
    report.write_samples(path, ["Hi?", "Bye?"], ["old 1", "old 2"], ["new 1", "new 2"])
    assert path.read_text(encoding="utf-8") == (
        "# Samples: base vs tuned model\n\nGreedy answers to the same prompts, before and after training.\n\n"
        "## Hi?\n\n**base:** old 1\n\n**tuned:** new 1\n\n"
        "## Bye?\n\n**base:** old 2\n\n**tuned:** new 2\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.md"]


def test_samples_md_of_a_continued_run_names_its_start_and_ends_with_the_general_check(tmp_path):
    path = tmp_path / "samples.md"
    report.write_samples(path, ["Hi?"], ["old"], ["new"], general_result(), start="SFT model")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Samples: SFT model vs tuned model\n\n")
    assert "**SFT model:** old\n\n**tuned:** new\n\n# General check\n\n" in text
    assert text.endswith("\n".join(report.general_section(general_result())))


def general_result(regressed: bool = True) -> dict:
    def answer(prompt, base_right, tuned_right, base="b", tuned="t", expect=("x",)):
        return {"prompt": prompt, "expect": list(expect), "base": base, "tuned": tuned,
                "base_right": base_right, "tuned_right": tuned_right}

    return {
        "base": {"loss": 1.23456, "accuracy": 0.75, "exact_match": 0.125, "right": 3, "rows": 4, "seconds": 1.0},
        "tuned": {"loss": 1.5, "accuracy": 0.5, "exact_match": 0.25, "right": 2, "rows": 4, "seconds": 2.0},
        "change": {"loss": 0.2654, "loss_relative": 0.215, "accuracy": -0.25, "exact_match": 0.125},
        "regressed": regressed, "max_general_regression": 0.1, "seconds": 3.0,
        "sources": ["peftsft general set", "mine.jsonl"],
        "answers": [
            answer("Capital of Russia?", True, False, "Moscow.", "It is\nSt.  Petersburg", ("Moscow", "Moskva")),
            answer("2 + 2?", True, True),
            answer("Bees make?", False, True, "wax", "honey", ("honey",)),
            answer("Opposite of hot?", False, False),
        ],
    }


def test_the_general_section_gives_scores_verdict_and_flipped_answers():
    assert report.general_section(general_result()) == [
        "# General check", "",
        "4 held-out general questions (peftsft general set, mine.jsonl), greedy answers; "
        "limit 10%: **forgetting: past the limit**.", "",
        "| | base | tuned | change |", "|---|--:|--:|--:|",
        "| loss on reference answers | 1.2346 | 1.5000 | +21.5% |",
        "| right (answer contains the expected) | 3/4 | 2/4 | -25.0 points |",
        "| exact match | 12.5% | 25.0% | +12.5 points |", "",
        "## Turned wrong (1)", "",
        "- Capital of Russia? (expected: Moscow / Moskva)", "  - base: Moscow.", "  - tuned: It is St. Petersburg",
        "",
        "## Turned right (1)", "",
        "- Bees make? (expected: honey)", "  - base: wax", "  - tuned: honey",
        "",
    ]


def test_the_general_section_within_the_limit_says_so_and_lists_no_flips_when_none():
    result = general_result(regressed=False)
    result["answers"] = [a for a in result["answers"] if a["base_right"] == a["tuned_right"]]
    lines = report.general_section(result)
    assert lines[2].endswith("limit 10%: within the limit.")
    assert lines[-6:] == ["## Turned wrong (0)", "", "", "## Turned right (0)", "", ""]


# ---------------------------------------------------------------------------------------------- versions


def test_versions_name_python_and_each_package_or_not_installed(monkeypatch):
    import platform
    from importlib.metadata import PackageNotFoundError

    def version(name):
        if name == "trl":
            raise PackageNotFoundError(name)
        return f"{name}-1.0"

    monkeypatch.setattr(report, "version", version)
    out = report.versions()
    assert list(out) == ["python", *report.PACKAGES]
    assert out["python"] == platform.python_version()
    assert out["trl"] == "not installed" and out["torch"] == "torch-1.0" and out["rich"] == "rich-1.0"
