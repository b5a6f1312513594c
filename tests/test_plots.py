"""Tests for course_lib.plots, the charts (drawn off-screen with matplotlib's Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: draw off-screen, open no windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from course_lib.plots import (  # noqa: E402
    plot_confusion_matrix,
    plot_curves,
    plot_embedding,
    plot_heatmap,
    plot_history,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def drawn(fig: Figure) -> Figure:
    fig.canvas.draw()  # layout and text problems only show up when the figure is rendered
    return fig


# --- plot_history ------------------------------------------------------------------------------


HISTORY = {"train_loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "train_accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.65]}


def test_plot_history_one_panel_per_metric():
    fig = drawn(plot_history(HISTORY, title="fine-tuning"))
    loss_axis, accuracy_axis = fig.axes
    assert (loss_axis.get_ylabel(), accuracy_axis.get_ylabel()) == ("loss", "accuracy")
    assert loss_axis.get_xlabel() == "epoch"
    assert [line.get_label() for line in loss_axis.lines] == ["train", "val"]
    np.testing.assert_allclose(loss_axis.lines[1].get_ydata(), HISTORY["val_loss"])
    np.testing.assert_allclose(loss_axis.lines[1].get_xdata(), [1, 2, 3])
    assert fig._suptitle.get_text() == "fine-tuning"


def test_plot_history_accepts_as_dict_objects_and_tensors():
    class History:
        def as_dict(self):
            return {"train_loss": torch.tensor([2.0, 1.0]), "val_loss": [2.5, 1.5]}

    fig = plot_history(History(), metrics="loss")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2


def test_plot_history_compares_runs():
    runs = {"frozen": HISTORY, "fine-tuned": {k: [v * 0.9 for v in vs] for k, vs in HISTORY.items()}}
    fig = plot_history(runs, metrics=("accuracy",))
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["frozen train", "frozen val", "fine-tuned train", "fine-tuned val"]
    colours = [line.get_color() for line in fig.axes[0].lines]
    assert colours[0] == colours[1] != colours[2] == colours[3]


def test_plot_history_into_given_axes():
    fig, (ax, _) = plt.subplots(1, 2)
    assert plot_history(HISTORY, ax=ax) is fig


def test_plot_history_bad_input():
    with pytest.raises(ValueError, match=r"no 'train_f1'.*\['accuracy', 'loss'\]"):
        plot_history(HISTORY, metrics=("loss", "f1"))
    with pytest.raises(ValueError, match="empty"):
        plot_history({})
    with pytest.raises(TypeError, match="as_dict"):
        plot_history([0.1, 0.2])
    with pytest.raises(ValueError, match="one number per epoch"):
        plot_history({"train_loss": [[1, 2], [3, 4]]}, metrics=("loss",))


# --- plot_confusion_matrix and plot_heatmap -----------------------------------------------------


def test_plot_confusion_matrix_normalised_rows():
    y_true = torch.tensor([0, 0, 0, 0, 1, 1])
    y_pred = torch.tensor([0, 0, 0, 1, 1, 1])
    fig = drawn(plot_confusion_matrix(y_true, y_pred, ["cat", "dog", "fox"]))
    axis = fig.axes[0]
    np.testing.assert_allclose(axis.images[0].get_array(), [[0.75, 0.25, 0], [0, 1, 0], [0, 0, 0]])
    assert axis.get_xlabel() == "predicted class" and axis.get_ylabel() == "true class"
    assert [t.get_text() for t in axis.get_xticklabels()] == ["cat", "dog", "fox"]
    assert "0.75" in [t.get_text() for t in axis.texts]


def test_plot_confusion_matrix_counts_into_axes():
    fig, ax = plt.subplots()
    assert plot_confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 1]), normalize=False, ax=ax) is fig
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0, 1], [0, 2]])
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "1", "2"]


@pytest.mark.parametrize(
    "y_true, y_pred, names, fragment",
    [
        ([0, 1, 1], [0, 1], None, "3 labels but y_pred has 2"),
        ([0, 1], torch.randn(2, 3), None, "argmax(dim=1)"),
        ([0, 1], [0.5, 1.0], None, "class indices"),
        ([0, 3], [0, 1], ["a", "b"], "only 2 names"),
        ([], [], None, "empty"),
    ],
)
def test_plot_confusion_matrix_bad_input(y_true, y_pred, names, fragment):
    with pytest.raises(ValueError) as info:
        plot_confusion_matrix(np.asarray(y_true, dtype=int) if y_true else np.array([], int), y_pred, names)
    assert fragment in str(info.value)


def test_plot_heatmap_annotations_and_contrast():
    matrix = np.array([[0.0, 1.0], [0.5, np.nan]])
    fig = drawn(plot_heatmap(matrix, ["stage1", "stage2"], ["a", "b"], title="CKA", fmt=".1f"))
    axis = fig.axes[0]
    texts = {t.get_text(): t.get_color() for t in axis.texts}
    assert set(texts) == {"0.0", "1.0", "0.5"}  # NaN stays blank
    assert texts["0.0"] == "white" and texts["1.0"] == "black"  # viridis: dark low end, light high end
    assert axis.get_title() == "CKA" and len(fig.axes) == 2  # heatmap + colour bar


def test_plot_heatmap_large_matrices_are_not_annotated():
    fig = plot_heatmap(np.zeros((25, 25)), list("abcdefghijklmnopqrstuvwxy"), list("abcdefghijklmnopqrstuvwxy"), title="big")
    assert len(fig.axes[0].texts) == 0


def test_plot_heatmap_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        plot_heatmap(np.zeros(3), ["a"], ["b"], title="t")
    with pytest.raises(ValueError, match="3 row labels"):
        plot_heatmap(np.zeros((2, 2)), ["a", "b", "c"], ["x", "y"], title="t")
    with pytest.raises(ValueError, match="number format"):
        plot_heatmap(np.zeros((1, 1)), ["a"], ["b"], title="t", fmt="%d")


# --- plot_embedding ----------------------------------------------------------------------------


def clustered_features(n_per_class=10, dim=16):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, dim, generator=generator) * 5
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=generator), labels


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_embedding_colours_by_class(method):
    features, labels = clustered_features()
    fig = drawn(plot_embedding(features.requires_grad_(), labels, method=method, class_names=["a", "b", "c"]))
    axis = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in axis.collections) == 30
    legend_labels = [t.get_text() for t in axis.get_legend().get_texts()]
    assert legend_labels == ["a", "b", "c"]
    assert ("PC 1" if method == "pca" else "t-SNE 1") in axis.get_xlabel()


def test_plot_embedding_marks_domains_with_shapes():
    features, labels = clustered_features()
    domains = np.array(["source", "target"] * 15)
    fig, ax = plt.subplots()
    assert plot_embedding(features.numpy(), labels, domains=domains, title="19.4", ax=ax) is fig
    assert ax.get_title() == "19.4"
    domain_legend = ax.get_legend()
    assert domain_legend.get_title().get_text() == "domain"
    assert [t.get_text() for t in domain_legend.get_texts()] == ["source", "target"]
    point_collections = [c for c in ax.collections if len(c.get_offsets())]
    assert len(point_collections) == 6  # 3 classes x 2 domains


def test_plot_embedding_bad_input():
    features, labels = clustered_features()
    with pytest.raises(ValueError, match="'pca'"):
        plot_embedding(features, labels, method="umap")
    with pytest.raises(ValueError, match="30 feature vectors but 29 labels"):
        plot_embedding(features, labels[:-1])
    with pytest.raises(ValueError, match="one domain per row"):
        plot_embedding(features, labels, domains=[0, 1])
    with pytest.raises(ValueError, match="flatten"):
        plot_embedding(features.reshape(30, 4, 4), labels)
    features[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        plot_embedding(features, labels)


# --- plot_curves -------------------------------------------------------------------------------


def test_plot_curves_lines_bands_and_seeds():
    x = [1, 5, 10, 50]
    ys = {
        "linear probe": [0.3, 0.5, 0.6, 0.7],
        "fine-tune": (np.array([0.2, 0.5, 0.7, 0.9]), np.array([0.05, 0.05, 0.02, 0.01])),
        "from scratch": torch.tensor([[0.1, 0.2, 0.3, 0.5], [0.1, 0.3, 0.4, 0.6]]),  # two seeds
    }
    fig = drawn(plot_curves(x, ys, xlabel="examples per class", ylabel="accuracy", title="data efficiency", logx=True))
    axis = fig.axes[0]
    assert [line.get_label() for line in axis.lines] == list(ys)
    assert len(axis.collections) == 2  # bands only for the curves with a spread
    np.testing.assert_allclose(axis.lines[2].get_ydata(), [0.1, 0.25, 0.35, 0.55])
    assert axis.get_xscale() == "log"
    assert (axis.get_xlabel(), axis.get_ylabel(), axis.get_title()) == ("examples per class", "accuracy", "data efficiency")


def test_plot_curves_bad_input():
    labels = dict(xlabel="x", ylabel="y", title="t")
    with pytest.raises(ValueError, match=r"'probe': its values have shape \(3,\) but x has 4 points"):
        plot_curves([1, 2, 3, 4], {"probe": [1, 2, 3]}, **labels)
    with pytest.raises(ValueError, match=r"std values have shape \(2,\) but x has 3"):
        plot_curves([1, 2, 3], {"band": ([1, 2, 3], [0.1, 0.1])}, **labels)
    with pytest.raises(ValueError, match="x > 0"):
        plot_curves([0, 1], {"a": [1, 2]}, logx=True, **labels)
    with pytest.raises(TypeError, match="dict"):
        plot_curves([0, 1], [1, 2], **labels)
    with pytest.raises(TypeError):
        plot_curves([0, 1], {"a": [1, 2]})  # axis labels and title are required
