import os

# Quiet TensorFlow in the test process and keep its numerics comparable with the workers'
# (one intra-op thread each), before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
