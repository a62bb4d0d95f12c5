"""A Spark barrier task pins itself to the GPU addresses Spark assigned it (TaskContext.resources()),
before any framework is imported; a task without a GPU on an executor with GPUs is warned, naming
the Spark settings."""

from __future__ import annotations

from pyspark.resource import ResourceInformation

from cerebro.backends.spark import task_gpu_env


def test_a_task_with_spark_assigned_gpus_sees_only_them():
    env, warning = task_gpu_env({"gpu": ResourceInformation("gpu", ["2"])}, executor_gpus=(0, 1, 2, 3))
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["CEREBRO_DEVICE"] == "cuda:2"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and warning is None
    env, _ = task_gpu_env({"gpu": ResourceInformation("gpu", ["1", "3"])}, executor_gpus=(0, 1, 2, 3))
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["CEREBRO_DEVICE"] == "cuda:1,3"


def test_a_task_without_a_gpu_resource_on_a_gpu_executor_is_warned_with_the_settings():
    env, warning = task_gpu_env({}, executor_gpus=(0, 1))
    assert env == {"CEREBRO_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}     # a CPU worker: it sees no GPU
    for setting in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount", "discoveryScript"):
        assert setting in warning
    assert "2 (0, 1)" in warning


def test_a_cpu_executor_gives_a_cpu_worker_without_a_warning():
    cpu = {"CEREBRO_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    assert task_gpu_env({}, executor_gpus=()) == (cpu, None)
    assert task_gpu_env({"fpga": ResourceInformation("fpga", ["0"])}, executor_gpus=()) == (cpu, None)
