"""Tests for course_lib.image_grids, the pictures (drawn off-screen with matplotlib's Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere: draw off-screen, open no windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from course_lib.image_grids import show_feature_maps, show_filters, show_images  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_axes(fig: Figure):
    return [axis for axis in fig.axes if axis.images]


def drawn(fig: Figure) -> Figure:
    fig.canvas.draw()  # layout and text problems only show up when the figure is rendered
    return fig


# --- show_images -------------------------------------------------------------------------------


def test_show_images_uint8_with_labels_and_class_names():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    fig = drawn(show_images(images, torch.arange(10) % 3, ["cat", "dog", "fox"], ncols=4, title="samples"))
    assert isinstance(fig, Figure)
    axes = image_axes(fig)
    assert len(axes) == 10 and len(fig.axes) == 12  # 3 rows of 4, two left empty
    assert [a.get_title() for a in axes[:4]] == ["cat", "dog", "fox", "cat"]
    assert fig._suptitle.get_text() == "samples"
    np.testing.assert_allclose(axes[0].images[0].get_array(), images[0].permute(1, 2, 0).numpy() / 255, atol=1e-6)


def test_show_images_undoes_normalisation():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    original = torch.rand(2, 3, 4, 4)
    normalised = (original - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    fig = show_images(normalised, mean=mean, std=std)
    shown = image_axes(fig)[1].images[0].get_array()
    np.testing.assert_allclose(shown, original[1].permute(1, 2, 0).numpy(), atol=1e-5)


def test_show_images_grayscale_batches():
    for batch in (torch.rand(3, 8, 8), torch.rand(3, 1, 8, 8), np.random.rand(3, 8, 8)):
        axes = image_axes(show_images(batch))
        assert len(axes) == 3 and axes[0].images[0].get_array().shape == (8, 8)


def test_show_images_colours_predictions():
    fig = show_images(torch.rand(3, 3, 4, 4), labels=[0, 1, 2], predictions=torch.tensor([0, 2, 2]), class_names=["a", "b", "c"])
    titles = [a.title for a in image_axes(fig)]
    assert [t.get_text() for t in titles] == ["a\n(true: a)", "c\n(true: b)", "c\n(true: c)"]
    assert [to_rgba(t.get_color()) for t in titles] == [to_rgba("green"), to_rgba("red"), to_rgba("green")]
    only_predictions = show_images(torch.rand(2, 3, 4, 4), predictions=[1, 0])
    assert image_axes(only_predictions)[0].get_title() == "pred: 1"


def test_show_images_into_a_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    returned = show_images(torch.rand(4, 3, 4, 4), ax=right, ncols=2, title="batch")
    assert returned is fig
    assert left in fig.axes and right not in fig.axes
    drawn(fig)
    left_edge = left.get_window_extent().x1
    grid = image_axes(fig)
    assert len(grid) == 4
    assert all(axis.get_window_extent().x0 > left_edge for axis in grid)  # the grid sits where `right` was


@pytest.mark.parametrize(
    "images, kwargs, error, fragment",
    [
        (torch.rand(3, 4, 4, 3), {}, ValueError, "permute(0, 3, 1, 2)"),
        (torch.rand(4, 4), {}, ValueError, "unsqueeze(0)"),
        (torch.rand(2, 3, 4, 4), {"labels": [0, 1, 2]}, ValueError, "2 images but 3 labels"),
        (torch.rand(2, 3, 4, 4), {"predictions": [0]}, ValueError, "2 images but 1 predictions"),
        (torch.randn(2, 3, 4, 4) * 3, {}, ValueError, "pass the same mean= and std="),
        (torch.rand(2, 3, 4, 4), {"mean": (0.5, 0.5, 0.5)}, ValueError, "both mean= and std="),
        (torch.rand(2, 3, 4, 4), {"mean": (0.5, 0.5), "std": (1, 1)}, ValueError, "one per channel"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int64), {}, TypeError, "uint8"),
        (torch.rand(2, 3, 4, 4), {"labels": [0, 5], "class_names": ["a", "b"]}, ValueError, "label 5"),
        (torch.rand(0, 3, 4, 4), {}, ValueError, "empty"),
        (torch.rand(2, 3, 4, 4), {"ncols": 0}, ValueError, "ncols"),
    ],
)
def test_show_images_bad_input(images, kwargs, error, fragment):
    with pytest.raises(error) as info:
        show_images(images, **kwargs)
    assert fragment in str(info.value)


def test_show_images_needs_a_subplot_to_replace():
    fig = plt.figure()
    free_axes = fig.add_axes((0.1, 0.1, 0.8, 0.8))
    with pytest.raises(TypeError, match="plt.subplots"):
        show_images(torch.rand(2, 3, 4, 4), ax=free_axes)


# --- show_filters and show_feature_maps ---------------------------------------------------------


def test_show_filters_mosaic():
    weight = torch.nn.Conv2d(3, 10, 5).weight
    fig = drawn(show_filters(weight, ncols=4))
    mosaic = fig.axes[0].images[0].get_array()
    assert mosaic.shape == (3 * 6 + 1, 4 * 6 + 1, 3)
    assert mosaic.min() >= 0 and mosaic.max() <= 1
    assert fig.axes[0].get_title() == "10 filters of size 3x5x5"
    gray = show_filters(torch.randn(4, 1, 3, 3), title="gray filters")
    assert gray.axes[0].images[0].get_array().shape == (5, 17) and gray.axes[0].get_title() == "gray filters"


def test_show_filters_scales_each_filter_on_its_own():
    weak = torch.linspace(-1e-3, 1e-3, 27).reshape(1, 3, 3, 3)
    strong = torch.linspace(-10.0, 30.0, 27).reshape(1, 3, 3, 3)
    mosaic = show_filters(torch.cat([weak, strong]).numpy()).axes[0].images[0].get_array()
    for column, kernel in enumerate((weak, strong)):
        cell = mosaic[1:4, 1 + 4 * column : 4 + 4 * column]
        expected = (kernel[0] - kernel.min()) / (kernel.max() - kernel.min())
        np.testing.assert_allclose(cell, expected.permute(1, 2, 0).numpy(), atol=1e-6)
    assert (mosaic[0] == 1).all() and (mosaic[:, 4] == 1).all()  # white borders between filters


def test_show_filters_single_filter_keeps_its_border():
    mosaic = show_filters(torch.randn(1, 3, 3, 3)).axes[0].images[0].get_array()
    assert mosaic.shape == (5, 5, 3)
    assert (mosaic[0] == 1).all() and (mosaic[-1] == 1).all() and (mosaic[:, 0] == 1).all() and (mosaic[:, -1] == 1).all()
    assert mosaic[1:4, 1:4].min() == 0 and mosaic[1:4, 1:4].max() == 1


def test_show_filters_bad_input():
    with pytest.raises(ValueError, match="first convolution"):
        show_filters(torch.randn(8, 64, 3, 3))
    with pytest.raises(ValueError, match="C_out, C_in, k, k"):
        show_filters(torch.randn(8, 3, 3))
    with pytest.raises(TypeError, match="model.conv1.weight"):
        show_filters(torch.nn.Conv2d(3, 4, 3))


def test_show_feature_maps():
    fig = drawn(show_feature_maps(torch.rand(20, 6, 6), max_maps=10))
    axes = image_axes(fig)
    assert len(axes) == 10 and axes[9].get_title() == "channel 9"
    assert "first 10 of 20" in fig._suptitle.get_text()
    fig, ax = plt.subplots()
    assert show_feature_maps(torch.rand(3, 4, 4), title="stage1", ax=ax) is fig


def test_show_feature_maps_bad_input():
    with pytest.raises(ValueError, match=r"activation\[0\]"):
        show_feature_maps(torch.rand(1, 8, 4, 4))
    with pytest.raises(ValueError, match="C, H, W"):
        show_feature_maps(torch.rand(8, 4))
    with pytest.raises(ValueError, match="max_maps"):
        show_feature_maps(torch.rand(8, 4, 4), max_maps=0)
