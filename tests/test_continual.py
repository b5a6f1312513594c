"""Tests for course_lib.continual: the scenarios, EWC's penalty and Fisher, LwF's loss, the reservoir buffer,
the steps and the nearest-class-mean head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.continual import (
    ContinualStep, EWCStep, LwFStep, NearestClassMeanHead, ReplayStep, ReservoirBuffer, Scenario, empirical_fisher,
    ewc_penalty, lwf_loss,
)
from course_lib.continual_data import TensorBatches
from course_lib.training import fit

from fine_tuning_toys import one_thread  # noqa: F401 (an autouse fixture)

CLASS_IL, TASK_IL, DOMAIN_IL = (Scenario(name, 2) for name in ("class-incremental", "task-incremental",
                                                                "domain-incremental"))


def tiny_mlp(outputs: int = 6, inplace: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=inplace), nn.Linear(7, outputs))


def tiny_cnn(outputs: int = 6, seed: int = 0) -> nn.Sequential:
    """Convolution and BatchNorm: not all-linear, so the Fisher takes the vmap path."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(9, outputs))
    with torch.no_grad():  # non-trivial running statistics, so that eval mode matters
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def blobs(n: int, num_classes: int, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    centres = torch.randn(num_classes, dim, generator=generator) * 3
    return centres[labels] + torch.randn(n, dim, generator=generator), labels


def hand_fisher(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, scenario: Scenario | None,
                batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """The definition, one loop: per-example squared gradients (batch_size None) or squared batch-mean gradients."""
    model.eval()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    size = batch_size or 1
    groups = [(inputs[i:i + size], labels[i:i + size]) for i in range(0, len(labels), size)]
    for x, y in groups:
        logits = model(x)
        logits, targets = scenario.outputs(logits, y) if scenario is not None else (logits, y)
        log_likelihood = -F.cross_entropy(logits, targets)  # the mean over the group
        for name, g in zip(params, torch.autograd.grad(log_likelihood, list(params.values()))):
            total[name] += g.pow(2)
    return {name: value / len(groups) for name, value in total.items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=rtol, atol=1e-7), (name, (a[name] - b[name]).abs().max())


# ---------------------------------------------------------------------------------------------
# Scenarios


def test_the_scenarios_read_logits_and_labels_their_own_way():
    logits = torch.arange(24.0).reshape(4, 6)  # 3 tasks of 2 classes
    labels = torch.tensor([0, 3, 4, 5])
    assert torch.equal(CLASS_IL.outputs(logits, labels)[0], logits)
    assert torch.equal(CLASS_IL.outputs(logits, labels)[1], labels)
    task_logits, task_targets = TASK_IL.outputs(logits, labels)
    assert torch.equal(task_logits, torch.tensor([[0.0, 1], [8, 9], [16, 17], [22, 23]]))  # each row's own task's head
    assert torch.equal(task_targets, torch.tensor([0, 1, 0, 1]))
    domain_logits, domain_targets = DOMAIN_IL.outputs(logits[:, :2], labels)
    assert torch.equal(domain_logits, logits[:, :2]) and torch.equal(domain_targets, torch.tensor([0, 1, 0, 1]))
    assert [s.num_outputs(5) for s in (CLASS_IL, TASK_IL, DOMAIN_IL)] == [10, 10, 2]


def test_previous_outputs_are_the_earlier_tasks_heads():
    logits = torch.randn(4, 6)
    assert torch.equal(CLASS_IL.previous_outputs(logits, 2), logits[:, :4])
    assert torch.equal(TASK_IL.previous_outputs(logits, 2), logits[:, :4].reshape(4, 2, 2))
    assert torch.equal(DOMAIN_IL.previous_outputs(logits[:, :2], 2), logits[:, :2])


def test_scenario_mistakes_get_clear_errors():
    with pytest.raises(ValueError, match="Unknown scenario"):
        Scenario("class-incremental-ish", 2)
    with pytest.raises(ValueError, match="classes_per_task"):
        Scenario("task-incremental", 0)
    with pytest.raises(ValueError, match="one shared head of 2 outputs"):
        DOMAIN_IL.outputs(torch.randn(3, 10), torch.tensor([0, 5, 9]))
    with pytest.raises(ValueError, match="needs at least 10 outputs"):
        CLASS_IL.outputs(torch.randn(3, 4), torch.tensor([0, 5, 9]))
    with pytest.raises(ValueError, match="needs at least 6 outputs"):
        TASK_IL.outputs(torch.randn(3, 4), torch.tensor([0, 5, 1]))
    with pytest.raises(TypeError, match="int64"):
        CLASS_IL.outputs(torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------------
# EWC


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_in_the_displacement():
    model = tiny_mlp()
    anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
    fisher = {name: torch.rand_like(p) for name, p in model.named_parameters()}
    assert ewc_penalty(model, anchor, fisher).item() == 0.0
    direction = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    values = []
    for t in (0.5, 1.0, 3.0):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(anchor[name] + t * direction[name])
        values.append(ewc_penalty(model, anchor, fisher).item())
    expected = sum((fisher[n] * direction[n].pow(2)).sum().item() for n in fisher)
    assert values == pytest.approx([0.25 * expected, expected, 9 * expected], rel=1e-5)


def test_ewc_penalty_gradient_pulls_each_weight_back_by_its_fisher():
    model = tiny_mlp()
    anchor = {name: p.detach() + 0.1 for name, p in model.named_parameters()}
    fisher = {name: torch.rand_like(p) for name, p in model.named_parameters()}
    ewc_penalty(model, anchor, fisher).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * fisher[name] * (p.detach() - anchor[name]), atol=1e-6)


def test_ewc_penalty_refuses_a_fisher_of_another_model():
    model = tiny_mlp()
    anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(KeyError, match="not in the model"):
        ewc_penalty(model, anchor, {"head.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="same model"):
        ewc_penalty(model, anchor, {"0.weight": torch.ones(3)})


@pytest.mark.parametrize("make_model", [tiny_mlp, lambda: tiny_mlp(inplace=True), tiny_cnn],
                         ids=["mlp (matrix-product path)", "mlp with in-place ReLU", "cnn with BatchNorm (vmap path)"])
@pytest.mark.parametrize("scenario", [None, CLASS_IL, TASK_IL], ids=["plain", "class-IL", "task-IL"])
def test_per_sample_fisher_matches_a_hand_loop(make_model, scenario):
    model = make_model()
    inputs, labels = blobs(37, 6)
    if isinstance(model[0], nn.Conv1d):
        inputs = inputs[:, None, :]
    fisher = empirical_fisher(model, (inputs, labels), per_sample=True, scenario=scenario, batch_size=8)
    assert_same_tensors(fisher, hand_fisher(model, inputs, labels, scenario))


@pytest.mark.parametrize("share", ["layer", "weight"])
def test_shared_weights_fall_back_to_vmap_are_still_right_and_are_left_in_place(share):
    torch.manual_seed(0)
    first, second = nn.Linear(5, 5), nn.Linear(5, 5)
    if share == "layer":  # one layer run twice
        second = first
    else:  # one Parameter in two layers
        second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(5, 6))
    inputs, labels = blobs(20, 6)
    fisher = empirical_fisher(model, (inputs, labels), batch_size=7)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight is model[2].weight
    assert_same_tensors(fisher, hand_fisher(model, inputs, labels, None))


def test_batch_mean_fisher_matches_its_definition_and_frozen_parameters_are_left_out():
    model = tiny_mlp()
    model[0].requires_grad_(False)
    inputs, labels = blobs(40, 6)
    fisher = empirical_fisher(model, (inputs, labels), per_sample=False, batch_size=10)
    assert set(fisher) == {"2.weight", "2.bias"}
    assert_same_tensors(fisher, hand_fisher(model, inputs, labels, None, batch_size=10))
    # Batches of one: the two estimators are the same thing.
    assert_same_tensors(empirical_fisher(model, (inputs, labels), per_sample=False, batch_size=1),
                        empirical_fisher(model, (inputs, labels), per_sample=True))


def test_batch_mean_fisher_is_much_smaller_than_the_per_sample_one_after_training():
    model = tiny_mlp(outputs=3)
    inputs, labels = blobs(256, 3)
    fit(model, TensorBatches(inputs, labels, batch_size=32, num_batches=300), epochs=1, progress=False)
    per_sample = sum(v.sum() for v in empirical_fisher(model, (inputs, labels), True, batch_size=64).values())
    batch_mean = sum(v.sum() for v in empirical_fisher(model, (inputs, labels), False, batch_size=64).values())
    # Near a minimum the per-example gradients cancel in their mean: roughly a batch size's factor.
    assert per_sample > 10 * batch_mean > 0


def test_fisher_reads_loaders_and_stops_at_max_samples():
    model = tiny_mlp()
    inputs, labels = blobs(30, 6)
    from_tensors = empirical_fisher(model, (inputs[:20], labels[:20]))
    assert_same_tensors(empirical_fisher(model, (inputs, labels), max_samples=20, batch_size=8), from_tensors)
    loader = TensorBatches(inputs[:20], labels[:20], batch_size=6, shuffle=False)
    assert_same_tensors(empirical_fisher(model, loader), from_tensors)
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was


def test_fisher_mistakes_get_clear_errors():
    model = tiny_mlp()
    inputs, labels = blobs(8, 6)
    with pytest.raises(TypeError, match="pair of tensors"):
        empirical_fisher(model, 3)
    with pytest.raises(ValueError, match="must match"):
        empirical_fisher(model, (inputs, labels[:5]))
    with pytest.raises(ValueError, match="outputs"):
        empirical_fisher(tiny_mlp(outputs=4), (inputs, labels))
    with pytest.raises(ValueError, match="no trainable"):
        empirical_fisher(tiny_mlp().requires_grad_(False), (inputs, labels))


# ---------------------------------------------------------------------------------------------
# LwF


def test_lwf_loss_is_zero_when_the_logits_agree_up_to_a_constant_per_row():
    old = torch.randn(8, 5)
    assert lwf_loss(old.clone(), old, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert lwf_loss(old + torch.randn(8, 1), old, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert lwf_loss(torch.randn(8, 5), old, 2.0).item() > 0.01


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_lwf_loss_is_t_squared_times_the_kl_of_the_softened_distributions(temperature):
    new, old = torch.randn(16, 6), torch.randn(16, 6)
    kl = F.kl_div(F.log_softmax(new / temperature, dim=1), F.softmax(old / temperature, dim=1), reduction="batchmean")
    assert lwf_loss(new, old, temperature).item() == pytest.approx(temperature ** 2 * kl.item(), rel=1e-5)


def test_the_t_squared_factor_keeps_the_gradient_the_same_size_at_any_temperature():
    new, old = torch.randn(4, 6) * 0.1, torch.randn(4, 6) * 0.1
    gradients = []
    for temperature in (20.0, 200.0):
        logits = new.clone().requires_grad_(True)
        lwf_loss(logits, old, temperature).backward()
        gradients.append(logits.grad)
    # For a large T the gradient tends to ((new - mean new) - (old - mean old)) / (classes * batch), whatever T.
    limit = ((new - new.mean(1, keepdim=True)) - (old - old.mean(1, keepdim=True))) / (6 * 4)
    assert torch.allclose(gradients[0], limit, atol=1e-4) and torch.allclose(gradients[1], limit, atol=1e-5)


def test_lwf_loss_averages_one_distribution_per_head_and_sends_no_gradient_to_the_teacher():
    new, old = torch.randn(5, 3, 2), torch.randn(5, 3, 2, requires_grad=True)
    per_head = [lwf_loss(new[:, h], old[:, h], 2.0) for h in range(3)]
    loss = lwf_loss(new, old, 2.0)
    assert loss.item() == pytest.approx(torch.stack(per_head).mean().item(), rel=1e-5)
    assert not loss.requires_grad


def test_lwf_loss_mistakes_get_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        lwf_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="temperature"):
        lwf_loss(torch.randn(4, 3), torch.randn(4, 3), 0.0)
    with pytest.raises(TypeError, match="float logits"):
        lwf_loss(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3))


# ---------------------------------------------------------------------------------------------
# The reservoir buffer


class KeepTheLastOnes:
    """A biased buffer, to show that the uniformity test can fail: it keeps the latest examples."""

    def __init__(self, capacity: int, seed: int):
        self.capacity, self.labels = capacity, torch.empty(0, dtype=torch.long)

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.labels = torch.cat([self.labels, labels])[-self.capacity:]


def inclusion_chi_square(make_buffer, stream: int = 60, capacity: int = 10, runs: int = 1500) -> float:
    """Pearson's chi-square of how often each example of the stream ends up in the buffer, over many seeds."""
    counts = torch.zeros(stream)
    for seed in range(runs):
        buffer = make_buffer(capacity, seed)
        sizes = torch.randint(1, 15, (stream,), generator=torch.Generator().manual_seed(seed))
        starts = [0, *torch.cumsum(sizes, 0).tolist()]
        for start, end in zip(starts, starts[1:]):  # batches of random sizes
            if start >= stream:
                break
            ids = torch.arange(start, min(end, stream))
            buffer.add(ids[:, None].float(), ids)
        counts += torch.bincount(buffer.labels, minlength=stream)
    expected = runs * capacity / stream
    return float(((counts - expected) ** 2 / expected).sum())


def test_the_reservoir_is_a_uniform_sample_of_the_stream():
    # 59 degrees of freedom: a uniform sample scores about 59 (+- 11); 120 is beyond chance (p < 1e-5).
    assert inclusion_chi_square(lambda capacity, seed: ReservoirBuffer(capacity, seed=seed)) < 120
    assert inclusion_chi_square(KeepTheLastOnes) > 1000


def test_one_at_a_time_is_uniform_too():
    def one_by_one(capacity, seed):
        buffer = ReservoirBuffer(capacity, seed=seed)
        add = buffer.add

        def add_each(inputs, labels):
            for i in range(len(labels)):
                add(inputs[i:i + 1], labels[i:i + 1])
        buffer.add = add_each
        return buffer

    assert inclusion_chi_square(one_by_one, runs=300) < 120


def test_a_buffer_that_is_not_full_holds_the_whole_stream_in_order():
    buffer = ReservoirBuffer(10, seed=0)
    buffer.add(torch.arange(4.0)[:, None], torch.arange(4))
    buffer.add(torch.arange(4.0, 7.0)[:, None], torch.arange(4, 7))
    assert len(buffer) == 7 and buffer.seen == 7
    assert torch.equal(buffer.labels, torch.arange(7)) and torch.equal(buffer.inputs[:, 0], torch.arange(7.0))
    buffer.add(torch.arange(7.0, 107.0)[:, None], torch.arange(7, 107))
    assert len(buffer) == 10 and buffer.seen == 107
    assert torch.equal(buffer.inputs[:, 0].long(), buffer.labels)  # inputs and labels stay paired
    assert len(set(buffer.labels.tolist())) == 10


def test_sample_draws_distinct_stored_examples_and_a_generator_fixes_the_draw():
    buffer = ReservoirBuffer(20, seed=1)
    buffer.add(torch.arange(50.0)[:, None], torch.arange(50))
    inputs, labels = buffer.sample(8, torch.Generator().manual_seed(3))
    assert len(set(labels.tolist())) == 8 and set(labels.tolist()) <= set(buffer.labels.tolist())
    assert torch.equal(inputs[:, 0].long(), labels)
    assert torch.equal(buffer.sample(8, torch.Generator().manual_seed(3))[1], labels)
    assert len(buffer.sample(100)[1]) == 20  # at most what is stored


def test_buffer_mistakes_get_clear_errors():
    buffer = ReservoirBuffer(5)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(2)
    with pytest.raises(TypeError, match="int64"):
        buffer.add(torch.randn(3, 2), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="int64"):
        buffer.add(torch.randn(3, 2), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="must match"):
        buffer.add(torch.randn(3, 2), torch.zeros(2, dtype=torch.long))
    buffer.add(torch.randn(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one kind"):
        buffer.add(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one kind"):
        buffer.add(torch.randn(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBuffer(0)


# ---------------------------------------------------------------------------------------------
# Steps


def two_tasks(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two class-incremental tasks of blobs: classes 0/1, then 2/3."""
    inputs, labels = blobs(200, 4, seed=seed)
    return [(inputs[labels < 2], labels[labels < 2]), (inputs[labels >= 2], labels[labels >= 2])]


def train_task(model: nn.Module, step, inputs: torch.Tensor, labels: torch.Tensor, batches: int = 60) -> None:
    fit(model, TensorBatches(inputs, labels, batch_size=20, num_batches=batches), epochs=1, step=step, lr=0.01,
        progress=False)
    step.end_task(model, inputs, labels)


def test_the_naive_step_is_the_scenarios_cross_entropy():
    model, (inputs, labels) = tiny_mlp(4), two_tasks()[1]
    output = ContinualStep(TASK_IL)(model, (inputs, labels))
    logits, targets = TASK_IL.outputs(model(inputs), labels)
    assert output.loss.item() == pytest.approx(F.cross_entropy(logits, targets).item())
    assert output.size == len(labels) and 0 <= output.metrics["accuracy"] <= 1
    with pytest.raises(TypeError, match="Scenario"):
        ContinualStep("class-incremental")


def test_ewc_step_adds_half_lambda_times_the_penalty_after_the_first_task():
    scenario, (first, second) = Scenario("class-incremental", 2), two_tasks()
    model, step = tiny_mlp(4), EWCStep(Scenario("class-incremental", 2), lambda_=100.0)
    assert step(model, second).metrics["ewc_penalty"] == 0.0
    train_task(model, step, *first)
    with torch.no_grad():
        model[2].bias += 0.5
    output = step(model, second)
    weights, fisher = step.anchors[0]
    penalty = ewc_penalty(model, weights, fisher).item()
    plain = ContinualStep(scenario)(model, second).loss.item()
    assert output.metrics["ewc_penalty"] == pytest.approx(penalty) and penalty > 0
    assert output.loss.item() == pytest.approx(plain + 50.0 * penalty, rel=1e-5)


def test_a_strong_ewc_keeps_the_weights_the_first_task_needs():
    first, second = two_tasks()
    ewc = EWCStep(CLASS_IL, lambda_=1e4)
    penalty, old_accuracy = {}, {}
    for name, step in (("ewc", ewc), ("naive", ContinualStep(CLASS_IL))):
        model = tiny_mlp(4)  # the same start and the same batches: both end task 1 at EWC's anchor
        train_task(model, step, *first)
        train_task(model, step, *second)
        weights, fisher = ewc.anchors[0]
        penalty[name] = ewc_penalty(model, weights, fisher).item()
        old_accuracy[name] = ContinualStep(CLASS_IL)(model, first).metrics["accuracy"]
    assert penalty["ewc"] < 0.2 * penalty["naive"] and old_accuracy["ewc"] > old_accuracy["naive"] + 0.1


def test_ewc_step_sums_one_penalty_per_earlier_task_as_one_quadratic():
    step, model = EWCStep(CLASS_IL, lambda_=1.0), tiny_mlp(4)
    for seed in (1, 2, 3):
        inputs, labels = blobs(30, 4, seed=seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        step.end_task(model, inputs, labels)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = blobs(10, 4, seed=4)
    separate = sum(ewc_penalty(model, weights, fisher) for weights, fisher in step.anchors)
    output = step(model, batch)
    assert output.metrics["ewc_penalty"] == pytest.approx(separate.item(), rel=1e-4)
    merged_gradients = torch.autograd.grad(output.loss, list(model.parameters()))
    plain = ContinualStep(CLASS_IL)(model, batch).loss
    expected = torch.autograd.grad(plain + separate / 2, list(model.parameters()))
    for got, want in zip(merged_gradients, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_lwf_step_distils_nothing_before_a_task_is_done_and_nothing_at_the_old_model():
    first, second = two_tasks()
    model, step = tiny_mlp(4), LwFStep(CLASS_IL, temperature=2.0)
    assert step(model, second).metrics["distillation"] == 0.0
    train_task(model, step, *first)
    assert step.tasks_done == 1 and not any(p.requires_grad for p in step.old_model.parameters())
    assert step(model, second).metrics["distillation"] == pytest.approx(0.0, abs=1e-6)  # model == old model
    with torch.no_grad():
        model[2].weight.mul_(-1)
    output = step(model, second)
    expected = lwf_loss(model(second[0])[:, :2], step.old_model(second[0])[:, :2], 2.0)
    assert output.metrics["distillation"] == pytest.approx(expected.item(), rel=1e-5) and expected > 0


def test_replay_step_mixes_replayed_examples_into_the_batch():
    first, second = two_tasks()
    model, step = tiny_mlp(4), ReplayStep(CLASS_IL, capacity=30, seed=0)
    rows = []
    model.register_forward_hook(lambda _m, args, _out: rows.append(len(args[0])))
    step(model, (second[0][:16], second[1][:16]))
    assert rows == [16] and len(step.buffer) == 0  # nothing stored yet: the batch alone
    train_task(model, step, *first, batches=2)
    assert len(step.buffer) == 30 and set(step.buffer.labels.tolist()) <= {0, 1}
    rows.clear()
    output = step(model, (second[0][:16], second[1][:16]))
    assert rows == [32] and output.size == 16
    with torch.no_grad():  # evaluation scores the batch alone
        step(model, (second[0][:16], second[1][:16]))
    assert rows == [32, 16]


def test_replay_keeps_the_first_task_where_naive_fine_tuning_forgets_it():
    first, second = two_tasks()
    scores = {}
    for name, step in (("naive", ContinualStep(CLASS_IL)), ("replay", ReplayStep(CLASS_IL, capacity=50))):
        model = tiny_mlp(4)
        train_task(model, step, *first)
        train_task(model, step, *second)
        scores[name] = ContinualStep(CLASS_IL)(model, first).metrics["accuracy"]
    assert scores["replay"] > 0.9 and scores["naive"] < 0.6


# ---------------------------------------------------------------------------------------------
# Nearest class mean


def test_ncm_head_keeps_exact_class_means_from_a_stream():
    features, labels = blobs(90, 3, dim=4)
    head = NearestClassMeanHead(4, 5)
    for i in range(0, 90, 25):
        head.update(features[i:i + 25], labels[i:i + 25])
    for c in range(3):
        assert torch.allclose(head.means[c], features[labels == c].mean(0), atol=1e-6)
    assert torch.isnan(head.means[3:]).all()


def test_ncm_head_predicts_the_nearest_mean_and_its_softmax_is_that_of_minus_squared_distances():
    features, labels = blobs(60, 3, dim=4)
    head = NearestClassMeanHead(4, 4)
    head.update(features, labels)
    queries = torch.randn(10, 4) * 3
    distances = torch.cdist(queries, head.means[:3]).pow(2)
    logits = head(queries)
    assert torch.equal(logits.argmax(1), distances.argmin(1))
    assert torch.allclose(logits[:, :3].softmax(1), (-distances).softmax(1), atol=1e-5)
    assert torch.isinf(logits[:, 3]).all() and (logits[:, 3] < 0).all()  # a class with no example yet


def test_ncm_head_never_forgets_new_classes_leave_old_means_alone():
    (first_x, first_y), (second_x, second_y) = two_tasks()
    head = NearestClassMeanHead(5, 4)
    head.update(first_x, first_y)
    before = head.means[:2].clone()
    head.update(second_x, second_y)
    assert torch.equal(head.means[:2], before)


def test_ncm_head_mistakes_get_clear_errors():
    head = NearestClassMeanHead(4, 3)
    with pytest.raises(RuntimeError, match="update"):
        head(torch.randn(2, 4))
    with pytest.raises(ValueError, match="4 features"):
        head.update(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class ids in 0..2"):
        head.update(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="int64"):
        head.update(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    head.update(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        head(torch.randn(2, 1, 4))


def test_math_of_the_ncm_linear_head():
    # -||x - mu||^2 = 2 mu.x - ||mu||^2 - ||x||^2: the logits differ from minus the distance by ||x||^2 alone.
    head = NearestClassMeanHead(3, 2)
    head.update(torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]), torch.tensor([0, 1]))
    x = torch.tensor([[0.5, 0.5, 1.0]])
    logits = head(x)
    assert torch.allclose(logits - x.pow(2).sum(), -torch.cdist(x, head.means).pow(2))
    assert math.isclose(logits[0, 0].item(), 2 * 0.5 - 1.0)
