"""The PyTorch adapter: refusals before training, shipping user code, schedulers, ablation,
loss and metric names, the worker-cache key and the state bytes (real torch training on
sklearn's digits).  What every adapter promises is in ``test_framework_contract.py``."""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import subprocess
import sys
import textwrap
import threading
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cloudpickle  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

from cerebro.errors import CerebroError  # noqa: E402
from cerebro.frameworks.base import DataSample, get_framework  # noqa: E402
from cerebro.frameworks.torch import FRAMEWORK, TorchEstimator, TorchSpec  # noqa: E402
from cerebro.frameworks.torch.state import cpu_copy, unpack_state  # noqa: E402

fw = get_framework("torch")
fw.limit_threads(1)
BATCH = 32


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def sample_of(x, y, rows=8, label="label") -> DataSample:
    return DataSample({"features": x[:rows]}, {label: y[:rows]}, ("features",), (label,))


def mlp(hidden=32, dropout=0.2, out=10):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))


def estimator(model=None, lr=1e-3, loss="cross_entropy", metrics=("accuracy",), **kwargs):
    model = model if model is not None else mlp()
    return TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=lr), loss, metrics, **kwargs)


def spec_of(est, digits, seed=0, **sample_kwargs):
    x, y = digits
    fw.seed(seed)
    return fw.make_spec(est, [(64,)], sample_of(x, y, **sample_kwargs))


def xy(spec, x, y, label="label"):
    return fw.make_inputs(spec, {"features": x}, ["features"]), fw.make_targets(spec, {label: y}, [label])


def lr_of(model):
    return model.optimizer.param_groups[0]["lr"]


# ------------------------------------------------------------------ the estimator's checks


def test_the_model_must_be_a_torch_module():
    with pytest.raises(TypeError, match=r"The 'model' parameter of TorchEstimator must be a torch.nn.Module\. Got"):
        TorchEstimator("not a model", torch.optim.SGD(mlp().parameters(), lr=0.1), "mse")


def test_an_optimizer_built_on_another_model_is_refused():
    other = mlp()
    with pytest.raises(ValueError, match=r"'optimizer' parameter of TorchEstimator must be built on this model's "
                                         r"parameters.*4 of the 4"):
        TorchEstimator(mlp(), torch.optim.SGD(other.parameters(), lr=0.1), "cross_entropy")
    with pytest.raises(TypeError, match="'optimizer' parameter"):
        TorchEstimator(mlp(), "adam", "cross_entropy")


def test_an_optimizer_callable_must_return_an_optimizer_on_the_given_parameters(digits):
    est = TorchEstimator(mlp(), lambda params: "sgd", "cross_entropy")
    with pytest.raises(TypeError, match="'optimizer' callable of TorchEstimator must return a torch.optim.Optimizer"):
        spec_of(est, digits)
    other = mlp()
    est = TorchEstimator(mlp(), lambda params: torch.optim.SGD(other.parameters(), lr=0.1), "cross_entropy")
    with pytest.raises(ValueError, match="built on this model's parameters"):
        spec_of(est, digits)


def test_unknown_loss_and_metric_names_are_refused_with_the_known_names():
    with pytest.raises(ValueError, match=r"'loss' parameter of TorchEstimator.*'cross_entropy'.*'smooth_l1'.*Got 'hinge'"):
        estimator(loss="hinge")
    with pytest.raises(ValueError, match=r"unknown metric 'auc'; the known names are \['accuracy', 'acc', 'mae', 'mse'\]"):
        estimator(metrics=["accuracy", "auc"])
    with pytest.raises(TypeError, match="'metrics' parameter"):
        estimator(metrics="accuracy")
    with pytest.raises(TypeError, match="'loss' parameter"):
        estimator(loss=3)


def test_bad_batch_sizes_and_schedulers_are_refused():
    with pytest.raises(ValueError, match=r"'batch_size' parameter of TorchEstimator must be an int >= 1\. Got 0"):
        estimator(batch_size=0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="interval.*'epoch' or 'step'. Got 'batch'"):
        TorchEstimator(model, opt, "cross_entropy", lr_scheduler={"scheduler": lambda o: None, "interval": "batch"})
    with pytest.raises(ValueError, match="unknown keys \\['monitor'\\]"):
        TorchEstimator(model, opt, "cross_entropy", lr_scheduler={"scheduler": lambda o: None, "monitor": "val_loss"})
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a validation metric"):
        TorchEstimator(model, opt, "cross_entropy", lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must be built on the estimator's optimizer"):
        TorchEstimator(model, opt, "cross_entropy", lr_scheduler=torch.optim.lr_scheduler.StepLR(other, 1))
    with pytest.raises(ValueError, match="pass the scheduler as a callable"):
        TorchEstimator(model, lambda p: torch.optim.SGD(p, lr=0.1), "cross_entropy",
                       lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(TypeError, match="'lr_scheduler' parameter"):
        TorchEstimator(model, opt, "cross_entropy", lr_scheduler=5)


# ------------------------------------------------------------------ make_spec's checks


class WithLock(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.body.guard = threading.Lock()

    def forward(self, x):
        return self.body(x)


def test_a_model_that_cannot_be_shipped_is_refused_naming_the_attribute(digits):
    with pytest.raises(CerebroError, match=r"The model \(.*WithLock\) cannot be sent to the worker processes: its "
                                           r"attribute 'body.guard' \(a _thread.lock\).*module level"):
        spec_of(estimator(WithLock()), digits)


def test_an_output_that_does_not_fit_the_label_column_is_refused(digits):
    with pytest.raises(CerebroError, match=r"The model's output of shape \(8, 10\) does not fit label column 'label' "
                                           r"\(values shape \(8,\), torch.int64\) with loss 'mse'"):
        spec_of(estimator(loss="mse"), digits)
    with pytest.raises(CerebroError, match=r"output of shape \(8, 1\) does not fit label column 'digit'.*"
                                           r"'cross_entropy'.*out of bounds"):
        spec_of(estimator(mlp(out=1)), digits, label="digit")


def per_row_loss(output, target):
    return F.cross_entropy(output, target, reduction="none")


def test_a_loss_that_does_not_return_a_scalar_is_refused(digits):
    with pytest.raises(CerebroError, match=r"The loss per_row_loss returned a tensor of shape \(8,\).*must return a scalar"):
        spec_of(estimator(loss=per_row_loss), digits)
    with pytest.raises(CerebroError, match=r"returned float; it must return a scalar torch.Tensor"):
        spec_of(estimator(loss=lambda o, t: 0.5), digits)


def test_a_forward_pass_that_fails_on_the_input_shape_is_refused(digits):
    model = nn.Sequential(nn.Linear(32, 10))
    with pytest.raises(CerebroError, match=r"forward pass fails on 8 sample rows of the feature columns \['features'\] "
                                           r"of shape \(8, 64\) \(input_shapes \[\(64,\)\]\).*8x64 and 32x10"):
        spec_of(estimator(model), digits)


def test_a_metric_that_fails_is_refused_naming_it(digits):
    def broken(output, target):
        return output[:, 99].mean()

    with pytest.raises(CerebroError, match=r"The metric broken fails on the model's output of shape \(8, 10\)"):
        spec_of(estimator(metrics=[broken]), digits)


def test_the_spec_is_picklable_and_make_spec_leaves_the_random_state_alone(digits):
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x) + 0 * torch.rand(())

    est = estimator(Noisy())
    before = torch.get_rng_state()
    x, y = digits
    spec = fw.make_spec(est, [(64,)], sample_of(x, y))
    assert torch.equal(torch.get_rng_state(), before)
    assert isinstance(spec, TorchSpec) and spec.framework == "torch"
    again = pickle.loads(pickle.dumps(spec))
    assert again.arch_key == spec.arch_key and again.initial_state == spec.initial_state
    assert spec.input_shapes == ((64,),) and spec.input_dtypes == ("float32",) and spec.output_widths == (10,)
    # the user's objects are untouched: no gradient, no optimizer state
    assert all(p.grad is None for p in est.model.parameters()) and not est.optimizer.state


def test_without_a_sample_the_output_widths_come_from_a_forward_pass_on_zeros():
    spec = fw.make_spec(estimator(mlp(out=3)), [(64,)], None)
    assert spec.output_widths == (3,)


# ------------------------------------------------------------------ shipping user code

MAKE_SCRIPT = textwrap.dedent("""
    import pickle, sys
    import numpy as np, torch
    from torch import nn
    from cerebro.frameworks.base import DataSample, get_framework
    from cerebro.frameworks.torch import TorchEstimator

    def squash(t):
        return torch.tanh(t) * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.scale = 2.0

        def forward(self, x):
            return squash(self.fc(x)) * self.scale

    fw = get_framework("torch")
    fw.seed(0)
    net = Net()
    est = TorchEstimator(net, torch.optim.SGD(net.parameters(), lr=0.1), "cross_entropy", ["accuracy"], batch_size=4)
    x = np.random.RandomState(0).rand(16, 4).astype("float32")
    y = (np.arange(16) % 3).astype("int64")
    spec = fw.make_spec(est, [(4,)], DataSample({"f": x[:4]}, {"l": y[:4]}, ("f",), ("l",)))
    with open(sys.argv[1], "wb") as f:
        pickle.dump({"spec": spec, "x": x, "y": y}, f)
""")

TRAIN_SCRIPT = textwrap.dedent("""
    import json, pickle, sys
    import __main__
    assert not hasattr(__main__, "Net")
    from cerebro.frameworks.base import get_framework

    with open(sys.argv[1], "rb") as f:
        data = pickle.load(f)
    spec = data["spec"]
    fw = get_framework(spec.framework)
    model = fw.export(spec, spec.initial_state)
    x = fw.make_inputs(spec, {"f": data["x"]}, ["f"])
    y = fw.make_targets(spec, {"l": data["y"]}, ["l"])
    metrics = fw.train_sub_epoch(model, x, y, batch_size=spec.batch_size, seed=3)
    print(json.dumps({"metrics": metrics, "class": type(fw.user_model(model)).__name__,
                      "state": fw.state_to_bytes(model).hex()}))
""")


def run_script(path, *args, cwd):
    r = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=str(cwd), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_a_model_class_defined_in_a_script_trains_in_a_process_that_lacks_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "make.py").write_text(MAKE_SCRIPT)  # no main guard: Net lives in __main__
    (tmp_path / "b" / "train.py").write_text(TRAIN_SCRIPT)
    run_script(tmp_path / "a" / "make.py", tmp_path / "spec.pkl", cwd=tmp_path / "a")
    out = json.loads(run_script(tmp_path / "b" / "train.py", tmp_path / "spec.pkl", cwd=tmp_path / "b"))
    assert out["class"] == "Net" and out["metrics"]["rows"] == 16 and np.isfinite(out["metrics"]["loss"])
    again = json.loads(run_script(tmp_path / "b" / "train.py", tmp_path / "spec.pkl", cwd=tmp_path / "b"))
    assert again["state"] == out["state"]


THROWAWAY = textwrap.dedent("""
    import torch
    from torch import nn

    def double(t):
        return t * 2

    class ThrowawayNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return double(self.fc(x))
""")


def test_a_model_class_from_a_module_the_workers_cannot_import_is_shipped_by_value(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "b").mkdir()
    path = tmp_path / "mods" / "cerebro_throwaway_net.py"
    path.write_text(THROWAWAY)
    spec_obj = importlib.util.spec_from_file_location("cerebro_throwaway_net", path)
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules["cerebro_throwaway_net"] = module
    try:
        spec_obj.loader.exec_module(module)
        net = module.ThrowawayNet()
        est = TorchEstimator(net, torch.optim.SGD(net.parameters(), lr=0.1), "cross_entropy", batch_size=4)
        x = np.random.RandomState(0).rand(16, 4).astype("float32")
        y = (np.arange(16) % 3).astype("int64")
        spec = fw.make_spec(est, [(4,)], DataSample({"f": x[:4]}, {"l": y[:4]}, ("f",), ("l",)))
        assert "cerebro_throwaway_net" not in cloudpickle.list_registry_pickle_by_value()
        with open(tmp_path / "spec.pkl", "wb") as f:
            pickle.dump({"spec": spec, "x": x, "y": y}, f)
    finally:
        del sys.modules["cerebro_throwaway_net"]
    (tmp_path / "b" / "train.py").write_text(TRAIN_SCRIPT)
    out = json.loads(run_script(tmp_path / "b" / "train.py", tmp_path / "spec.pkl", cwd=tmp_path / "b"))
    assert out["class"] == "ThrowawayNet" and out["metrics"]["rows"] == 16


# ------------------------------------------------------------------ learning-rate schedulers


def scheduled(digits, lr_scheduler, lr=0.1):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    est = TorchEstimator(model, opt, "cross_entropy", ["accuracy"], BATCH,
                         lr_scheduler=lr_scheduler(opt) if lr_scheduler is not None else None)
    return est


def test_an_epoch_scheduler_steps_at_the_end_of_each_mop_epoch_and_hops(digits):
    x, y = digits
    est = scheduled(digits, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    assert est.interval == "epoch"
    spec = spec_of(est, digits)
    assert spec.interval == "epoch"
    model = fw.export(spec, spec.initial_state)
    a, b = xy(spec, x[:200], y[:200]), xy(spec, x[200:400], y[200:400])
    fw.train_sub_epoch(model, *a, batch_size=BATCH, seed=1, epoch_end=False)
    assert lr_of(model) == pytest.approx(0.1)
    fw.train_sub_epoch(model, *b, batch_size=BATCH, seed=2, epoch_end=True)
    assert lr_of(model) == pytest.approx(0.05)
    moved = fw.export(spec, fw.state_to_bytes(model))
    assert lr_of(moved) == pytest.approx(0.05) and moved.scheduler.last_epoch == model.scheduler.last_epoch == 1
    fw.train_sub_epoch(moved, *a, batch_size=BATCH, seed=3, epoch_end=True)
    assert lr_of(moved) == pytest.approx(0.025)


def test_a_step_scheduler_steps_after_every_batch(digits):
    x, y = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = TorchEstimator(model, opt, "cross_entropy", batch_size=BATCH, lr_scheduler={
        "scheduler": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), "interval": "step"})
    spec = spec_of(est, digits)
    built = fw.export(spec, spec.initial_state)
    fw.train_sub_epoch(built, *xy(spec, x[:100], y[:100]), batch_size=BATCH, seed=1, epoch_end=True)
    assert lr_of(built) == pytest.approx(0.1 * 0.9 ** 4)  # 100 rows: 4 batches, epoch_end does not step it


def test_learning_rate_transfer_moves_the_scheduler_base_rate(digits):
    x, y = digits
    make = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    slow, fast = spec_of(scheduled(digits, make, lr=0.1), digits), spec_of(scheduled(digits, make, lr=0.4), digits)
    assert slow.arch_key == fast.arch_key
    model = fw.export(slow, slow.initial_state)
    fw.train_sub_epoch(model, *xy(slow, x[:100], y[:100]), batch_size=BATCH, seed=1, epoch_end=True)
    moved = fw.export(fast, fw.transfer_learning_rate(fw.state_to_bytes(model), fast.initial_state))
    assert lr_of(moved) == pytest.approx(0.4) and moved.scheduler.base_lrs == [pytest.approx(0.4)]
    assert moved.scheduler.last_epoch == 1 and moved.optimizer.param_groups[0]["momentum"] == 0.9
    fw.train_sub_epoch(moved, *xy(slow, x[:100], y[:100]), batch_size=BATCH, seed=2, epoch_end=True)
    assert lr_of(moved) == pytest.approx(0.2)


# ------------------------------------------------------------------ the worker-cache key


def test_configurations_that_differ_only_in_state_share_the_arch_key_and_train_identically(digits):
    x, y = digits

    def make(lr, betas, gamma, seed):
        torch.manual_seed(seed)
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
        return TorchEstimator(model, opt, "cross_entropy", ["accuracy"], BATCH,
                              lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, 1, gamma=gamma))

    a = spec_of(make(1e-3, (0.9, 0.999), 0.5, 1), digits)
    b = spec_of(make(3e-2, (0.8, 0.99), 0.9, 2), digits)
    assert a.arch_key == b.arch_key and a.initial_state != b.initial_state
    shared = fw.export(a, a.initial_state)
    fw.load_state(shared, b.initial_state)
    own = fw.export(b, b.initial_state)
    for model in (shared, own):
        fw.train_sub_epoch(model, *xy(b, x[:300], y[:300]), batch_size=BATCH, seed=4, epoch_end=True)
    assert fw.state_to_bytes(shared) == fw.state_to_bytes(own)
    assert lr_of(shared) == pytest.approx(3e-2 * 0.9)


def test_anything_else_that_changes_behaviour_changes_the_arch_key(digits):
    def key(est):
        return spec_of(est, digits).arch_key

    base = key(estimator())
    assert key(estimator()) == base
    model = mlp()
    variants = [
        estimator(mlp(dropout=0.3)),
        estimator(mlp(hidden=16)),
        estimator(nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.2), nn.Linear(32, 10))),
        TorchEstimator(model, torch.optim.AdamW(model.parameters(), lr=1e-3), "cross_entropy", ["accuracy"]),
        estimator(loss=nn.CrossEntropyLoss(label_smoothing=0.1)),
        estimator(metrics=()),
    ]
    keys = [key(v) for v in variants]
    assert base not in keys and len(set(keys)) == len(keys)

    def lambda_lr(factor):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return TorchEstimator(model, opt, "cross_entropy",
                              lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: factor ** e))

    assert key(lambda_lr(0.5)) != key(lambda_lr(0.9))


# ------------------------------------------------------------------ state bytes


def test_state_bytes_carry_a_format_marker_and_are_read_without_unpickling_objects(digits, tmp_path):
    spec = spec_of(estimator(), digits)
    payload = unpack_state(spec.initial_state)
    assert payload["format"] == "cerebro-torch-state" and payload["version"] == 1
    model = fw.export(spec, spec.initial_state)
    with pytest.raises(CerebroError, match="not a readable cerebro torch state"):
        fw.load_state(model, b"garbage")
    buffer = io.BytesIO()
    torch.save({"format": "something-else"}, buffer)
    with pytest.raises(CerebroError, match="format 'something-else'"):
        fw.load_state(model, buffer.getvalue())
    buffer = io.BytesIO()
    torch.save({**payload, "version": 99}, buffer)
    with pytest.raises(CerebroError, match="version 99"):
        fw.load_state(model, buffer.getvalue())
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    torch.save({**payload, "evil": Evil(str(marker))}, buffer)
    with pytest.raises(CerebroError, match="weights_only"):
        fw.load_state(model, buffer.getvalue())
    assert not marker.exists()
    other = spec_of(estimator(mlp(hidden=16)), digits)
    with pytest.raises(CerebroError, match="size mismatch"):
        fw.load_state(model, other.initial_state)


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_saved_tensors_are_contiguous_copies_not_views_of_the_live_model():
    model = mlp()
    live = model.state_dict()
    saved = cpu_copy(live)
    for name, tensor in saved.items():
        assert tensor.is_contiguous()
        assert tensor.untyped_storage().data_ptr() != live[name].untyped_storage().data_ptr()
    view_model = nn.Linear(64, 64)
    with torch.no_grad():
        view_model.weight = nn.Parameter(torch.randn(64, 128)[:, ::2])  # a strided view of a bigger tensor
    data = FRAMEWORK.state_to_bytes(_holder(view_model))
    assert len(data) < 64 * 128 * 4  # the view's 64x64 values, not the 64x128 storage under it


def _holder(module):
    est = TorchEstimator(module, torch.optim.SGD(module.parameters(), lr=0.1), "mse")
    spec = fw.make_spec(est, [(64,)], None)
    return fw.export(spec, spec.initial_state)


# ------------------------------------------------------------------ ablation


def named_mlp():
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64, 32)), ("relu1", nn.ReLU()),
        ("hidden", nn.Linear(32, 32)), ("relu2", nn.ReLU()),
        ("out", nn.Linear(32, 10)),
    ]))


def test_ablation_drops_a_named_layer_with_fresh_weights_and_optimizer(digits):
    x, y = digits
    model = named_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    est = TorchEstimator(model, opt, "cross_entropy", ["accuracy"], 16,
                         lr_scheduler={"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.3), "interval": "epoch"})
    variant = fw.ablate(est, drop_layer="hidden")
    assert [n for n, _ in variant.model.named_children()] == ["fc1", "relu1", "relu2", "out"]
    assert variant.batch_size == 16 and variant.loss == "cross_entropy" and variant.metrics == ("accuracy",)
    assert not torch.equal(variant.model.fc1.weight, model.fc1.weight)  # re-initialised
    assert variant.model.fc1.weight is not model.fc1.weight
    new_opt = variant.optimizer
    assert type(new_opt) is torch.optim.Adam and new_opt is not opt
    assert new_opt.param_groups[0]["lr"] == 2e-3 and new_opt.param_groups[0]["weight_decay"] == 1e-4
    assert {id(p) for p in new_opt.param_groups[0]["params"]} == {id(p) for p in variant.model.parameters()}
    sched = variant.lr_scheduler["scheduler"]
    assert type(sched) is torch.optim.lr_scheduler.StepLR and (sched.step_size, sched.gamma) == (2, 0.3)
    assert sched.optimizer is new_opt and variant.lr_scheduler["interval"] == "epoch"
    spec = spec_of(variant, digits)
    trained = fw.export(spec, spec.initial_state)
    assert fw.train_sub_epoch(trained, *xy(spec, x[:64], y[:64]), batch_size=16, seed=1)["rows"] == 64
    # index names of a plain Sequential work too
    assert [n for n, _ in fw.ablate(estimator(), drop_layer="2").model.named_children()] == ["0", "1", "3"]


def test_ablation_takes_a_narrower_input_by_replacing_the_first_linear(digits):
    x, y = digits
    est = TorchEstimator(named_mlp(), lambda p: torch.optim.SGD(p, lr=0.05), "cross_entropy", ["accuracy"])
    variant = fw.ablate(est, input_width=60)
    assert variant.model.fc1.in_features == 60 and variant.model.fc1.out_features == 32
    assert variant.optimizer is est.optimizer  # a callable is called again by make_spec
    fw.seed(0)
    spec = fw.make_spec(variant, [(60,)], DataSample({"f": x[:8, :60]}, {"label": y[:8]}, ("f",), ("label",)))
    model = fw.export(spec, spec.initial_state)
    xs = fw.make_inputs(spec, {"f": x[:50, :60]}, ["f"])
    assert fw.train_sub_epoch(model, xs, y[:50], batch_size=BATCH, seed=2)["rows"] == 50


def test_ablation_refuses_what_it_cannot_do():
    with pytest.raises(CerebroError, match=r"no layer named 'nope'; its layers are \['fc1', 'relu1', 'hidden', 'relu2', 'out'\]"):
        fw.ablate(estimator(named_mlp()), drop_layer="nope")
    with pytest.raises(CerebroError, match="needs an nn.Sequential; the model is a WithLock"):
        fw.ablate(estimator(WithLock()), drop_layer="body")
    conv = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(CerebroError, match="first layer with weights is an nn.Linear; this model's is Conv2d"):
        fw.ablate(estimator(conv), input_width=60)
    model = named_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = TorchEstimator(model, opt, "cross_entropy",
                         lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9 ** e))
    with pytest.raises(CerebroError, match="cannot rebuild the LambdaLR scheduler.*callable optimizer -> scheduler"):
        fw.ablate(est, drop_layer="hidden")


# ------------------------------------------------------------------ losses and metrics


def regression_data(digits):
    x, y = digits
    return x, (y / 9.0).astype("float32")


@pytest.mark.parametrize("loss", ["mse", "l1", "mae", "huber", "smooth_l1", nn.MSELoss()])
def test_regression_losses_take_a_scalar_label_column_for_a_one_column_output(digits, loss):
    x, target = regression_data(digits)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
    est = TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=1e-2), loss, ["mae", "mse"], BATCH)
    assert est.metric_names() == ["loss", "mae", "mse"]
    spec = fw.make_spec(est, [(64,)], sample_of(x, target))
    assert spec.output_widths == (1,)
    built = fw.export(spec, spec.initial_state)
    data = xy(spec, x[:400], target[:400])
    first = fw.train_sub_epoch(built, *data, batch_size=BATCH, seed=1)
    for seed in range(2, 5):
        last = fw.train_sub_epoch(built, *data, batch_size=BATCH, seed=seed)
    assert last["loss"] < first["loss"]
    result = fw.evaluate(built, *data, batch_size=BATCH)
    predicted = fw.predict(built, data[0])[0][:, 0].astype("float64")
    errors = predicted - target[:400]
    assert result["mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-5)
    assert result["mse"] == pytest.approx((errors ** 2).mean(), rel=1e-5)
    if loss in ("mse",) or isinstance(loss, nn.MSELoss):
        assert result["loss"] == pytest.approx(result["mse"], rel=1e-5)
    if loss in ("l1", "mae"):
        assert result["loss"] == pytest.approx(result["mae"], rel=1e-5)


@pytest.mark.parametrize("loss,head", [("bce", nn.Sigmoid()), ("bce_with_logits", nn.Identity())])
def test_binary_losses_and_their_accuracy_threshold(digits, loss, head):
    x, y = digits
    label = (y >= 5).astype("float32")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1), head)
    est = TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=1e-2), loss, ["accuracy"], BATCH)
    spec = fw.make_spec(est, [(64,)], sample_of(x, label))
    built = fw.export(spec, spec.initial_state)
    data = xy(spec, x[:600], label[:600])
    for seed in range(4):
        fw.train_sub_epoch(built, *data, batch_size=BATCH, seed=seed)
    result = fw.evaluate(built, *data, batch_size=BATCH)
    scores = fw.predict(built, data[0])[0][:, 0]
    expected = ((scores > (0.0 if loss == "bce_with_logits" else 0.5)) == (label[:600] > 0.5)).mean()
    assert result["accuracy"] == pytest.approx(expected) and result["accuracy"] > 0.8


def my_metric(output, target):
    return output.max(dim=1).values.mean()


class TopProbability:
    def __call__(self, output, target):
        return float(output.softmax(dim=1).max(dim=1).values.mean())


def test_nll_and_metric_callables_are_named_and_row_weighted(digits):
    x, y = digits
    model = nn.Sequential(nn.Linear(64, 10), nn.LogSoftmax(dim=1))
    est = TorchEstimator(model, torch.optim.SGD(model.parameters(), lr=0.5), "nll",
                         ["acc", my_metric, TopProbability(), my_metric], BATCH)
    assert est.metric_names() == ["loss", "acc", "my_metric", "top_probability", "my_metric_1"]
    spec = fw.make_spec(est, [(64,)], sample_of(x, y))
    built = fw.export(spec, spec.initial_state)
    fw.train_sub_epoch(built, *xy(spec, x[:500], y[:500]), batch_size=BATCH, seed=1)
    whole = fw.evaluate(built, *xy(spec, x[500:800], y[500:800]), batch_size=BATCH)
    part_a = fw.evaluate(built, *xy(spec, x[500:555], y[500:555]), batch_size=BATCH)
    part_b = fw.evaluate(built, *xy(spec, x[555:800], y[555:800]), batch_size=BATCH)
    assert set(whole) == {"loss", "acc", "my_metric", "top_probability", "my_metric_1", "rows"}
    for name in spec.metric_names:
        combined = (part_a[name] * 55 + part_b[name] * 245) / 300
        assert whole[name] == pytest.approx(combined, abs=1e-6), name
    assert whole["my_metric"] == whole["my_metric_1"]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.digit = nn.Linear(32, 10)
        self.value = nn.Linear(32, 1)

    def forward(self, x):
        h = self.body(x)
        return self.digit(h), self.value(h)


def test_a_model_with_two_outputs_sums_one_loss_per_output(digits):
    x, y = digits
    model = TwoHeads()
    value = (y / 9.0).astype("float32")
    sample = DataSample({"features": x[:8]}, {"digit": y[:8], "value": value[:8]}, ("features",), ("digit", "value"))
    with pytest.raises(CerebroError, match=r"The metric 'mae' fails on the model's output of shape \(8, 10\) and label "
                                           r"column 'digit'"):
        fw.make_spec(TorchEstimator(model, lambda p: torch.optim.SGD(p, lr=0.1), ["cross_entropy", "mse"], ["mae"]),
                     [(64,)], sample)
    est = TorchEstimator(model, torch.optim.Adam(model.parameters(), lr=1e-2), ["cross_entropy", "mse"],
                         [["accuracy"], ["mae", "mse"]])
    assert est.metric_names() == ["loss", "output_0_loss", "output_1_loss", "output_0_accuracy", "output_1_mae",
                                  "output_1_mse"]
    fw.seed(0)
    spec = fw.make_spec(est, [(64,)], sample)
    assert spec.num_outputs == 2 and spec.output_widths == (10, 1) and spec.output_names == ("output_0", "output_1")
    built = fw.export(spec, spec.initial_state)
    inputs = fw.make_inputs(spec, {"features": x[:300]}, ["features"])
    targets = fw.make_targets(spec, {"digit": y[:300], "value": value[:300]}, ["digit", "value"])
    result = fw.train_sub_epoch(built, inputs, targets, batch_size=BATCH, seed=1)
    assert result["loss"] == pytest.approx(result["output_0_loss"] + result["output_1_loss"], rel=1e-6)
    assert result["output_1_mse"] == pytest.approx(result["output_1_loss"], rel=1e-6)
    assert 0 <= result["output_0_accuracy"] <= 1
    with pytest.raises(ValueError, match="a list of 3 lists; that form needs a model with as many outputs"):
        TorchEstimator(TwoHeads(), lambda p: torch.optim.SGD(p, lr=0.1), ["cross_entropy", "mse"], [[], [], []])
    assert [p.shape for p in fw.predict(built, inputs)] == [(300, 10), (300, 1)]
    wrong = TorchEstimator(TwoHeads(), lambda p: torch.optim.SGD(p, lr=0.1), "cross_entropy")
    with pytest.raises(CerebroError, match="returns 2 output\\(s\\) but the estimator's loss is for 1"):
        fw.make_spec(wrong, [(64,)], sample_of(x, y))
