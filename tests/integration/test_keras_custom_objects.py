"""The user's classes and functions that a Keras config names only by name are found on the
model, so that workers can rebuild it without registration or ``custom_objects``."""

from __future__ import annotations

import keras

from cerebro.frameworks.keras.config import model_custom_objects, serialize_model

SHIFT = 0.5


def shifted_relu(x):
    return keras.ops.relu(x - SHIFT)


class Scale(keras.layers.Layer):   # neither registered nor passed as a custom object
    def call(self, x):
        return x * 2.0


def test_an_unregistered_layer_class_and_a_custom_activation_are_found():
    model = keras.Sequential([keras.Input((4,)), Scale(), keras.layers.Dense(3, activation=shifted_relu)])
    found = model_custom_objects(model, serialize_model(model, None))
    assert found == {"Scale": Scale, "shifted_relu": shifted_relu}


def test_keras_own_layers_and_functions_are_not_collected():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dropout(0.1)])
    assert model_custom_objects(model, serialize_model(model, None)) == {}
