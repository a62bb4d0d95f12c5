"""The pure core of cerebro: no TensorFlow, Spark, hyperopt or file system here."""
